"""python -m bench.feed: the change feed's read rate, its delivery to waiting consumers,
and what idle long polls cost a worker."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import msgspec

from bench import consumers as consumers_section
from bench import machine, postgres, seed, servers
from bench.bulk import run_bulk
from bench.options import at_least
from bench.report import bullet_list, markdown_table
from bench.wrk import run_wrk

BENCH_DIR = Path(__file__).resolve().parent
DATABASE = "bench_feed"
BULK = 10_000  # users per POST /users/bulk that fills the feed
READ_LIMIT = 1000
STREAM_HEAD = (
    b"GET /users/changes?after=%s HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
)
POLL_HEAD = b"GET /users/changes?after=%s&wait=%d&limit=1000 HTTP/1.1\r\nHost: bench\r\n\r\n"
CREATE_HEAD = (
    b"POST /users HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n"
)
# The targets on this machine.
READ_RATE = 50_000  # changes/s
DELIVERY_P50_MS = 10.0
DELIVERY_P99_MS = 100.0
IDLE_MB = 50.0
WRITE_RATIO = 0.85  # of the writes' rate without the feed
WRITE_CONNECTIONS = 64  # wrk -c of POST /users, as python -m bench


class Options(msgspec.Struct, frozen=True, kw_only=True):
    duration: int
    changes: int
    rounds: int
    polls: int
    streams: int
    rate: int
    seconds: float
    idle: int
    out: Path
    smoke: bool


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.feed", description=__doc__)
    parser.add_argument(
        "--duration", type=at_least(1), help="seconds of each write measure (10; smoke 1)"
    )
    parser.add_argument("--changes", type=at_least(1), help="changes to read (100000; smoke 2000)")
    parser.add_argument("--rounds", type=at_least(1), help="rounds of each measure (5; smoke 1)")
    parser.add_argument("--polls", type=at_least(0), help="long-poll consumers (100; smoke 5)")
    parser.add_argument("--streams", type=at_least(0), help="event streams (100; smoke 5)")
    parser.add_argument(
        "--rate", type=at_least(1), help="creates/s while they wait (500; smoke 50)"
    )
    parser.add_argument(
        "--seconds", type=at_least(1), help="seconds of creates a round (10; smoke 1)"
    )
    parser.add_argument("--idle", type=at_least(1), help="idle long polls (1000; smoke 20)")
    parser.add_argument("--out", type=Path, help="the markdown file to write (bench/FEED.md)")
    parser.add_argument("--smoke", action="store_true", help="a quick run that checks the harness")
    args = parser.parse_args(argv)
    smoke: bool = args.smoke

    def given(value: int | None, full: int, quick: int) -> int:
        return value if value is not None else (quick if smoke else full)

    return Options(
        duration=given(args.duration, 10, 1),
        changes=given(args.changes, 100_000, 2_000),
        rounds=given(args.rounds, 5, 1),
        polls=given(args.polls, 100, 5),
        streams=given(args.streams, 100, 5),
        rate=given(args.rate, 500, 50),
        seconds=given(args.seconds, 10, 1),
        idle=given(args.idle, 1_000, 20),
        out=args.out
        or (Path(tempfile.mkdtemp(prefix="bench-feed-")) if smoke else BENCH_DIR) / "FEED.md",
        smoke=smoke,
    )


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def next_of(client: httpx.Client, after: str | None, limit: int = READ_LIMIT) -> tuple[int, str]:
    params: dict[str, str | int] = {"limit": limit, **({"after": after} if after else {})}
    response = client.get("/users/changes", params=params)
    response.raise_for_status()
    page = msgspec.json.decode(response.content)
    return len(page["changes"]), page["next"]


def fill(url: str, changes: int) -> None:
    """`changes` creates, by bulks of BULK users: a change each."""
    with httpx.Client(base_url=url, timeout=120) as client:
        for start in range(0, changes, BULK):
            users = [
                {"name": f"Reader {n}", "email": f"reader{n}@feed.example"}
                for n in range(start, min(changes, start + BULK))
            ]
            client.post("/users/bulk", json=users).raise_for_status()


def write_rates(urls: dict[str, str], duration: int, nonce: str) -> dict[tuple[str, str], float]:
    """POST /users req/s (wrk, as python -m bench) and bulk rows/s of the service
    with the feed and without it, taking turns: by (write, app)."""
    rates = {}
    for app in urls if nonce[-1] in "02468" else reversed(urls):
        created = run_wrk(
            urls[app], "create_user.lua", ("0", f"{nonce}{app}"),
            duration=duration, connections=WRITE_CONNECTIONS,
        )  # fmt: skip
        rates["POST /users req/s", app] = created.rps
    for app in urls if nonce[-1] in "13579" else reversed(urls):
        loaded = run_bulk(urls[app], duration=duration, nonce=f"{nonce}{app}")
        rates["POST /users/bulk rows/s", app] = loaded.rows_per_second
    return rates


def read_rate(url: str, changes: int) -> float:
    """Changes/s of one consumer paging through the whole feed with limit=1000,
    decoding each page, over one keep-alive connection."""
    with httpx.Client(base_url=url, timeout=60) as client:
        began = time.perf_counter()
        read, after = next_of(client, None)
        while True:
            count, after = next_of(client, after)
            if count == 0:
                break
            read += count
        seconds = time.perf_counter() - began
    assert read >= changes, f"read {read} of {changes} changes"
    return read / seconds


async def http_response(reader: asyncio.StreamReader) -> bytes:
    """The body of one HTTP/1.1 answer with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 2"), head
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    return await reader.readexactly(length)


