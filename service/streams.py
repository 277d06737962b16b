"""Server-sent event streams: sent as their socket drains, ended when their client goes."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import socket
import struct
import time
from collections.abc import AsyncGenerator, Callable

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.logs import route_template
from service.observe import WAITED
from service.protocol import TRANSPORT

logger = logging.getLogger("service")

EVENT_STREAM = "text/event-stream"
# No proxy may keep the stream to answer others, or hold it back to buffer it.
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}

# The kernel's send buffer of a stream's socket (Linux doubles it), and the
# write buffer above it (uvicorn's transport pauses at 64 KiB).
SEND_BUFFER = 64 * 1024
RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close with a reset
STOPPED = "the service stopped"
# Seconds after the last stream ended that the memory they freed is trimmed.
TRIM_AFTER_SECONDS = 1.0
# Chunks of the stream, each with the number of events it holds.
Chunks = AsyncGenerator[tuple[bytes, int], None]


class EventStream(Response):
    """A stream of chunks, each made only once the one before left for the socket.

    uvicorn's send returns at once while the connection's write buffer is
    below its high-water mark (64 KiB), and otherwise waits for it to drain:
    a stream whose client does not read holds that buffer, one chunk and
    whatever the iterator keeps, never more; the socket's own send buffer is
    fixed at SEND_BUFFER, so that the kernel does not take megabytes more.
    A client that reads nothing for `stall_seconds` is cut off; one that
    goes ends the stream at once (499).
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
        # None outside the service's protocol (an in-process test).
        transport: asyncio.Transport | None = scope.get(TRANSPORT)
        if transport is not None:
            # A fixed send buffer: the kernel's own would grow to megabytes on a
            # fast link, and the stream would read as much of its backlog into it.
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        outcome, level = "", logging.INFO
        stream = asyncio.ensure_future(self.stream(send))
        client = asyncio.ensure_future(disconnected(receive))
        try:
            await asyncio.wait({stream, client}, return_when=asyncio.FIRST_COMPLETED)
            if not stream.done():
                outcome = "its client went"
                raise ClientDisconnect
            if isinstance(stream.exception(), Stalled):
                outcome = f"its client read nothing for {self.stall_seconds:g} s"
                # Its buffers are full: uvicorn's close would wait for them to drain,
                # and the kernel's would go on sending; a reset drops them.
                if transport is not None:
                    sock = transport.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
                    transport.abort()
                    await asyncio.sleep(0)  # for uvicorn to see the connection lost
            else:
                outcome = stream.result()
                level = logging.INFO if outcome == STOPPED else logging.WARNING
        finally:
            stream.cancel()
            client.cancel()
            await asyncio.wait({stream})
            await self.chunks.aclose()
            self.ended()
            trim.soon()
            seconds = time.perf_counter() - began
            # Streaming is not answering slowly: the log's slow requests leave it out.
            scope[WAITED] = scope.get(WAITED, 0.0) + seconds
            logger.log(
                level,
                "a stream of %s ended after %.1f s, %d events sent: %s",
                route_template(scope), seconds, self.events, outcome,
            )  # fmt: skip

    async def stream(self, send: Send) -> str:
        """Send the chunks, then the end; why the stream ended. Stalled when a
        chunk waits `stall_seconds` for the client to read."""
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        outcome = STOPPED
        try:
            async for chunk, events in self.chunks:
                try:
                    # The send waits while the write buffer is full: for the client to read.
                    async with asyncio.timeout(self.stall_seconds):
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except TimeoutError:
                    raise Stalled from None
                self.events += events
        except Stalled:
            raise
        except Exception as exc:  # a failover's among them: the headers are sent, so
            # no problem can be answered; the stream ends, and the client reconnects.
            outcome = f"an error: {exc!r}"
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return outcome


class Stalled(Exception):
    """A stream's client read nothing for its stall_seconds."""


class Trim:
    """Hand the memory that ended streams freed back to the system, once they stop ending.

    Their buffers are tens of KiB each: glibc's malloc serves them from its
    heap, and keeps what they free there for the process to reuse, which a
    thousand streams closing at once leaves at hundreds of MB of RSS.
    malloc_trim(0) returns the free pages (about 1 ms per 100 MB).
    """

    def __init__(self) -> None:
        library = ctypes.util.find_library("c")
        libc = ctypes.CDLL(library) if library else None
        self._malloc_trim = getattr(libc, "malloc_trim", None)  # glibc's alone
        self._pending: asyncio.TimerHandle | None = None

    def soon(self) -> None:
        if self._malloc_trim is None:
            return
        if self._pending is not None:
            self._pending.cancel()
        self._pending = asyncio.get_running_loop().call_later(TRIM_AFTER_SECONDS, self._trim)

    def _trim(self) -> None:
        self._pending = None
        assert self._malloc_trim is not None
        self._malloc_trim(0)


trim = Trim()


async def disconnected(receive: Receive) -> None:
    """Return once the client has gone: the request has no body left to read."""
    while (await receive())["type"] != "http.disconnect":
        pass
