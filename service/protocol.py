"""uvicorn's httptools protocol, with a size limit and a deadline on each request head."""

from __future__ import annotations

import asyncio
from functools import cache

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.logs import request_id
from service.observe import Observer, request_id_of
from service.problems import ProblemError, problem_response
from service.settings import Settings

# Far above a real client's request line and headers (browsers send a few
# KiB), far below what matters to a worker's memory.
MAX_HEAD_BYTES = 64 * 1024
HEAD_TOO_LARGE = "Request line and headers too large."
# The scope's key for the connection's transport: a stream sizes its socket's
# buffer and cuts off a stalled client through it, which ASGI has no words for.
TRANSPORT = "service.transport"


class HeadTooLarge(Exception):
    """The request line and headers passed MAX_HEAD_BYTES."""


@cache
def head_timeout() -> float:
    # Read at the first request, not at import: by then the app has started,
    # and stopped the worker with one clear line if a setting is bad.
    return Settings.from_env().head_timeout


@cache
def observer() -> Observer:
    return Observer(Settings.from_env())


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn keeps a request's line and headers in memory without limit and
    waits for them without end, so one client could grow a worker without end,
    or hold connections open forever with a byte now and then (slowloris).

    Here a head must fit in MAX_HEAD_BYTES (else a 431) and arrive within
    HEAD_TIMEOUT seconds of its first byte (else a close), and a new connection
    must send its first byte within HEAD_TIMEOUT too. A request the parser
    refuses is answered as the app answers: with a problem and a request ID.

    The size is counted twice over, since neither count alone holds for every
    segmentation: the bytes received while a head is incomplete (a head that
    trickles in and never ends), and the URL and headers as the parser hands
    them over (a whole head, or several pipelined ones, in a single read).
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_bytes = 0
        self.parsed_head_bytes = 0
        self.in_head = True
        self.message_ended = False
        self.head_clock: asyncio.TimerHandle | None = None
        self.head_started = self.loop.time()
        # uvicorn starts its keep-alive clock only after a first response; a
        # new connection gets HEAD_TIMEOUT for its first byte, not 105 s.
        # uvicorn cancels this clock at the first byte, as it does keep-alive's.
        self.timeout_keep_alive_task = self.loop.call_later(
            head_timeout(), self.timeout_keep_alive_handler
        )

    def data_received(self, data: bytes) -> None:
        if self.in_head and self.head_clock is None:
            self.head_clock = self.loop.call_later(head_timeout(), self.head_timed_out)
            self.head_started = self.loop.time()
        self.message_ended = False
        # uvicorn's own, but for its line on a refused request: the problem's line says it.
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.send_400_response(f"Invalid HTTP request: {exc}")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        # Count what arrived while a head is still incomplete. A chunk that
        # also ended a message (pipelining) is not counted: its bytes were
        # mostly that message's body, and the next chunk is counted again.
        if self.in_head and not self.message_ended and not self.transport.is_closing():
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self.stop_head_clock()
                self.send_400_response(HEAD_TOO_LARGE)

    def _unsupported_upgrade_warning(self) -> None:
        # Not a warning: RFC 9110 lets a server ignore Upgrade. But the parser
        # reads nothing after such a head, so the connection must end with
        # this answer, or the client's next request would wait for ever.
        if self.cycle is not None:
            self.cycle.keep_alive = False

    def on_url(self, url: bytes) -> None:
        self.count_parsed(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.count_parsed(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def count_parsed(self, size: int) -> None:
        self.parsed_head_bytes += size
        if self.parsed_head_bytes > MAX_HEAD_BYTES:
            # Raised inside a parser callback, this stops the parser, which
            # answers through send_400_response below.
            raise HeadTooLarge

    def send_400_response(self, msg: str) -> None:
        """Answer a request the parser refused with a problem, logged and counted, and close."""
        self.stop_head_clock()
        too_large = msg == HEAD_TOO_LARGE or self.parsed_head_bytes > MAX_HEAD_BYTES
        status, detail = (431, HEAD_TOO_LARGE) if too_large else (400, msg)
        # Its headers as far as the parser got: the caller's X-Request-ID may be among them.
        scope = {"method": "-", "headers": self.headers or []}
        rid = request_id_of(scope)
        response = problem_response(ProblemError(status, detail))
        head = [STATUS_LINE[status]]
        headers = [*self.server_state.default_headers, *response.raw_headers]
        headers += [(b"x-request-id", rid.encode()), (b"connection", b"close")]
        head += [b"%s: %s\r\n" % header for header in headers]
        self.transport.write(b"".join([*head, b"\r\n", response.body]))
        self.transport.close()
        # The log line carries the ID, as a request's does; the connection's context keeps none.
        token = request_id.set(rid)
        try:
            observer().record(scope, status, self.loop.time() - self.head_started)
        finally:
            request_id.reset(token)

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.stop_head_clock()
        super().on_headers_complete()
        self.scope[TRANSPORT] = self.transport  # type: ignore[literal-required]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.in_head = True
        self.head_bytes = 0
        self.parsed_head_bytes = 0
        self.message_ended = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_head_clock()
        super().connection_lost(exc)

    def head_timed_out(self) -> None:
        self.head_clock = None
        if self.in_head:
            self.transport.close()

    def stop_head_clock(self) -> None:
        if self.head_clock is not None:
            self.head_clock.cancel()
            self.head_clock = None
