"""Read replicas: which may serve a read, by replay lag measured off the request path."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import asyncpg

from service import metrics, queries
from service.database import UNAVAILABLE, Database, PoolBusy, close_pool, create_pool
from service.database import database_address as address_of
from service.schemas import Stored, User
from service.settings import Settings

logger = logging.getLogger("service")
K = TypeVar("K")
V = TypeVar("V")
Answer = Callable[[queries.Executor, list[K]], Awaitable[list[V]]]

# How often the lag is measured: half the bound, so that a replica falling
# behind is seen within it, and at least twice a second.
MAX_INTERVAL_SECONDS = 0.5
# A server that takes longer than this to say where its WAL is does not serve reads.
PROBE_TIMEOUT_SECONDS = 1.0
# How far back the primary's positions are kept: a replica further behind
# reports at least this much lag.
SAMPLES_SECONDS = 60.0

# Where the primary writes its WAL, and how far a replica has replayed it;
# NULL on a server that is not replaying, that is not a standby.
PRIMARY_POSITION = "SELECT pg_current_wal_lsn()"
REPLAYED_POSITION = "SELECT pg_last_wal_replay_lsn()"

# States of a replica, as /readyz reports them.
State = Literal["in use", "lagging", "down", "not a standby", "not measured yet"]
IN_USE: State = "in use"
LAGGING: State = "lagging"
DOWN: State = "down"
NOT_A_STANDBY: State = "not a standby"
UNMEASURED: State = "not measured yet"

# A read that fails on a replica for these reasons is run on the primary:
# a connection that failed or a server that is down, a pool that is full, or
# a query cancelled by a conflict with the WAL being replayed (40001).
FALL_BACK = (*UNAVAILABLE, PoolBusy, asyncpg.SerializationError)


class Probe:
    """The lag monitor's own connection to one server, opened again after any failure.

    Not a pool connection, so that a busy pool neither delays a measurement
    nor is made busier by it.
    """

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.statement_cache_size = settings.db_statement_cache_size
        self.conn: asyncpg.Connection | None = None

    async def position(self, query: str) -> tuple[float, int | None]:
        """When the query was sent (monotonic seconds), and the WAL position it returned."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                if self.conn is None or self.conn.is_closed():
                    self.conn = await asyncpg.connect(
                        self.url,
                        statement_cache_size=self.statement_cache_size,
                        server_settings={"application_name": "users-service-monitor"},
                    )
                sent_at = time.monotonic()
                position: int | None = await self.conn.fetchval(query)
                return sent_at, position
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.terminate()
            self.conn = None


class Replica:
    """One replica: its pool, its probe, and what was last measured of it."""

    def __init__(self, url: str, pool: asyncpg.Pool, settings: Settings) -> None:
        self.address = address_of(url)
        self.pool = pool
        self.db = Database(pool, settings.db_pool_timeout)
        self.probe = Probe(url, settings)
        self.state: State = UNMEASURED
        self.lag: float = math.inf
        self.reads = metrics.DB_READS.labels(self.address)
        self.lag_gauge = metrics.REPLICA_LAG.labels(self.address)


