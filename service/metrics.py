"""Prometheus metrics, correct across uvicorn workers, and the /metrics endpoint."""

from __future__ import annotations

import asyncio
import logging
import os
from bisect import bisect_left
from collections import Counter as Occurrences
from collections.abc import Iterable
from pathlib import Path

import asyncpg
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response

from service import queries
from service.database import db_of, pool_of
from service.operations import Operation, Reply

logger = logging.getLogger("service")

# Set by python -m service before uvicorn starts workers; prometheus_client
# reads it at import, so each worker writes its values to files there.
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")

REQUESTS = Counter(
    "http_requests_total", "Requests answered", ["method", "route", "status", "client"]
)
LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time to answer a request",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
IN_FLIGHT = Gauge("http_requests_in_flight", "Requests being answered", multiprocess_mode="livesum")
POOL_SIZE = Gauge(
    "db_pool_connections", "Connections open in the pool", multiprocess_mode="livesum"
)
POOL_IDLE = Gauge(
    "db_pool_idle_connections", "Open connections not in use", multiprocess_mode="livesum"
)
# Faults only: a constraint refusing a caller's value is that caller's 409 or 422.
DB_ERRORS = Counter("db_errors_total", "Database errors by class", ["error"])
# Only with DATABASE_READ_URLS set; a replica is named by its host:port alone.
DB_READS = Counter(
    "db_reads_total", "Read queries by the server that ran them: primary or a replica", ["target"]
)
REPLICA_LAG = Gauge(
    "db_replica_lag_seconds",
    "Replay lag of each replica as last measured (+Inf when it does not answer)",
    ["replica"],
    multiprocess_mode="livemax",
)
REPLICAS_IN_USE = Gauge(
    "db_replicas_in_use",
    "Replicas within DB_READ_MAX_LAG, taking reads",
    multiprocess_mode="livemin",
)

# The change feed. Changes are counted by the writes that made them, once committed.
CHANGES_WRITTEN = Counter(
    "feed_changes_written_total", "Changes to users written to the feed", ["type"]
)
# Bound once: labels() is a locked lookup each time.
USERS_CREATED, USERS_UPDATED, USERS_DELETED = (
    CHANGES_WRITTEN.labels(type) for type in ("created", "updated", "deleted")
)
FEED_REQUESTS = Counter(
    "feed_requests_total", "Requests of the change feed, by how they read", ["mode"]
)
FEED_STREAMS = Gauge(
    "feed_streams_open", "Server-sent event streams of the feed open", multiprocess_mode="livesum"
)
FEED_REFUSED = Counter(
    "feed_consumers_refused_total",
    "Long polls and streams refused (503) because the worker held FEED_MAX_CONSUMERS",
)
FEED_DELAY = Gauge(
    "feed_delay_seconds",
    "How long the oldest committed change the feed cannot serve yet has waited, because an "
    "older transaction is still running; 0 when it can serve every change",
    multiprocess_mode="mostrecent",
)
# SCIM attributes outside the published schema, skipped; the path labels are
# bounded (service/scim/kept.py).
# The relay's, in a registry of their own: `python -m service relay` serves
# them on RELAY_METRICS_PORT, apart from the web workers' /metrics.
RELAY_REGISTRY = CollectorRegistry(auto_describe=True)
RELAY_PUBLISHED = Counter(
    "relay_published_total", "Changes stored in the stream", registry=RELAY_REGISTRY
)
RELAY_DUPLICATES = Counter(
    "relay_duplicates_total",
    "Publishes the stream acknowledged as duplicates of a stored message (by Nats-Msg-Id)",
    registry=RELAY_REGISTRY,
)
RELAY_PURGES = Counter(
    "relay_purges_total",
    "Deleted groups whose members' messages were purged (RELAY_GROUPS=1)",
    registry=RELAY_REGISTRY,
)
RELAY_ERRORS = Counter(
    "relay_errors_total",
    "Relay failures by kind: fenced, timeout, nats, database, other, gave_up",
    ["kind"],
    registry=RELAY_REGISTRY,
)
RELAY_LAG_CHANGES = Gauge(
    "relay_lag_changes",
    "Changes readable in the feed and not yet in the stream",
    registry=RELAY_REGISTRY,
)
RELAY_LAG_SECONDS = Gauge(
    "relay_lag_seconds",
    "Seconds since the oldest change not yet in the stream began (0 when none is)",
    registry=RELAY_REGISTRY,
)
SCIM_SKIPPED = Counter(
    "scim_attributes_skipped_total", "SCIM attributes not kept, skipped, by path", ["path"]
)


class Tally:
    """A count kept without a lock, copied to its gauge when that is read.

    The gauge's lock and file write twice per request cost throughput; a
    scrape only ever sees a sample anyway.
    """

    def __init__(self) -> None:
        self.value = 0


requests_in_flight = Tally()

# The client label of a request without a caller: the service runs open, the
# route is open, or the request was refused before its caller was known. An
# empty label is no label to PromQL, and no client's name.
NO_CLIENT = ""
# The label of every name beyond the bound, and how many names a worker labels
# beyond those of the configured clients (API_CLIENTS, API_TOKENS' token-N).
OTHER_CLIENTS = "other"
MAX_UNCONFIGURED_CLIENTS = 100


