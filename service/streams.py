"""Server-sent event streams: sent as their socket drains, ended when their client goes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service import server
from service.logs import route_template
from service.observe import WAITED

logger = logging.getLogger("service")

EVENT_STREAM = "text/event-stream"
# No proxy may keep the stream to answer others, or hold it back to buffer it.
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}

# Chunks of the stream, each with the number of events it holds.
Chunks = AsyncGenerator[tuple[bytes, int], None]


class EventStream(Response):
    """A stream of chunks, each made only once the one before left for the socket.

    uvicorn's send returns at once while the connection's write buffer is
    below its high-water mark (64 KiB), and otherwise waits for it to drain:
    a stream whose client does not read holds that buffer, one chunk and
    whatever the iterator keeps, never more. A client that reads nothing for
    `stall_seconds` is cut off; one that goes ends the stream at once (499).
    """

    media_type = EVENT_STREAM

    def __init__(self, chunks: Chunks, *, stall_seconds: float, ended: Callable[[], None]) -> None:
        self.chunks = chunks
        self.stall_seconds = stall_seconds
        self.ended = ended
        self.status_code = 200
        self.background = None
        self.init_headers(HEADERS)
        self.events = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        began = time.perf_counter()
        outcome, level = "the service stopped", logging.INFO
        stream = asyncio.ensure_future(self.stream(send))
        client = asyncio.ensure_future(disconnected(receive))
        try:
            await asyncio.wait({stream, client}, return_when=asyncio.FIRST_COMPLETED)
            if not stream.done():
                outcome = "its client went"
                raise ClientDisconnect
            error = stream.exception()
            if isinstance(error, TimeoutError):
                outcome = f"its client read nothing for {self.stall_seconds:g} s"
                # Its write buffer is full: a close would wait for it to drain.
                server.abort_connection(scope)
                await asyncio.sleep(0)  # for uvicorn to see the connection lost
            elif error is not None:  # the headers are sent: no problem can be answered
                outcome = f"an error: {error!r}"
                level = logging.WARNING
        finally:
            stream.cancel()
            client.cancel()
            await asyncio.wait({stream})
            await self.chunks.aclose()
            self.ended()
            seconds = time.perf_counter() - began
            # Streaming is not answering slowly: the log's slow requests leave it out.
            scope[WAITED] = scope.get(WAITED, 0.0) + seconds
            logger.log(
                level,
                "a stream of %s ended after %.1f s, %d events sent: %s",
                route_template(scope), seconds, self.events, outcome,
            )  # fmt: skip

    async def stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async for chunk, events in self.chunks:
            # The send waits while the write buffer is full: for the client to read.
            async with asyncio.timeout(self.stall_seconds):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            self.events += events
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def disconnected(receive: Receive) -> None:
    """Return once the client has gone: the request has no body left to read."""
    while (await receive())["type"] != "http.disconnect":
        pass
