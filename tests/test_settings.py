"""Settings from the environment: defaults, accepted values, clear errors."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from service.scopes import SCOPES
from service.settings import Client, Settings, SettingsError


def test_defaults_with_an_empty_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.database_url is None
    assert settings.port == 8000
    assert settings.web_concurrency == 1
    assert settings.db_command_timeout == 10.0
    assert settings.max_body_bytes == 64 * 1024
    assert settings.max_bulk_bytes == 16 * 1024 * 1024


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgres://u:p@db.internal:5432/app?sslmode=require",
            "PORT": "5000",
            "WEB_CONCURRENCY": "4",
            "DB_POOL_MIN": "2",
            "DB_POOL_MAX": "20",
            "DB_COMMAND_TIMEOUT": "2.5",
            "MAX_BODY_BYTES": "1024",
            "MAX_BULK_BYTES": "2048",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "JSON",
            "ACCESS_LOG": "1",
            "SLOW_REQUEST_MS": "250",
            "API_TOKENS": "first-token-0123456789, second-token-0123456789",
            "DB_STATEMENT_CACHE_SIZE": "0",
            "DB_POOL_TIMEOUT": "0.5",
            "DB_START_TIMEOUT": "5",
            "HEAD_TIMEOUT": "3",
            "BODY_TIMEOUT": "4",
            "GRACEFUL_TIMEOUT": "2",
            "REQUIRE_IF_MATCH": "1",
            "IDEMPOTENCY_TTL": "3600",
            "DATABASE_READ_URLS": "postgresql://u:p@r1.internal/app, postgres://u:p@r2.internal/app",
            "DB_READ_MAX_LAG": "0.5",
            "FEED_POLL_SECONDS": "0.25",
            "FEED_MAX_CONSUMERS": "50",
            "FEED_STALL_SECONDS": "10",
        }
    )
    assert settings == Settings(
        database_url="postgres://u:p@db.internal:5432/app?sslmode=require",
        port=5000,
        web_concurrency=4,
        db_pool_min=2,
        db_pool_max=20,
        db_command_timeout=2.5,
        max_body_bytes=1024,
        max_bulk_bytes=2048,
        log_level="DEBUG",
        log_format="json",
        access_log=True,
        slow_request_ms=250,
        api_tokens=("first-token-0123456789", "second-token-0123456789"),
        db_statement_cache_size=0,
        db_pool_timeout=0.5,
        db_start_timeout=5.0,
        require_if_match=True,
        idempotency_ttl=3600,
        head_timeout=3.0,
        body_timeout=4.0,
        graceful_timeout=2,
        database_read_urls=("postgresql://u:p@r1.internal/app", "postgres://u:p@r2.internal/app"),
        db_read_max_lag=0.5,
        feed_poll_seconds=0.25,
        feed_max_consumers=50,
        feed_stall_seconds=10.0,
    )


@pytest.mark.parametrize(
    "url", ["postgresql://localhost/app", "postgres://u@h/db", "postgresql:///db?host=/tmp"]
)
def test_both_url_schemes_are_accepted(url: str) -> None:
    assert Settings.from_env({"DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://localhost/app"),
        ("DATABASE_URL", "localhost:5432"),
        ("DATABASE_URL", "postgres://h/db?sslmode=sometimes"),
        ("DATABASE_URL", "postgres://h1,h2/db?target_session_attrs=writable"),
        ("DATABASE_READ_URLS", "mysql://r1/app"),
        ("DATABASE_READ_URLS", "postgresql://r1/app,mysql://r2/app"),
        ("DATABASE_READ_URLS", "postgresql://r1/app?sslmode=sometimes"),
        ("DB_READ_MAX_LAG", "0"),
        ("DB_READ_MAX_LAG", "soon"),
        ("FEED_POLL_SECONDS", "0"),
        ("FEED_MAX_CONSUMERS", "0"),
        ("FEED_MAX_CONSUMERS", "lots"),
        ("FEED_STALL_SECONDS", "-1"),
        ("PORT", "eighty"),
        ("PORT", "0"),
        ("PORT", "70000"),
        ("PORT", "-1"),
        ("WEB_CONCURRENCY", "0"),
        ("WEB_CONCURRENCY", "1.5"),
        ("DB_POOL_MIN", "x"),
        ("DB_POOL_MAX", "0"),
        ("DB_COMMAND_TIMEOUT", "soon"),
        ("DB_COMMAND_TIMEOUT", "0"),
        ("DB_COMMAND_TIMEOUT", "-3"),
        ("DB_COMMAND_TIMEOUT", "nan"),
        ("MAX_BODY_BYTES", "64k"),
        ("MAX_BULK_BYTES", "0"),
        ("LOG_LEVEL", "loud"),
        ("LOG_FORMAT", "xml"),
        ("ACCESS_LOG", "maybe"),
        ("REQUIRE_IF_MATCH", "maybe"),
        ("IDEMPOTENCY_TTL", "0"),
        ("SLOW_REQUEST_MS", "fast"),
        ("API_TOKENS", ",,"),
        ("API_TOKENS", "short"),
        ("DB_STATEMENT_CACHE_SIZE", "-1"),
        ("DB_POOL_TIMEOUT", "0"),
        ("CORS_ORIGINS", "app.example.com"),
        ("CORS_ORIGINS", "https://app.example.com/"),
        ("CORS_ORIGINS", "https://a.example.com,ftp://b.example.com"),
        ("NATS_URL", "http://nats.internal:4222"),
        ("NATS_URL", "nats://a:4222,127.0.0.1:4222"),
        ("NATS_CREDS", "/nowhere/user.creds"),
        ("NATS_STREAM", "users.all"),
        ("NATS_STREAM", "USERS >"),
        ("NATS_REPLICAS", "0"),
        ("NATS_REPLICAS", "7"),
        ("RELAY_SOURCE", "/users and more"),
        ("RELAY_METRICS_PORT", "70000"),
        ("RELAY_GROUPS", "groups"),
    ],
)
def test_a_bad_value_is_an_error_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({name: value})
    assert str(error.value).startswith(f"{name}=")


def test_pool_min_above_max_is_an_error() -> None:
    with pytest.raises(SettingsError, match="DB_POOL_MIN"):
        Settings.from_env({"DB_POOL_MIN": "5", "DB_POOL_MAX": "2"})


def test_blank_values_mean_the_default() -> None:
    assert Settings.from_env({"PORT": "", "LOG_LEVEL": "  "}) == Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://app:S3cretPw@db.internal/app"),
        ("DATABASE_READ_URLS", "postgresql://app:S3cretPw@r1/app,mysql://app:S3cretPw@r2/app"),
        ("API_TOKENS", "tok-S3cret, short"),
        ("NATS_URL", "natz://relay:S3cretPw@nats.internal:4222"),
    ],
)
def test_an_error_never_echoes_a_secret(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({name: value})
    assert str(error.value).startswith(f"{name}=")
    assert "S3cret" not in str(error.value)


@pytest.mark.parametrize("level", ["NOTSET", "WARN", "FATAL"])
def test_only_the_five_documented_log_levels_are_accepted(level: str) -> None:
    with pytest.raises(SettingsError, match="LOG_LEVEL"):
        Settings.from_env({"LOG_LEVEL": level})


def test_cors_origins_are_a_list_of_origins() -> None:
    settings = Settings.from_env({"CORS_ORIGINS": "https://a.example.com, http://b.test:8080"})
    assert settings.cors_origins == ("https://a.example.com", "http://b.test:8080")
    assert Settings.from_env({"CORS_ORIGINS": "*"}).cors_origins == ("*",)
    assert Settings.from_env({}).cors_origins == ()


def test_several_hosts_in_a_url_stay_one_url() -> None:
    primary = "postgresql://u@h1:5432,h2:5433/app?target_session_attrs=read-write"
    replicas = "postgresql://u@r1:5432,r2:5432/app?target_session_attrs=standby,postgres://u@r3/app"
    settings = Settings.from_env({"DATABASE_URL": primary, "DATABASE_READ_URLS": replicas})
    assert settings.database_url == primary
    assert settings.database_read_urls == (
        "postgresql://u@r1:5432,r2:5432/app?target_session_attrs=standby",
        "postgres://u@r3/app",
    )
    assert Settings.from_env({}).database_read_urls == ()
    assert Settings.from_env({}).db_read_max_lag == 1.0


DIGEST = "ab" * 32
READER = {"name": "reporting", "scopes": ["users:read"], "token_sha256": DIGEST}


def test_api_clients_are_read_as_named_clients_with_scopes() -> None:
    raw = msgspec.json.encode(
        [READER, {"name": "okta", "scopes": ["scim", "scim"], "token_sha256": "CD" * 32}]
    ).decode()
    settings = Settings.from_env({"API_CLIENTS": raw})
    assert settings.api_clients == (
        Client(name="reporting", scopes=frozenset({"users:read"}), token_sha256=DIGEST),
        Client(name="okta", scopes=frozenset({"scim"}), token_sha256="cd" * 32),
    )


def test_each_of_api_tokens_is_a_client_named_by_its_place_with_every_scope() -> None:
    settings = Settings.from_env(
        {
            "API_TOKENS": "first-token-0123456789, second-token-0123456789",
            "API_CLIENTS": msgspec.json.encode([READER]).decode(),
        }
    )
    reporting, first, second = settings.callers()
    assert reporting.name == "reporting"
    assert (first.name, second.name) == ("token-1", "token-2")
    assert first.scopes == second.scopes == frozenset(SCOPES)
    assert first.token_sha256 == hashlib.sha256(b"first-token-0123456789").hexdigest()


@pytest.mark.parametrize(
    ("value", "fault"),
    [
        ("[", "API_CLIENTS is not JSON"),
        ("[]", "API_CLIENTS: expected a JSON array"),
        ('{"name": "x"}', "API_CLIENTS: expected a JSON array"),
        ('["reporting"]', "API_CLIENTS[0]: expected an object"),
        (
            [READER, {**READER, "name": "audit", "role": "x"}],
            "API_CLIENTS[1] (audit): unknown field 'role'",
        ),
        (
            [{"name": "a", "scopes": ["users:read"]}],
            "API_CLIENTS[0] (a): 'token_sha256' is missing",
        ),
        ([{**READER, "name": "has space"}], "API_CLIENTS[0] (has space): name must be"),
        ([{**READER, "name": ""}], "API_CLIENTS[0] (): name must be"),
        ([{**READER, "name": 7}], "API_CLIENTS[0]: name must be"),
        ([{**READER, "scopes": []}], "API_CLIENTS[0] (reporting): scopes must be a non-empty"),
        ([{**READER, "scopes": "users:read"}], "API_CLIENTS[0] (reporting): scopes must be"),
        (
            [{**READER, "scopes": ["users:write"]}],
            "API_CLIENTS[0] (reporting): unknown scope 'users:write'",
        ),
        (
            [{**READER, "token_sha256": "ab" * 31}],
            "API_CLIENTS[0] (reporting): token_sha256 must be 64 hex",
        ),
        (
            [{**READER, "token_sha256": "zz" * 32}],
            "API_CLIENTS[0] (reporting): token_sha256 must be 64 hex",
        ),
        (
            [READER, {**READER, "token_sha256": "cd" * 32}],
            "API_CLIENTS[1] (reporting): the name reporting is also API_CLIENTS[0]'s",
        ),
        (
            [READER, {**READER, "name": "audit", "token_sha256": "AB" * 32}],
            "API_CLIENTS[1] (audit): token_sha256 is also API_CLIENTS[0]'s",
        ),
    ],
)
def test_a_malformed_client_stops_the_start_with_one_line_naming_it(
    value: object, fault: str
) -> None:
    raw = value if isinstance(value, str) else msgspec.json.encode(value).decode()
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"API_CLIENTS": raw})
    assert str(error.value).startswith(fault)
    assert "\n" not in str(error.value)


def test_a_client_may_not_take_the_name_or_the_token_of_one_of_api_tokens() -> None:
    first = "first-token-0123456789"
    named = [{**READER, "name": "token-1"}]
    with pytest.raises(SettingsError, match=r"API_CLIENTS\[0\] \(token-1\): the name token-1"):
        Settings.from_env({"API_TOKENS": first, "API_CLIENTS": msgspec.json.encode(named).decode()})
    same = [{**READER, "token_sha256": hashlib.sha256(first.encode()).hexdigest()}]
    with pytest.raises(SettingsError, match="token_sha256 is that of a token in API_TOKENS"):
        Settings.from_env({"API_TOKENS": first, "API_CLIENTS": msgspec.json.encode(same).decode()})


def test_jwt_issuer_and_audience_turn_on_access_tokens() -> None:
    settings = Settings.from_env(
        {"JWT_ISSUER": "https://idp.example.com/oauth2/default", "JWT_AUDIENCE": "api://users"}
    )
    assert settings.jwt_issuer == "https://idp.example.com/oauth2/default"
    assert settings.jwt_audience == "api://users"
    assert settings.jwt_jwks_url is None
    assert Settings.from_env({}).jwt_issuer is None


@pytest.mark.parametrize(
    ("environ", "fault"),
    [
        ({"JWT_ISSUER": "https://idp.example.com"}, "JWT_ISSUER is set but JWT_AUDIENCE is not"),
        ({"JWT_AUDIENCE": "users"}, "JWT_AUDIENCE is set but JWT_ISSUER is not"),
        (
            {"JWT_JWKS_URL": "https://idp.example.com/keys"},
            "JWT_JWKS_URL is set but JWT_ISSUER and JWT_AUDIENCE are not",
        ),
        (
            {"JWT_ISSUER": "http://idp.example.com", "JWT_AUDIENCE": "users"},
            "JWT_ISSUER='http://idp.example.com': without JWT_JWKS_URL, keys are found through "
            "the issuer's discovery document: expected an https:// URL",
        ),
        (
            {"JWT_ISSUER": "idp", "JWT_AUDIENCE": "users"},
            "JWT_ISSUER='idp': without JWT_JWKS_URL",
        ),
        (
            {
                "JWT_ISSUER": "https://idp.example.com",
                "JWT_AUDIENCE": "users",
                "JWT_JWKS_URL": "http://idp.example.com/keys",
            },
            "JWT_JWKS_URL='http://idp.example.com/keys': expected an https:// URL",
        ),
    ],
)
def test_a_misconfigured_issuer_stops_the_start_with_one_line(
    environ: dict[str, str], fault: str
) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env(environ)
    assert str(error.value).startswith(fault), str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]"])
def test_keys_may_come_over_http_from_this_machine_only(host: str) -> None:
    settings = Settings.from_env({"JWT_ISSUER": f"http://{host}:8080", "JWT_AUDIENCE": "users"})
    assert settings.jwt_issuer == f"http://{host}:8080"


def test_with_jwks_url_the_issuer_need_not_be_a_url() -> None:
    settings = Settings.from_env(
        {
            "JWT_ISSUER": "urn:example:idp",
            "JWT_AUDIENCE": "users",
            "JWT_JWKS_URL": "https://idp.example.com/keys",
        }
    )
    assert settings.jwt_jwks_url == "https://idp.example.com/keys"


def test_the_relay_settings_are_read() -> None:
    settings = Settings.from_env(
        {
            "NATS_URL": "nats://relay:pw@n1:4222,tls://relay:pw@n2:4222",
            "NATS_STREAM": "USERS_EU",
            "NATS_REPLICAS": "3",
            "RELAY_SOURCE": "https://users.example.com/users",
            "RELAY_METRICS_PORT": "0",
            "RELAY_GROUPS": "1",
        }
    )
    assert settings.nats_url == "nats://relay:pw@n1:4222,tls://relay:pw@n2:4222"
    assert (settings.nats_stream, settings.nats_replicas) == ("USERS_EU", 3)
    assert settings.relay_source == "https://users.example.com/users"
    assert settings.relay_metrics_port == 0
    assert settings.relay_groups
    assert not Settings.from_env({}).relay_groups
