"""Bearer tokens for the /users and /scim/v2 endpoints, when API_TOKENS is set."""

from __future__ import annotations

import hashlib
import hmac

from starlette.types import Scope

from service.problems import ProblemError

PROTECTED_PREFIXES = ("/users", "/scim/")


def digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class BearerTokens:
    """Refuses with 401 a /users or /scim/ request without one of the configured tokens."""

    def __init__(self, tokens: tuple[str, ...]) -> None:
        # Digests, so that comparing them cannot reveal a token's length.
        self.digests = [digest(token.encode()) for token in tokens]

    def check(self, scope: Scope) -> None:
        if scope["path"].startswith(PROTECTED_PREFIXES) and not self.authorized(scope):
            raise ProblemError(
                401,
                "A valid bearer token is required",
                headers={"WWW-Authenticate": 'Bearer realm="users"'},
            )

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
