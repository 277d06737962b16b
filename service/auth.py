"""Bearer tokens for the /users endpoints, when API_TOKENS is set."""

from __future__ import annotations

import hashlib
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from service.problems import ProblemError, problem_response

PROTECTED_PREFIX = "/users"


def digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class BearerTokens:
    """Answers 401 to a /users request without one of the configured tokens."""

    def __init__(self, app: ASGIApp, tokens: tuple[str, ...]) -> None:
        self.app = app
        # Digests, so that comparing them cannot reveal a token's length.
        self.digests = [digest(token.encode()) for token in tokens]

    def authorized(self, scope: Scope) -> bool:
        header = next((value for key, value in scope["headers"] if key == b"authorization"), b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        # Compare with every token, in constant time each, so neither the
        # match nor its position shows in the response time.
        given_digest = digest(given.strip())
        matches = [hmac.compare_digest(given_digest, known) for known in self.digests]
        return any(matches)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not scope["path"].startswith(PROTECTED_PREFIX)
            or self.authorized(scope)
        ):
            await self.app(scope, receive, send)
            return
        response = problem_response(
            ProblemError(
                401,
                "A valid bearer token is required",
                headers={"WWW-Authenticate": 'Bearer realm="users"'},
            )
        )
        await response(scope, receive, send)
