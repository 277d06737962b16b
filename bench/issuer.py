"""A stand-in identity provider on 127.0.0.1: its keys, JWKS and discovery over HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
import urllib.parse
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

AUDIENCE = "users-api"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def new_key(algorithm: str) -> PrivateKey:
    """A fresh private key for `algorithm` (RS*/PS*, ES256 or EdDSA)."""
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(key: PrivateKey, kid: str) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        found = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        found = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        found = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**found, "kid": kid, "use": "sig"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """Serves /.well-known/openid-configuration, /keys and /token from a thread.

    /token grants the client-credentials flow to any client (its id from Basic auth or
    client_id), with the scopes it asks for: a stand-in, that checks no secret.

    `keys` (kid to private key) is what /keys publishes; `down` makes every answer a 503;
    `fetches` counts the requests for /keys.
    """

    def __init__(self, algorithm: str = "RS256", port: int = 0, audience: str = AUDIENCE) -> None:
        self.algorithm = algorithm
        self.audience = audience
        self.keys: dict[str, PrivateKey] = {"key-1": new_key(algorithm)}
        self.down = False
        self.fetches = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), self.handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread: threading.Thread | None = None

    def start(self) -> Issuer:
        if self.thread is None:
            self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
            self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread is not None:
            self.server.shutdown()
            self.thread.join()
        self.server.server_close()

    @property
    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "jwks_uri": f"{self.url}/keys",
            "token_endpoint": f"{self.url}/token",
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(key, kid) for kid, key in self.keys.items()]}

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/keys":
                    issuer.fetches += 1
                if issuer.down:
                    self.answer(503, {"error": "down"})
                elif self.path.endswith("/.well-known/openid-configuration"):
                    self.answer(200, issuer.discovery)
                elif self.path == "/keys":
                    self.answer(200, issuer.jwks())
                else:
                    self.answer(404, {"error": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                basic = self.headers.get("Authorization", "").removeprefix("Basic ")
                client_id = (
                    base64.b64decode(basic).decode().partition(":")[0]
                    if basic
                    else form.get("client_id", [""])[0]
                )
                if not self.path.endswith("/token") or issuer.down:
                    self.answer(404 if not issuer.down else 503, {"error": "not here"})
                elif form.get("grant_type") != ["client_credentials"] or not client_id:
                    self.answer(400, {"error": "invalid_request"})
                else:
                    scope = form.get("scope", [""])[0]
                    token = issuer.token(client_id=client_id, scope=scope)
                    self.answer(
                        200,
                        {
                            "access_token": token,
                            "token_type": "Bearer",
                            "expires_in": 3600,
                            "scope": scope,
                        },
                    )

            def answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def claims(self, **claims: Any) -> dict[str, Any]:
        """An access token's claims, as a client-credentials grant gives them: this issuer,
        the service's audience, an hour to live; `claims` add to them or replace them."""
        now = int(time.time())
        found = {
            "iss": self.url,
            "aud": self.audience,
            "iat": now,
            "exp": now + 3600,
            "jti": str(uuid.uuid4()),
            "client_id": "reporting",
            "scope": "users:read",
        }
        found.update(claims)
        return {name: value for name, value in found.items() if value is not None}

    def token(
        self, *, kid: str = "key-1", key: PrivateKey | None = None, typ: str | None = "at+jwt",
        algorithm: str | None = None, **claims: Any,
    ) -> str:  # fmt: skip
        """A token signed by this issuer's key `kid` (or by `key`, under that kid)."""
        headers = {"kid": kid} if typ is None else {"kid": kid, "typ": typ}
        signer = key if key is not None else self.keys[kid]
        return jwt.encode(
            self.claims(**claims), signer, algorithm=algorithm or self.algorithm, headers=headers
        )

    def hs256_token(self, kid: str = "key-1", **claims: Any) -> str:
        """A token whose HS256 "signature" uses the public key's PEM as the secret: what an
        attacker sends to a verifier that lets the token pick the algorithm."""
        secret = (
            self.keys[kid]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return self.unsigned_token({"alg": "HS256", "typ": "JWT", "kid": kid}, claims, secret)

    def unsigned_token(
        self, header: dict[str, Any], claims: dict[str, Any], secret: bytes | None = None
    ) -> str:
        """A token with this header, signed with HMAC-SHA256 over `secret`, or unsigned."""
        signing_input = (
            f"{b64(json.dumps(header).encode())}.{b64(json.dumps(self.claims(**claims)).encode())}"
        )
        signature = b""
        if secret is not None:
            signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(signature)}"
