"""A bare ASGI app answering every request with one constant 45-byte JSON body."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

BODY = b'{"id":1,"name":"Al","email":"al@example.com"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def constant_json(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        # Answer lifespan so uvicorn starts it exactly as it starts the service.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def create_app() -> ASGIApp:
    return constant_json
