"""Access tokens from the identity provider: a JWT checked against the issuer's keys."""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

import jwt

from service.keys import SigningKeys
from service.scopes import SCOPES, ScopeName
from service.settings import Client

# Signatures by the issuer's private key. "none" and the HMAC algorithms are
# absent: an HS256 token "signed" with the public key would otherwise pass.
ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
# RFC 9068's at+jwt (also spelt in full), plain JWT, or none at all.
TYPES = frozenset({"at+jwt", "application/at+jwt", "jwt"})
LEEWAY_SECONDS = 60
# Tokens checked, each held until it expires; past this many, the oldest go first.
CHECKED_MAX = 10_000
# The claims naming the client, in the order tried: RFC 9068, OpenID, Entra, any.
NAME_CLAIMS = ("client_id", "azp", "appid", "sub")
# What a refusal may repeat of a token: no quote or backslash, nothing long.
WORD = re.compile(r"[A-Za-z0-9+_-]{1,20}")
# A client's name goes on log lines and each change it makes: printable, no spaces.
CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:|/+=-]{0,254}")


class TokenRefused(Exception):
    """The token is not one this service accepts; the message says why, in words that
    fit in a WWW-Authenticate header (no quote, no backslash)."""


class KeysMissing(Exception):
    """No signing key has been fetched yet: the token cannot be checked for now."""


class AccessTokens:
    """The JWTs of one issuer and audience, each checked once and then held until it
    expires, as the client it names."""

    def __init__(self, issuer: str, audience: str, jwks_url: str | None) -> None:
        self.issuer = issuer
        self.audience = audience
        self.checked: dict[bytes, tuple[Client, float]] = {}
        self.keys = SigningKeys(issuer, jwks_url, on_removed=self.checked.clear)

    def held(self, digest: bytes) -> Client | None:
        """The client of a token already checked and not yet expired, by its SHA-256."""
        found = self.checked.get(digest)
        if found is None or found[1] <= time.time():
            return None
        return found[0]

    async def check(self, token: bytes, digest: bytes) -> Client:
        """The client the token names, once its signature and claims are checked."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRefused("The bearer token is not one this service accepts") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            shown = algorithm if isinstance(algorithm, str) and WORD.fullmatch(algorithm) else "?"
            raise TokenRefused(
                f"The token's alg {shown} is not accepted: only RS, PS, ES and EdDSA signatures are"
            )
        kind = header.get("typ")
        if kind is not None and (not isinstance(kind, str) or kind.lower() not in TYPES):
            raise TokenRefused("The token's typ is neither at+jwt nor JWT")
        if not self.keys.held:  # the token is well formed, but nothing can check it yet
            raise KeysMissing
        kid = header.get("kid", "")
        key = await self.keys.find(kid if isinstance(kid, str) else str(kid))
        if key is None:
            raise TokenRefused("The token is signed with a key the issuer does not publish")
        claims = self.decode(token, key, algorithm)
        client = client_of(claims, self.issuer)
        if len(self.checked) >= CHECKED_MAX:
            del self.checked[next(iter(self.checked))]
        self.checked[digest] = (client, float(claims["exp"]))
        return client

    def decode(self, token: bytes, key: dict[str, Any], algorithm: str) -> dict[str, Any]:
        try:
            verifier = jwt.PyJWK(key, algorithm)
        except jwt.PyJWTError:
            raise TokenRefused(f"The token's key does not take {algorithm} signatures") from None
        if key.get("alg", algorithm) != algorithm:
            raise TokenRefused(f"The token's key does not take {algorithm} signatures")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                verifier,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefused("The token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRefused("The token is not valid yet (nbf or iat)") from None
        except jwt.InvalidAudienceError:
            raise TokenRefused("The token is meant for another audience (aud)") from None
        except jwt.InvalidIssuerError:
            raise TokenRefused("The token comes from another issuer (iss)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRefused(f"The token lacks the {exc.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise TokenRefused("The token's signature does not verify") from None
        except jwt.PyJWTError:
            raise TokenRefused("The bearer token is not one this service accepts") from None
        return claims


def client_of(claims: dict[str, Any], issuer: str) -> Client:
    """The client the claims name, holding the scopes they grant that this service knows."""
    name = next((claims[claim] for claim in NAME_CLAIMS if claims.get(claim)), None)
    if not (isinstance(name, str) and CLIENT_NAME.fullmatch(name)):
        raise TokenRefused("The token names no client in client_id, azp, appid or sub")
    granted: set[str] = set()
    for claim in ("scope", "scp", "roles"):
        value = claims.get(claim)
        if isinstance(value, str):
            granted.update(value.split())
        elif isinstance(value, list):
            granted.update(item for item in value if isinstance(item, str))
    scopes: frozenset[ScopeName] = frozenset(scope for scope in SCOPES if scope in granted)
    # Not a token's digest: idempotency keys are the client's, and outlive each token.
    identity = hashlib.sha256(f"{issuer}\n{name}".encode()).hexdigest()
    return Client(name=name, scopes=scopes, token_sha256=identity)