class Replicas:
    """The replicas whose lag is within DB_READ_MAX_LAG, taking turns with reads.

    Each turn of the monitor notes the primary's WAL position with the local
    monotonic time it was asked at, then asks each replica how far it has
    replayed. A replica that has replayed up to a position the primary had
    reached at time t holds everything the primary held at t, so its lag is
    at most now - t for the newest such t: no clock is compared across
    servers. A replica whose replay is paused or slow falls behind by the
    wall-clock time the primary kept writing; an idle one that has replayed
    everything lags by one turn's round trip. Reads go to the primary when no
    replica qualifies.
    """

    def __init__(self, primary: Database, replicas: list[Replica], settings: Settings) -> None:
        self.primary = primary
        self.replicas = replicas
        self.max_lag = settings.db_read_max_lag
        self.interval = min(MAX_INTERVAL_SECONDS, settings.db_read_max_lag / 2)
        self.primary_probe = Probe(settings.database_url or "", settings)
        # (asked at, position), both increasing: the primary's recent WAL positions.
        self.samples: deque[tuple[float, int]] = deque()
        self.in_use: list[Replica] = []
        self.turn = 0
        self.primary_reads = metrics.DB_READS.labels("primary")

    def choose(self) -> Replica | None:
        """The next replica in use, in turn; None when none is."""
        in_use = self.in_use
        if not in_use:
            return None
        self.turn += 1
        return in_use[self.turn % len(in_use)]

    async def read(self, answer: Answer[K, V], keys: list[K]) -> list[V]:
        values, _ = await self.read_from(answer, keys)
        return values

    async def read_from(self, answer: Answer[K, V], keys: list[K]) -> tuple[list[V], bool]:
        """`answer`'s values from a replica in use, else from the primary; and
        whether a replica gave them. A replica that fails is left for the
        primary, and one that is down is no longer used until it answers."""
        replica = self.choose()
        if replica is not None:
            try:
                values = await answer(replica.db, keys)
            except FALL_BACK as exc:
                if isinstance(exc, UNAVAILABLE):
                    self.withdraw(replica, exc)
            else:
                replica.reads.inc()
                return values, True
        self.primary_reads.inc()
        return await answer(self.primary, keys), False

    async def find_users_by_keys(self, keys: list[str]) -> list[Stored | None]:
        """The users of these email keys; a key a replica does not know is asked
        of the primary, so that a user just created is never reported missing."""
        found, on_replica = await self.read_from(queries.find_users_by_keys, keys)
        missing = [key for key, stored in zip(keys, found, strict=True) if stored is None]
        if not (on_replica and missing):
            return found
        self.primary_reads.inc()
        confirmed = dict(
            zip(missing, await queries.find_users_by_keys(self.primary, missing), strict=True)
        )
        return [
            confirmed[key] if stored is None else stored
            for key, stored in zip(keys, found, strict=True)
        ]

    async def find_users_by_handles(self, keys: list[str]) -> dict[str, User]:
        """As queries.find_users_by_handles; the keys a replica lacks are asked of the primary."""

        async def find(db: queries.Executor, _: list[None]) -> list[dict[str, User]]:
            return [await queries.find_users_by_handles(db, keys)]

        [found], on_replica = await self.read_from(find, [None])
        missing = [key for key in keys if key not in found]
        if not (on_replica and missing):
            return found
        self.primary_reads.inc()
        return found | await queries.find_users_by_handles(self.primary, missing)

    async def find_user(self, key: queries.UserKey) -> Stored | None:
        """A user by email key or id, confirmed on the primary when a replica has none."""

        async def find(db: queries.Executor, keys: list[queries.UserKey]) -> list[Stored | None]:
            return [await queries.find_user(db, key) for key in keys]

        [stored], on_replica = await self.read_from(find, [key])
        if stored is None and on_replica:
            self.primary_reads.inc()
            return await queries.find_user(self.primary, key)
        return stored

    def withdraw(self, replica: Replica, exc: BaseException) -> None:
        if replica.state == IN_USE:
            logger.warning(
                "replica %s failed a read (%r): not used until it answers", replica.address, exc
            )
        replica.state = DOWN
        self.in_use = [each for each in self.in_use if each is not replica]
        metrics.REPLICAS_IN_USE.set(len(self.in_use))

    async def watch(self) -> None:
        """Measure every `interval` seconds, for as long as the service runs."""
        while True:
            began = time.monotonic()
            try:
                await self.measure()
            except Exception:
                # Unmeasured replicas cannot be trusted: the primary serves every read.
                logger.exception("lag monitor failed; reading from the primary")
                self.in_use = []
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - began)))

    async def measure(self) -> None:
        """One turn: the primary's position first, then every replica's at once."""
        try:
            self.note(*await self.primary_probe.position(PRIMARY_POSITION))
        except Exception as exc:
            # No new sample: every replica's lag grows until the primary answers again.
            logger.debug("lag monitor: primary did not answer (%r)", exc)
        replayed = await asyncio.gather(
            *(replica.probe.position(REPLAYED_POSITION) for replica in self.replicas),
            return_exceptions=True,
        )
        now = time.monotonic()
        for replica, answer in zip(self.replicas, replayed, strict=True):
            if isinstance(answer, BaseException):
                self.judge(replica, DOWN, math.inf)
            elif answer[1] is None:
                self.judge(replica, NOT_A_STANDBY, math.inf)
            else:
                lag = now - self.caught_up_at(answer[1])
                self.judge(replica, IN_USE if lag <= self.max_lag else LAGGING, lag)
        self.in_use = [replica for replica in self.replicas if replica.state == IN_USE]
        metrics.REPLICAS_IN_USE.set(len(self.in_use))

    def note(self, asked_at: float, position: int | None) -> None:
        """Keep the primary's position, dropping what it makes obsolete."""
        if position is None:
            return
        samples = self.samples
        # An equal position is kept with its newest time only; a lower one is
        # a new primary's timeline, on which the higher ones never happened.
        while samples and samples[-1][1] >= position:
            samples.pop()
        samples.append((asked_at, position))
        while samples[0][0] < asked_at - SAMPLES_SECONDS:
            samples.popleft()

    def caught_up_at(self, replayed: int) -> float:
        """The newest time at which the primary was no further than `replayed`."""
        for asked_at, position in reversed(self.samples):
            if position <= replayed:
                return asked_at
        # Further behind than every sample kept, or no sample yet.
        return self.samples[0][0] if self.samples else -math.inf

    def judge(self, replica: Replica, state: State, lag: float) -> None:
        if state != replica.state:
            log = logger.info if state == IN_USE else logger.warning
            log("replica %s is %s (lag %.3f s)", replica.address, state, lag)
        replica.state = state
        replica.lag = lag
        replica.lag_gauge.set(lag)

    async def close(self) -> None:
        self.primary_probe.close()
        for replica in self.replicas:
            replica.probe.close()
        await asyncio.gather(*(close_pool(replica.pool) for replica in self.replicas))


async def open_replicas(settings: Settings, primary: Database) -> Replicas:
    """A pool for each DATABASE_READ_URLS entry, and their lags measured once.

    The pools open their connections as reads need them, so that a replica
    that is down at start delays nothing: it is only not used.
    """
    replicas = [
        Replica(url, await create_pool(settings, url, min_size=0), settings)
        for url in settings.database_read_urls
    ]
    chosen = Replicas(primary, replicas, settings)
    await chosen.measure()
    return chosen