class ClientLabels:
    """The client label of each caller's name, bounded so that callers cannot grow the
    metrics without end: a configured client's name is always its own label, and other
    names (an identity provider's clients) are theirs for the first 100 a worker sees,
    then OTHER_CLIENTS."""

    def __init__(self) -> None:
        self.labels: dict[str, str] = {}
        self.unconfigured = 0

    def configure(self, names: Iterable[str]) -> None:
        for name in names:
            self.labels[name] = name

    def label(self, name: str) -> str:
        label = self.labels.get(name)
        if label is not None:
            return label
        if self.unconfigured >= MAX_UNCONFIGURED_CLIENTS:
            return OTHER_CLIENTS  # not kept: the dict stays bounded too
        self.unconfigured += 1
        self.labels[name] = name
        return name


client_labels = ClientLabels()


def client_label(name: str) -> str:
    """The client label of requests from the caller with this name, in this worker: what
    the Observer asks for each request's caller, whichever way it was told apart."""
    return client_labels.label(name)


RequestKey = tuple[str, str, int, str]  # method, route template, status, client label


class RequestTally:
    """Requests counted and timed in plain numbers, written to the metrics once a loop turn.

    In multiprocess mode every Counter.inc and Histogram.observe takes a lock
    and writes to a memory-mapped file: about 4 us a request, 5-10% of a
    lookup's CPU under load, when one loop turn answers dozens of requests.
    Here a request appends its duration, and the end of the turn writes each
    (method, route, status, client) once: its count, its sum and each bucket's
    count, into the histogram's own values, as observe() would one at a time.
    """

    def __init__(self) -> None:
        self.pending: dict[RequestKey, list[float]] = {}
        # labels() is a locked lookup each time, and the set of keys is small.
        self.children: dict[RequestKey, tuple[Counter, Histogram]] = {}

    def add(self, key: RequestKey, seconds: float) -> None:
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.write)
        durations = self.pending.get(key)
        if durations is None:
            self.pending[key] = [seconds]
        else:
            durations.append(seconds)

    def write(self) -> None:
        pending, self.pending = self.pending, {}
        for key, durations in pending.items():
            children = self.children.get(key)
            if children is None:
                # Latency is not by client: its 16 series a key, times each
                # client, would be the bulk of every scrape.
                latency = LATENCY.labels(*key[:3])
                children = self.children[key] = (REQUESTS.labels(*key), latency)
            count, histogram = children
            count.inc(len(durations))
            # Histogram has no observe-many; these are its own values (prometheus-client
            # is pinned, and test_metrics checks count, sum and buckets agree).
            histogram._sum.inc(sum(durations))
            # observe()'s bucket: the first whose upper bound is >= the duration.
            bounds = histogram._upper_bounds
            for index, times in Occurrences(bisect_left(bounds, d) for d in durations).items():
                histogram._buckets[index].inc(times)


request_tally = RequestTally()


def observe_gauges(pool: asyncpg.Pool) -> None:
    IN_FLIGHT.set(requests_in_flight.value)
    POOL_SIZE.set(pool.get_size())
    POOL_IDLE.set(pool.get_idle_size())


async def watch_gauges(pool: asyncpg.Pool, every: float = 1.0) -> None:
    """Keep this worker's gauges fresh for whichever worker is scraped."""
    while True:
        observe_gauges(pool)
        await asyncio.sleep(every)


def forget_dead_workers() -> None:
    """Drop the live gauges of workers that died without saying so (crashed, killed)."""
    if MULTIPROCESS_DIR is None:
        return
    for path in Path(MULTIPROCESS_DIR).glob("gauge_live*_*.db"):
        pid = int(path.stem.rpartition("_")[2])
        if pid != os.getpid() and not process_exists(pid):
            multiprocess.mark_process_dead(pid, MULTIPROCESS_DIR)


def forget_this_worker() -> None:
    """Drop this worker's live gauges as it stops; its counts stay."""
    if MULTIPROCESS_DIR is not None:
        multiprocess.mark_process_dead(os.getpid(), MULTIPROCESS_DIR)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


METRICS = Operation(
    operation_id="metrics",
    tag="operations",
    summary="Prometheus metrics",
    description="Requests, latency, pool and database errors, summed over every worker.",
    replies={
        200: Reply(description="The text exposition format.", body=str, media_type="text/plain")
    },
)


async def metrics(request: Request) -> Response:
    """Every worker's metrics, whichever worker is asked."""
    request_tally.write()  # this worker's requests of the current loop turn, too
    observe_gauges(pool_of(request))
    try:
        FEED_DELAY.set(await queries.feed_delay(db_of(request)))
    except Exception as exc:  # the database down among them: the rest is still worth showing
        logger.warning("reading the change feed's delay failed: %r", exc)
    if MULTIPROCESS_DIR is None:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, MULTIPROCESS_DIR)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
