"""How the service runs uvicorn: subclasses of its Config, Server and worker supervisor."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from typing import Any

import uvicorn
from click.core import ParameterSource
from uvicorn.config import STARTUP_FAILURE
from uvicorn.lifespan.on import LifespanOn, LifespanSendMessage
from uvicorn.main import main as uvicorn_main
from uvicorn.supervisors import multiprocess

from service import watch
from service.database import CannotStart
from service.logs import configure_logging
from service.settings import Settings

# On a hurried stop, the time requests get to end once told to: to send the
# 503 a closed pool gave them, or to see their client gone.
HURRIED_ANSWER_SECONDS = 1.0
UvicornProcess = multiprocess.Process


class ServiceConfig(uvicorn.Config):
    """uvicorn's Config, logging the service's way in every process from its first line.

    uvicorn would set up its own plain-text logging in the supervisor, and in
    each worker before the app starts; with LOG_FORMAT=json a log pipeline
    would drop those lines.
    """

    def __init__(self, settings: Settings, **options: Any) -> None:
        self.settings = settings  # before Config.__init__, which configures logging
        super().__init__(log_config=None, **options)

    def configure_logging(self) -> None:
        super().configure_logging()
        configure_logging(self.settings)
        logging.captureWarnings(True)  # a warning is a log line too, not a bare one

    def load(self) -> None:
        super().load()
        if self.lifespan_class is LifespanOn:
            self.lifespan_class = Lifespan


class Lifespan(LifespanOn):
    """uvicorn's driver of the app's lifespan, leaving a refusal to start to the app's one line.

    Starlette reports a failed start-up with its traceback, which uvicorn logs:
    for a database that refuses the service, dozens of lines of asyncpg
    internals around the one that matters, once per worker.
    """

    async def send(self, message: LifespanSendMessage) -> None:
        # Starlette sends this from inside its `except` block: the error is at hand.
        if message["type"] == "lifespan.startup.failed" and isinstance(
            sys.exception(), CannotStart
        ):
            message = {"type": "lifespan.startup.failed", "message": ""}
        await super().send(message)


def config_from(args: list[str], settings: Settings) -> ServiceConfig:
    """The Config that `uvicorn *args` would run, read by uvicorn's own command line.

    Only the options `args` gives are passed on; the rest keep Config's defaults.
    """
    with uvicorn_main.make_context("uvicorn", list(args)) as context:
        given = {
            name: value
            for name, value in context.params.items()
            if context.get_parameter_source(name) is ParameterSource.COMMANDLINE
        }
    return ServiceConfig(settings, **given)


class Server(uvicorn.Server):
    """uvicorn's server, whose hurried stop still shuts the app down.

    On a second Ctrl-C (SIGINT) during a stop, uvicorn stops waiting for the
    requests in flight and skips the app's shutdown: the pool is left open,
    and the requests are cancelled with the event loop, each with a traceback.
    """

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Long polls of the change feed answer now rather than hold the stop up.
        for feed_watch in list(watch.running):
            feed_watch.release()
        await super().shutdown(sockets)
        # A second Ctrl-C that comes while uvicorn is already shutting the app
        # down (a worker with nothing in flight) finds the app shut down.
        shut_down = isinstance(self.lifespan, LifespanOn) and self.lifespan.shutdown_event.is_set()
        if not self.force_exit or shut_down:
            return
        # Close the pool all the same, without waiting for the requests:
        # those waiting on the database fail over to a 503 (within the pool's
        # close grace) and send it. The rest, such as a body still arriving,
        # see their client gone. Either way each request ends by itself.
        await self.lifespan.shutdown()
        await self.requests_done()
        for connection in list(self.server_state.connections):
            connection.transport.close()
        await self.requests_done()

    async def requests_done(self) -> None:
        if self.server_state.tasks:
            await asyncio.wait(self.server_state.tasks, timeout=HURRIED_ANSWER_SECONDS)


class Worker(multiprocess.Process):
    """uvicorn's worker process, serving with the service's Server."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = Server(config=self.config)
        return self._server


class Supervisor(multiprocess.Multiprocess):
    """uvicorn's supervisor of worker processes, whose workers are Workers, and
    which tells whether they started.

    It stops when a worker fails to start, rightly, since every restart would
    fail the same way, but then exits 0 as after a stop that was asked for.
    """

    def run(self) -> None:
        # uvicorn makes each worker, at start and on every restart, by this
        # module-level name; it has no other way to choose the class.
        multiprocess.Process = Worker  # type: ignore[misc]
        try:
            super().run()
        finally:
            multiprocess.Process = UvicornProcess  # type: ignore[misc]

    def a_worker_failed_to_start(self) -> bool:
        # A worker that failed to start stays in the list, with uvicorn's code.
        return any(process.exitcode == STARTUP_FAILURE for process in self.processes)


def run(config: ServiceConfig) -> int:
    """Serve until stopped; the exit code: 0, or STARTUP_FAILURE if the service could not start."""
    if config.workers == 1:
        server = Server(config)
        server.run()  # exits with STARTUP_FAILURE itself if the app does not start
        return 0 if server.started else STARTUP_FAILURE
    supervisor = Supervisor(config, sockets=[config.bind_socket()])
    supervisor.run()
    return STARTUP_FAILURE if supervisor.a_worker_failed_to_start() else 0
