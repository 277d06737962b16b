"""Settings read from the environment once, validated at start."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import msgspec

from service.scopes import SCOPES, ScopeName

T = TypeVar("T")

SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
# libpq's, which asyncpg follows: with several hosts, the first that qualifies is used.
SESSION_ATTRS = frozenset(
    {"any", "primary", "standby", "prefer-standby", "read-write", "read-only"}
)


class SettingsError(Exception):
    """An environment variable has a value the service cannot start with."""


# A client's name goes on log lines and, later, on each change it makes: a word, no spaces.
CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}")
CLIENT_FIELDS = ("name", "scopes", "token_sha256")
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


class Client(msgspec.Struct, frozen=True, kw_only=True):
    """A named caller: the scopes it holds, and the SHA-256 of its token in lowercase hex."""

    name: str
    scopes: frozenset[ScopeName]
    token_sha256: str


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str | None = None
    database_read_urls: tuple[str, ...] = ()
    db_read_max_lag: float = 1.0
    port: int = 8000
    web_concurrency: int = 1
    db_pool_min: int = 1
    db_pool_max: int = 10
    db_command_timeout: float = 10.0
    max_body_bytes: int = 64 * 1024
    max_bulk_bytes: int = 16 * 1024 * 1024
    log_level: str = "INFO"
    log_format: str = "text"
    access_log: bool = False
    slow_request_ms: int = 500
    api_tokens: tuple[str, ...] = ()
    api_clients: tuple[Client, ...] = ()
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_jwks_url: str | None = None
    db_statement_cache_size: int = 100
    db_pool_timeout: float = 2.0
    db_start_timeout: float = 30.0
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    graceful_timeout: int = 20
    cors_origins: tuple[str, ...] = ()
    require_if_match: bool = False
    idempotency_ttl: int = 86400
    changes_retention: int = 7 * 86400
    public_url: str | None = None
    feed_poll_seconds: float = 1.0
    feed_max_consumers: int = 1000
    feed_stall_seconds: float = 30.0
    nats_url: str = "nats://127.0.0.1:4222"
    nats_creds: str | None = None
    nats_stream: str = "USERS"
    nats_replicas: int = 1
    relay_source: str = "/users"
    relay_groups: bool = False
    relay_metrics_port: int = 9090

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        defaults = {field.name: field.default for field in msgspec.structs.fields(cls)}

        def read(name: str, parse: Callable[[str], T], *, secret: bool = False) -> T:
            """The variable NAME, parsed, or the default of the field `name`."""
            raw = environ.get(name, "").strip()
            if not raw:
                default: T = defaults[name.lower()]
                return default
            try:
                return parse(raw)
            except ValueError as exc:
                # A URL may hold a password, and tokens are secrets: never echo them.
                shown = "(value not shown)" if secret else repr(raw)
                raise SettingsError(f"{name}={shown}: {exc}") from None

        settings = cls(
            database_url=read("DATABASE_URL", parse_database_url, secret=True),
            database_read_urls=read("DATABASE_READ_URLS", parse_database_urls, secret=True),
            db_read_max_lag=read("DB_READ_MAX_LAG", seconds),
            port=read("PORT", integer(1, 65535)),
            web_concurrency=read("WEB_CONCURRENCY", integer(1, 64)),
            db_pool_min=read("DB_POOL_MIN", integer(0, 1000)),
            db_pool_max=read("DB_POOL_MAX", integer(1, 1000)),
            db_command_timeout=read("DB_COMMAND_TIMEOUT", seconds),
            max_body_bytes=read("MAX_BODY_BYTES", integer(1, 2**31)),
            max_bulk_bytes=read("MAX_BULK_BYTES", integer(1, 2**31)),
            log_level=read("LOG_LEVEL", log_level),
            log_format=read("LOG_FORMAT", one_of("json", "text")),
            access_log=read("ACCESS_LOG", boolean),
            slow_request_ms=read("SLOW_REQUEST_MS", integer(0, 3_600_000)),
            api_tokens=read("API_TOKENS", tokens, secret=True),
            api_clients=clients(environ.get("API_CLIENTS", "")),
            jwt_issuer=read("JWT_ISSUER", str),
            jwt_audience=read("JWT_AUDIENCE", str),
            jwt_jwks_url=read("JWT_JWKS_URL", key_url),
            db_statement_cache_size=read("DB_STATEMENT_CACHE_SIZE", integer(0, 10_000)),
            db_pool_timeout=read("DB_POOL_TIMEOUT", seconds),
            db_start_timeout=read("DB_START_TIMEOUT", seconds),
            head_timeout=read("HEAD_TIMEOUT", seconds),
            body_timeout=read("BODY_TIMEOUT", seconds),
            graceful_timeout=read("GRACEFUL_TIMEOUT", integer(1, 3600)),
            cors_origins=read("CORS_ORIGINS", origins),
            require_if_match=read("REQUIRE_IF_MATCH", boolean),
            idempotency_ttl=read("IDEMPOTENCY_TTL", integer(1, 366 * 86400)),
            changes_retention=read("CHANGES_RETENTION", integer(1, 366 * 86400)),
            public_url=read("PUBLIC_URL", public_url),
            feed_poll_seconds=read("FEED_POLL_SECONDS", seconds),
            feed_max_consumers=read("FEED_MAX_CONSUMERS", integer(1, 100_000)),
            feed_stall_seconds=read("FEED_STALL_SECONDS", seconds),
            nats_url=read("NATS_URL", nats_urls, secret=True),
            nats_creds=read("NATS_CREDS", readable_file),
            nats_stream=read("NATS_STREAM", stream_name),
            nats_replicas=read("NATS_REPLICAS", integer(1, 5)),
            relay_source=read("RELAY_SOURCE", uri_reference),
            relay_groups=read("RELAY_GROUPS", boolean),
            relay_metrics_port=read("RELAY_METRICS_PORT", integer(0, 65535)),
        )
        if settings.db_pool_min > settings.db_pool_max:
            raise SettingsError(
                f"DB_POOL_MIN={settings.db_pool_min} is greater than "
                f"DB_POOL_MAX={settings.db_pool_max}"
            )
        check_clients_against_tokens(settings)
        check_access_tokens(settings)
        return settings

    def callers(self) -> tuple[Client, ...]:
        """Every client that may call: API_CLIENTS, then each of API_TOKENS as a client
        named token-1, token-2, ... (by its place in the list) holding every scope."""
        return self.api_clients + tuple(
            Client(
                name=f"token-{place}",
                scopes=frozenset(SCOPES),
                token_sha256=hashlib.sha256(token.encode()).hexdigest(),
            )
            for place, token in enumerate(self.api_tokens, start=1)
        )


def integer(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not (raw.isascii() and raw.isdigit()):
            raise ValueError("expected a whole number")
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return value

    return parse


def seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not 0 < value <= 3600:
        raise ValueError("expected a number of seconds above 0 and at most 3600")
    return value


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return raw.lower()

    return parse


def boolean(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1 or 0")


def tokens(raw: str) -> tuple[str, ...]:
    found = tuple(token.strip() for token in raw.split(",") if token.strip())
    if not found:
        raise ValueError("expected a comma-separated list of tokens")
    if any(len(token) < 16 for token in found):
        raise ValueError("every token must be at least 16 characters")
    return found


def clients(raw: str) -> tuple[Client, ...]:
    """API_CLIENTS: a JSON array of {"name", "scopes", "token_sha256"} objects.

    Each fault is one line naming the entry by its place and name: the value holds only
    digests, but a whole array would not fit on the line.
    """
    if not raw.strip():
        return ()
    try:
        entries = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise SettingsError(f"API_CLIENTS is not JSON: {exc}") from None
    if not isinstance(entries, list) or not entries:
        raise SettingsError(
            'API_CLIENTS: expected a JSON array of {"name", "scopes", "token_sha256"} objects, '
            "at least one"
        )
    found: list[Client] = []
    for place, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        label = f"API_CLIENTS[{place}]" + (f" ({name})" if isinstance(name, str) else "")
        try:
            client = client_of(entry)
            for earlier, other in enumerate(found):
                if other.name == client.name:
                    raise ValueError(f"the name {client.name} is also API_CLIENTS[{earlier}]'s")
                if other.token_sha256 == client.token_sha256:
                    raise ValueError(f"token_sha256 is also API_CLIENTS[{earlier}]'s")
        except ValueError as exc:
            raise SettingsError(f"{label}: {exc}") from None
        found.append(client)
    return tuple(found)


def client_of(entry: object) -> Client:
    """One entry of API_CLIENTS, or a ValueError saying what is wrong with it."""
    if not isinstance(entry, dict):
        raise ValueError('expected an object with "name", "scopes" and "token_sha256"')
    unknown = sorted(set(entry) - set(CLIENT_FIELDS))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}; the fields are {', '.join(CLIENT_FIELDS)}")
    missing = [field for field in CLIENT_FIELDS if field not in entry]
    if missing:
        raise ValueError(f"{missing[0]!r} is missing")
    name, scopes, digest = (entry[field] for field in CLIENT_FIELDS)
    if not (isinstance(name, str) and CLIENT_NAME.fullmatch(name)):
        raise ValueError(
            "name must be 1 to 64 letters, digits and . _ @ : -, starting with a letter or digit"
        )
    if not (isinstance(scopes, list) and scopes and all(isinstance(s, str) for s in scopes)):
        raise ValueError("scopes must be a non-empty array of scope names")
    for scope in scopes:
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}; the scopes are {', '.join(SCOPES)}")
    if not (isinstance(digest, str) and SHA256_HEX.fullmatch(digest)):
        raise ValueError("token_sha256 must be 64 hex digits, the SHA-256 of the token")
    return Client(name=name, scopes=frozenset(scopes), token_sha256=digest.lower())


def check_clients_against_tokens(settings: Settings) -> None:
    """No API_CLIENTS entry may take the name or the token of one of API_TOKENS."""
    tokens = settings.callers()[len(settings.api_clients) :]
    for place, client in enumerate(settings.api_clients):
        for token in tokens:
            if client.name == token.name:
                raise SettingsError(
                    f"API_CLIENTS[{place}] ({client.name}): the name {client.name} is taken by "
                    f"API_TOKENS, whose tokens are named token-1, token-2, ..."
                )
            if client.token_sha256 == token.token_sha256:
                raise SettingsError(
                    f"API_CLIENTS[{place}] ({client.name}): token_sha256 is that of a token in "
                    "API_TOKENS"
                )


def key_url(raw: str) -> str:
    """A URL keys are fetched from: https, or http only to this machine, as a
    key served in the clear could be swapped on the way."""
    parts = urlsplit(raw)
    local = parts.scheme == "http" and parts.hostname in ("localhost", "127.0.0.1", "::1")
    if not (parts.scheme == "https" or local) or not parts.hostname or "@" in parts.netloc:
        raise ValueError(
            "expected an https:// URL without credentials (http:// only to localhost or "
            "127.0.0.1), like https://idp.example.com/oauth2/v1/keys"
        )
    return raw


def check_access_tokens(settings: Settings) -> None:
    """JWT_ISSUER and JWT_AUDIENCE come together; without JWT_JWKS_URL, the issuer is a
    URL its discovery document is fetched from."""
    if (settings.jwt_issuer is None) != (settings.jwt_audience is None):
        given, missing = (
            ("JWT_ISSUER", "JWT_AUDIENCE")
            if settings.jwt_audience is None
            else ("JWT_AUDIENCE", "JWT_ISSUER")
        )
        raise SettingsError(
            f"{given} is set but {missing} is not: set both to accept access tokens, or neither"
        )
    if settings.jwt_issuer is None:
        if settings.jwt_jwks_url is not None:
            raise SettingsError("JWT_JWKS_URL is set but JWT_ISSUER and JWT_AUDIENCE are not")
        return
    if settings.jwt_jwks_url is None:
        try:
            key_url(settings.jwt_issuer)
        except ValueError as exc:
            raise SettingsError(
                f"JWT_ISSUER={settings.jwt_issuer!r}: without JWT_JWKS_URL, keys are found "
                f"through the issuer's discovery document: {exc}"
            ) from None


def origins(raw: str) -> tuple[str, ...]:
    """Comma-separated origins as a browser sends them (https://host[:port]), or "*"."""
    found = tuple(origin.strip() for origin in raw.split(",") if origin.strip())
    for origin in found:
        parts = urlsplit(origin)
        if origin != "*" and not (
            parts.scheme in ("http", "https")
            and parts.netloc
            and origin == f"{parts.scheme}://{parts.netloc}"
        ):
            raise ValueError(f"expected origins like https://app.example.com, or *; got {origin!r}")
    return found


def public_url(raw: str) -> str:
    """The service's URL as its callers reach it, https://users.example.com or one with a
    path prefix; kept without a final "/"."""
    parts = urlsplit(raw)
    try:
        valid_port = parts.port is None or parts.port > 0
    except ValueError:  # not a number from 0 to 65535
        valid_port = False
    if (
        not valid_port
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or "@" in parts.netloc
        or "?" in raw
        or "#" in raw
        or any(character.isspace() for character in raw)
    ):
        raise ValueError(
            "expected an absolute http:// or https:// URL without credentials, query or "
            "fragment, like https://users.example.com"
        )
    return raw.rstrip("/")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(raw: str) -> str:
    if raw.upper() not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return raw.upper()


def parse_database_url(raw: str) -> str:
    # asyncpg accepts both schemes and reads sslmode itself; this only turns a
    # typo into a clear start-up error instead of a failure at first connect.
    parts = urlsplit(raw)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError("expected a postgres:// or postgresql:// URL")
    query = parse_qs(parts.query)
    for mode in query.get("sslmode", []):
        if mode not in SSL_MODES:
            raise ValueError(f"sslmode must be one of {', '.join(sorted(SSL_MODES))}")
    for attrs in query.get("target_session_attrs", []):
        if attrs not in SESSION_ATTRS:
            raise ValueError(
                f"target_session_attrs must be one of {', '.join(sorted(SESSION_ATTRS))}"
            )
    return raw


def parse_database_urls(raw: str) -> tuple[str, ...]:
    """Comma-separated URLs; a comma inside a URL's host list stays in that URL."""
    # A new URL starts where a scheme does: "…:5433,postgresql://…".
    found = [url.strip().rstrip(",").strip() for url in re.split(r"(?=\bpostgres(?:ql)?://)", raw)]
    urls = tuple(url for url in found if url)
    for url in urls:
        if url.count("://") != 1:
            raise ValueError("expected a comma-separated list of postgres:// or postgresql:// URLs")
    return tuple(parse_database_url(url) for url in urls)


def nats_urls(raw: str) -> str:
    """NATS_URL: one or more comma-separated nats://, tls://, ws:// or wss:// URLs,
    a user and password or a token in them as the server wants."""
    for url in raw.split(","):
        parts = urlsplit(url.strip())
        if parts.scheme not in ("nats", "tls", "ws", "wss") or not parts.hostname:
            raise ValueError("expected nats://host:port URLs (tls://, ws:// and wss:// too)")
    return raw


def readable_file(raw: str) -> str:
    """A path the process can read now, such as NATS_CREDS's .creds file."""
    if not os.access(raw, os.R_OK):
        raise ValueError("expected the path of a readable file")
    return raw


# JetStream's names: no whitespace, and none of . * > / \ (nor control characters).
STREAM_NAME = re.compile(r"[^\s.*>/\\\x00-\x1f]{1,255}")


def stream_name(raw: str) -> str:
    if not STREAM_NAME.fullmatch(raw):
        raise ValueError("expected a JetStream stream name: no spaces, nor . * > / \\")
    return raw


def uri_reference(raw: str) -> str:
    """A CloudEvents source: a URI reference without spaces, /users or https://…/users."""
    if any(character.isspace() or not character.isprintable() for character in raw):
        raise ValueError("expected a URI reference such as /users, without spaces")
    return raw
