"""The identity provider's signing keys (its JWKS), held and refreshed off the event loop."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import msgspec
from jwt import PyJWK, PyJWTError

from service.settings import key_url

logger = logging.getLogger("service.keys")

REFRESH_SECONDS = 300.0
# An unknown kid fetches the keys again, at most once in this many seconds: a
# flood of tokens naming made-up kids must not become a flood of fetches.
REFETCH_SECONDS = 30.0
# While no fetch succeeds: 1 s, 2 s, 4 s, ... up to this.
RETRY_MAX_SECONDS = 30.0
FETCH_TIMEOUT_SECONDS = 5.0
MAX_DOCUMENT_BYTES = 1024 * 1024
DISCOVERY_PATH = "/.well-known/openid-configuration"
KEY_TYPES = frozenset({"RSA", "EC", "OKP"})

JWK = dict[str, Any]


class FetchFailed(Exception):
    """The keys could not be fetched; the message says from where and why, in one line."""


class NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is a failure, not followed: it could lead from https to http."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(NoRedirects)
_decoder = msgspec.json.Decoder(dict[str, Any])


def fetch_json(url: str) -> dict[str, Any]:
    """The JSON object at `url`, read in this thread (never the event loop's)."""
    # S310: every URL here passed settings.key_url, https or http to this machine.
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with _opener.open(request, timeout=FETCH_TIMEOUT_SECONDS) as response:
            body = response.read(MAX_DOCUMENT_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise FetchFailed(f"{url} answered {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise FetchFailed(f"{url} could not be reached: {reason}") from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise FetchFailed(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError:
        raise FetchFailed(f"{url} did not answer a JSON object") from None


def discover(issuer: str) -> tuple[str, str | None]:
    """The issuer's jwks_uri and token_endpoint, from its discovery document."""
    url = issuer.rstrip("/") + DISCOVERY_PATH
    document = fetch_json(url)
    # OpenID Connect Discovery §4.3: the document must name the very issuer asked.
    if document.get("issuer") != issuer:
        raise FetchFailed(f"{url} names the issuer {document.get('issuer')!r}, not {issuer!r}")
    jwks_uri, token_url = document.get("jwks_uri"), document.get("token_endpoint")
    if not isinstance(jwks_uri, str):
        raise FetchFailed(f"{url} has no jwks_uri")
    try:
        key_url(jwks_uri)
    except ValueError as exc:
        raise FetchFailed(f"{url} names the jwks_uri {jwks_uri!r}: {exc}") from None
    return jwks_uri, token_url if isinstance(token_url, str) else None


def signing_keys(url: str) -> dict[str, JWK]:
    """The keys at `url` that can verify a signature, by kid ("" for a key without one)."""
    document = fetch_json(url)
    found: dict[str, JWK] = {}
    for key in document.get("keys") or ():
        if not isinstance(key, dict) or key.get("use", "sig") != "sig":
            continue
        if key.get("kty") not in KEY_TYPES:  # "oct" above all: a shared secret is no key here
            continue
        try:
            PyJWK(key)  # refuses a key it could not use, as a malformed one
        except PyJWTError:
            continue
        kid = key.get("kid", "")
        found[kid if isinstance(kid, str) else str(kid)] = key
    if not found:
        raise FetchFailed(f"{url} holds no RSA, EC or OKP signing key")
    return found


class SigningKeys:
    """The issuer's keys as last fetched: refreshed every REFRESH_SECONDS by a task of
    the lifespan, and sooner for an unknown kid; a failed fetch keeps the keys held."""

    def __init__(
        self, issuer: str, jwks_url: str | None, *, on_removed: Callable[[], None]
    ) -> None:
        self.issuer = issuer
        self.jwks_url = jwks_url
        self.discovered = jwks_url is None
        self.token_url: str | None = None
        self.keys: dict[str, JWK] = {}
        self.fetched_at: float | None = None  # time.monotonic() of the last success
        self.attempted_at = -math.inf
        self.failure: str | None = None  # the last fetch's fault, while fetches fail
        self.on_removed = on_removed
        self._fetch: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        return bool(self.keys)

    def start(self) -> None:
        self._task = asyncio.create_task(self.keep_fresh())

    async def stop(self) -> None:
        for task in (self._task, self._fetch):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def keep_fresh(self) -> None:
        retry = 1.0
        while True:
            await self.refresh()
            if self.failure is None:
                retry = 1.0
                await asyncio.sleep(REFRESH_SECONDS)
            else:
                await asyncio.sleep(retry)
                retry = min(retry * 2, RETRY_MAX_SECONDS)

    async def find(self, kid: str) -> JWK | None:
        """The key named `kid`, fetching the keys again first when it is unknown and the
        last fetch is REFETCH_SECONDS old: the issuer may have rotated its keys."""
        key = self.keys.get(kid)
        if key is None and time.monotonic() - self.attempted_at >= REFETCH_SECONDS:
            await self.refresh()
            key = self.keys.get(kid)
        return key

    async def refresh(self) -> None:
        """Fetch the keys once; callers arriving meanwhile wait for the same fetch."""
        if self._fetch is None or self._fetch.done():
            self.attempted_at = time.monotonic()
            self._fetch = asyncio.create_task(self.fetch())
        await asyncio.shield(self._fetch)

    async def fetch(self) -> None:
        try:
            jwks_url, token_url = self.jwks_url, self.token_url
            if self.discovered:
                jwks_url, token_url = await asyncio.to_thread(discover, self.issuer)
            assert jwks_url is not None
            keys = await asyncio.to_thread(signing_keys, jwks_url)
        except FetchFailed as exc:
            if self.failure is None:  # one line when fetches start failing, not one a try
                held = f"keeping the {len(self.keys)} held" if self.keys else "none held yet"
                logger.warning("signing keys not fetched (%s): %s", held, exc)
            self.failure = str(exc)
            return
        if self.failure is not None or self.fetched_at is None:
            logger.info("signing keys fetched: %d from %s", len(keys), jwks_url)
        removed = self.keys.keys() - keys.keys()
        self.jwks_url, self.token_url, self.keys = jwks_url, token_url, keys
        self.fetched_at, self.failure = time.monotonic(), None
        if removed:  # tokens checked with a withdrawn key are checked again
            self.on_removed()