class Delivery:
    """Creates at a steady rate, and when each waiting consumer saw each one."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.created: dict[str, float] = {}  # user id -> when its 201 arrived
        # (user id, when a consumer read it), by long polls and by streams
        self.polled: list[tuple[str, float]] = []
        self.streamed: list[tuple[str, float]] = []
        self.stopping = False

    async def long_poll(self, after: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            while not self.stopping:
                writer.write(POLL_HEAD % (after, 30))
                page = msgspec.json.decode(await http_response(reader))
                now = time.monotonic()
                self.polled += [(change["id"], now) for change in page["changes"]]
                after = page["next"].encode()
        finally:
            writer.close()

    async def stream(self, after: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(STREAM_HEAD % after)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            pending = b""
            while not self.stopping:
                # Chunked framing and all: it lies between events, and holds no id.
                pending += await reader.read(65536)
                now = time.monotonic()
                end = pending.rfind(b"\n\n")
                events, pending = pending[:end], pending[end + 2 :]
                start = 0
                while (found := events.find(b'"type":', start)) >= 0:
                    at = events.index(b'"id":"', found) + 6
                    self.streamed.append((events[at : at + 36].decode(), now))
                    start = at
        finally:
            writer.close()

    async def create(self, seconds: float, rate: int, nonce: str) -> None:
        """`rate` creates a second for `seconds`, each sent on time whatever the
        answers before it, over a few connections."""
        connections = [await asyncio.open_connection("127.0.0.1", self.port) for _ in range(8)]
        free = asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]()
        for connection in connections:
            free.put_nowait(connection)

        async def one(number: int) -> None:
            reader, writer = await free.get()
            body = b'{"name": "Waited", "email": "w%d.%s@feed.example"}' % (number, nonce.encode())
            writer.write(CREATE_HEAD % len(body) + body)
            user = msgspec.json.decode(await http_response(reader))
            self.created[user["id"]] = time.monotonic()
            free.put_nowait((reader, writer))

        loop = asyncio.get_running_loop()
        began = loop.time()
        sent = []
        for number in range(int(seconds * rate)):
            await asyncio.sleep(max(0.0, began + number / rate - loop.time()))
            sent.append(asyncio.create_task(one(number)))
        await asyncio.gather(*sent)
        for _, writer in connections:
            writer.close()


async def delivery(
    url: str, port: int, options: Options, nonce: str
) -> tuple[list[float], list[float]]:
    """Milliseconds from each 201 to each consumer reading the change it made:
    by long polls, and by streams."""
    async with httpx.AsyncClient(base_url=url) as client:
        after = (await client.get("/users/changes", params={"after": "now"})).json()["next"]
    run = Delivery(port)
    consumers = [asyncio.create_task(run.long_poll(after.encode())) for _ in range(options.polls)]
    consumers += [asyncio.create_task(run.stream(after.encode())) for _ in range(options.streams)]
    await asyncio.sleep(1)  # every consumer waiting
    await run.create(options.seconds, options.rate, nonce)
    await asyncio.sleep(1)  # the last changes delivered
    run.stopping = True
    for consumer in consumers:
        consumer.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    found = []
    for seen, consumers_of_kind in ((run.polled, options.polls), (run.streamed, options.streams)):
        delivered = [(at - run.created[id]) * 1000 for id, at in seen if id in run.created]
        expected = len(run.created) * consumers_of_kind
        assert len(delivered) == expected, f"{len(delivered)} deliveries of {expected}"
        found.append(delivered)
    return found[0], found[1]


async def idle_cost(service: servers.Server, database_url: str, polls: int) -> tuple[float, int]:
    """MB more RSS of the worker, and database connections more, with `polls`
    long polls waiting."""
    url, port = service.url, service.port
    async with httpx.AsyncClient(base_url=url) as client:
        after = (await client.get("/users/changes", params={"after": "now"})).json()["next"]
    connection_count = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    conn = await asyncpg.connect(database_url)
    try:
        await asyncio.sleep(1)
        rss, backends = servers.worker_rss(service), await conn.fetchval(connection_count)
        opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(polls)]
        for _, writer in opened:
            writer.write(POLL_HEAD % (after.encode(), 60))
        await asyncio.sleep(3)
        grown = (servers.worker_rss(service) - rss) / 1e6
        more = await conn.fetchval(connection_count) - backends
        for _, writer in opened:
            writer.close()
    finally:
        await conn.close()
    return grown, more


class Figures(msgspec.Struct, kw_only=True):
    read_rates: list[float]
    writes: list[dict[tuple[str, str], float]]  # each round's, by (write, app)
    delivery_p50: list[float]
    delivery_p99: list[float]
    kinds_p99: list[tuple[float, float]]
    deliveries: int
    idle_mb: float
    idle_connections: int
    postgres: str


def measure(options: Options, logs: Path) -> Figures:
    with postgres.database_url() as server_url:
        url = seed.database_url(server_url, DATABASE)
        asyncio.run(seed.recreate_databases(server_url, [DATABASE]))
        seed.migrate_service(url)
        apps = ["service", "service-nofeed"]
        with servers.running(
            apps, database_urls={"service": url}, workers=1, log_dir=logs
        ) as running:
            service = running["service"]
            print(f"filling the feed with {options.changes:,} changes", flush=True)
            fill(service.url, options.changes)
            read_rates, p50s, p99s, deliveries = [], [], [], 0
            kinds: list[tuple[float, float]] = []  # p99 of long polls, of streams
            for round_number in range(1, options.rounds + 1):
                read_rates.append(read_rate(service.url, options.changes))
                polled, streamed = asyncio.run(
                    delivery(service.url, service.port, options, f"r{round_number}")
                )
                delivered = polled + streamed
                deliveries += len(delivered)
                p50s.append(percentile(delivered, 0.5))
                p99s.append(percentile(delivered, 0.99))
                kinds.append((percentile(polled, 0.99), percentile(streamed, 0.99)))
                print(
                    f"  round {round_number}: read {read_rates[-1]:,.0f} changes/s; delivery "
                    f"p50 {p50s[-1]:.1f} ms, p99 {p99s[-1]:.1f} ms (long polls "
                    f"{kinds[-1][0]:.1f} ms, streams {kinds[-1][1]:.1f} ms)",
                    flush=True,
                )
            idle_mb, idle_connections = asyncio.run(idle_cost(service, url, options.idle))
            # Last, as they add changes by the thousand.
            writes = []
            for round_number in range(1, options.rounds + 1):
                urls = {app: running[app].url for app in apps}
                writes.append(write_rates(urls, options.duration, f"w{round_number}"))
                print(
                    f"  round {round_number}: "
                    + ", ".join(f"{w} {app} {rate:,.0f}" for (w, app), rate in writes[-1].items()),
                    flush=True,
                )
        version = asyncio.run(seed.server_version(url))
    return Figures(
        read_rates=read_rates,
        writes=writes,
        delivery_p50=p50s,
        delivery_p99=p99s,
        kinds_p99=kinds,
        deliveries=deliveries,
        idle_mb=idle_mb,
        idle_connections=idle_connections,
        postgres=version,
    )


def verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def write_report(options: Options, argv: Sequence[str], figures: Figures) -> None:
    read = statistics.median(figures.read_rates)
    p50 = statistics.median(figures.delivery_p50)
    p99 = statistics.median(figures.delivery_p99)
    command = shlex.join(["python", "-m", "bench.feed", *argv])
    consumers = f"{options.polls} long polls and {options.streams} streams"
    rows = [
        (
            f"read rate, `limit={READ_LIMIT}` (at least {READ_RATE:,} changes/s)",
            f"{read:,.0f} changes/s",
            verdict(read >= READ_RATE),
        ),
        (
            f"delivery p50 (at most {DELIVERY_P50_MS:.0f} ms)",
            f"{p50:.1f} ms",
            verdict(p50 <= DELIVERY_P50_MS),
        ),
        (
            f"delivery p99 (at most {DELIVERY_P99_MS:.0f} ms)",
            f"{p99:.1f} ms",
            verdict(p99 <= DELIVERY_P99_MS),
        ),
        (
            f"{options.idle:,} idle long polls: RSS (at most {IDLE_MB:.0f} MB more)",
            f"{figures.idle_mb:.1f} MB",
            verdict(figures.idle_mb <= IDLE_MB),
        ),
        (
            f"{options.idle:,} idle long polls: database connections (none more)",
            f"{figures.idle_connections}",
            verdict(figures.idle_connections <= 0),
        ),
    ]
    for index, write in enumerate(("POST /users req/s", "POST /users/bulk rows/s")):
        with_feed = statistics.median(rates[write, "service"] for rates in figures.writes)
        without = statistics.median(rates[write, "service-nofeed"] for rates in figures.writes)
        rows.insert(
            index,
            (
                f"{write} with the feed, against without (at least {WRITE_RATIO}x)",
                f"{with_feed / without:.2f}x ({with_feed:,.0f} vs {without:,.0f})",
                verdict(with_feed / without >= WRITE_RATIO),
            ),
        )
    lines = [
        "# Change feed benchmark",
        "",
        f"`{command}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        + (" (smoke run: the numbers mean nothing)" if options.smoke else ""),
        "",
        "One service worker (`python -m service`'s uvicorn flags), its database on the same "
        "machine. Each figure is the median of "
        f"{options.rounds} rounds.",
        "",
        "- **Write cost.** `POST /users` from wrk (`-c 64`, `create_user.lua`, as "
        "`python -m bench`) and bulk loads of 10,000 users (`bulk.py`), each "
        f"{options.duration} s, against the service and against the same service on "
        "connections in PostgreSQL's `replica` session role, where the feed's triggers do not "
        "fire (`service-nofeed`): the writes as they cost before the feed. Both on the same "
        "table, taking turns, after the measures below.",
        f"- **Read rate.** The feed holds {options.changes:,} changes, made by "
        f"`POST /users/bulk` of {BULK:,} users each. One consumer pages through all of them "
        f"with `limit={READ_LIMIT}` over one keep-alive connection, decoding every page.",
        f"- **Delivery.** {consumers} wait at the end of the feed (`wait=30`, and "
        f"`Accept: text/event-stream`), while {options.rate} `POST /users` a second go "
        f"out on schedule for {options.seconds:.0f} s. A delivery is one consumer reading "
        "one change; its time runs from the 201 of the create reaching the writer to the "
        "consumer reading the change, both on this machine's monotonic clock, so it is "
        "negative when the change arrives first. "
        f"{figures.deliveries:,} deliveries in all.",
        f"- **Idle consumers.** {options.idle:,} long polls (`wait=60`) opened at once on the "
        "worker: its RSS, and the database's connections, 3 s later against before.",
        "",
        markdown_table(("target", "measured", ""), rows),
        "",
        "Each round:",
        "",
        markdown_table(
            ("round", "read rate", "delivery p50", "p99", "p99 of long polls", "of streams"),
            [
                (str(n), f"{rate:,.0f} changes/s", *(f"{ms:.1f} ms" for ms in times))
                for n, (rate, *times) in enumerate(
                    zip(
                        figures.read_rates,
                        figures.delivery_p50,
                        figures.delivery_p99,
                        *zip(*figures.kinds_p99, strict=True),
                        strict=True,
                    ),
                    start=1,
                )
            ],
        ),
        "",
        "## Machine",
        "",
        bullet_list(machine.describe_machine()),
        "",
        bullet_list(machine.describe_versions(figures.postgres)),
        "",
    ]
    # python -m bench.consumers's section, at the end, is its own to write.
    text = options.out.read_text() if options.out.exists() else ""
    kept = text.partition(consumers_section.MARKER)
    options.out.write_text("\n".join(lines) + (f"\n{kept[1]}{kept[2]}" if kept[1] else ""))


def main(argv: Sequence[str]) -> int:
    options = parse_options(argv)
    with tempfile.TemporaryDirectory(prefix="bench-feed-logs-") as logs:
        figures = measure(options, Path(logs))
    write_report(options, argv, figures)
    print(f"Wrote {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
