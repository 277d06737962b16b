"""Callers: the client a request's bearer token names, refused without the route's scope."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from urllib.parse import parse_qsl

from starlette.types import Scope

from service.access_tokens import AccessTokens, KeysMissing, TokenRefused
from service.logs import request_id
from service.problems import RETRY_AFTER_SECONDS, ProblemError
from service.queries import NOBODY, Actor
from service.routes import Route
from service.settings import Client

REALM = 'Bearer realm="users"'
NO_QUERY_TOKENS = (
    "A token in the query string (access_token) is not accepted: URLs end up in logs. "
    "Send it as Authorization: Bearer <token>"
)


def caller_of(scope: Scope) -> Client | None:
    """The client that made this request, once its token was checked; None on an open route
    or when the service has no clients."""
    caller: Client | None = scope.get("caller")
    return caller


def actor_of(scope: Scope) -> Actor:
    """Who makes this request's writes: its client's name and its request ID, as the
    log names them; nobody (both None) when the service runs open."""
    caller: Client | None = scope.get("caller")
    return NOBODY if caller is None else Actor(caller.name, request_id.get())


class Callers:
    """The service's clients, told apart by their bearer tokens: static clients by the
    token's digest, then the identity provider's by its access token (a JWT)."""

    def __init__(self, clients: Iterable[Client], access_tokens: AccessTokens | None) -> None:
        # Found by the token's SHA-256 in a dict, not compared in constant time:
        # the lookup's timing can at most hint at how a stored digest begins,
        # and a digest is of no use to an attacker, who would still need a
        # token hashing to it (the environment holds the very same digests).
        self.by_digest = {bytes.fromhex(client.token_sha256): client for client in clients}
        self.access_tokens = access_tokens

    async def check(self, scope: Scope) -> None:
        """Let the request through if its route is open or its caller holds the route's
        scope; the caller, once known, is put in the scope. Refuse it otherwise."""
        route = scope["route"]
        needed = route.scopes if isinstance(route, Route) else ()
        if not needed:
            return
        caller = await self.authenticate(scope)
        scope["caller"] = caller
        lacking = next((name for name in needed if name not in caller.scopes), None)
        if lacking is not None:
            # RFC 6750 §3: the scopes the token needs, space-separated.
            names = " ".join(needed)
            raise ProblemError(
                403,
                f"This request needs the scope {lacking}, which the client {caller.name} "
                "does not hold",
                headers={
                    "WWW-Authenticate": (f'{REALM}, error="insufficient_scope", scope="{names}"')
                },
            )

    async def authenticate(self, scope: Scope) -> Client:
        """The client whose token the Authorization header holds (RFC 6750 §2.1), or a 401."""
        if b"access_token" in scope["query_string"] and any(
            name == "access_token"
            for name, _ in parse_qsl(scope["query_string"].decode("latin-1"), True)
        ):
            raise refusal("invalid_request", NO_QUERY_TOKENS)
        header = next((value for key, value in scope["headers"] if key == b"authorization"), None)
        if header is None:
            raise ProblemError(
                401,
                "A bearer token is required: Authorization: Bearer <token>",
                headers={"WWW-Authenticate": REALM},
            )
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer":
            # Credentials of another kind are no bearer credentials at all (RFC 6750 §3.1).
            raise ProblemError(
                401,
                "Authorization must use the Bearer scheme: Authorization: Bearer <token>",
                headers={"WWW-Authenticate": REALM},
            )
        token = token.strip()
        digest = hashlib.sha256(token).digest()
        caller = self.by_digest.get(digest)
        if caller is None and self.access_tokens is not None and token.count(b".") == 2:
            caller = self.access_tokens.held(digest) or await self.jwt_caller(token, digest)
        if caller is None:
            raise refusal("invalid_token", "The bearer token is not one this service accepts")
        return caller

    async def jwt_caller(self, token: bytes, digest: bytes) -> Client:
        assert self.access_tokens is not None
        try:
            return await self.access_tokens.check(token, digest)
        except TokenRefused as exc:
            raise refusal("invalid_token", str(exc)) from None
        except KeysMissing:
            raise ProblemError(
                503,
                "The identity provider's signing keys have not been fetched yet, so access "
                "tokens cannot be checked for now; static clients are served",
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            ) from None


def refusal(error: str, description: str) -> ProblemError:
    """A 401 naming what is wrong with the credentials, in the problem and in
    WWW-Authenticate (whose quoted text holds no quote or backslash)."""
    return ProblemError(
        401,
        description,
        headers={
            "WWW-Authenticate": f'{REALM}, error="{error}", error_description="{description}"'
        },
    )
