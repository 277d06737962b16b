"""uvicorn, run the service's way: its log lines, and an exit code that says whether it started."""

from __future__ import annotations

import logging
import sys
from typing import Any

from click.core import ParameterSource
from uvicorn import Config, Server
from uvicorn.config import STARTUP_FAILURE
from uvicorn.lifespan.on import LifespanOn, LifespanSendMessage
from uvicorn.main import main as uvicorn_main
from uvicorn.supervisors.multiprocess import Multiprocess

from service.database import CannotStart
from service.logs import configure_logging
from service.settings import Settings


class ServiceConfig(Config):
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


class Supervisor(Multiprocess):
    """uvicorn's supervisor of worker processes, which also tells whether they started.

    It stops when a worker fails to start, rightly, since every restart would
    fail the same way, but then exits 0 as after a stop that was asked for.
    """

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
