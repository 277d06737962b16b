"""python -m bench.trigram: what each way of indexing q= costs creates, and gives searches."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import msgspec

from bench import machine, postgres, seed
from bench.options import at_least
from bench.report import bullet_list, markdown_table
from bench.search import FRAGMENTS, LIMIT, SEARCH_P99_MS, fill, percentile
from service import queries
from service.database import Database
from service.schemas import email_key

BENCH_DIR = Path(__file__).resolve().parent
DATABASE = "bench_trigram"
INDEX = "users_search_trgm"
# schema.sql's index, and the alternatives the issue names: other GIN
# settings, GiST, and narrower expressions. Each replaces it in turn.
EXPRESSION = """lower((email || E'\\x01' || name) COLLATE "C")"""
VARIANTS = {
    "GIN, fastupdate on, 4 MB pending list (schema.sql)": f"gin ({EXPRESSION} gin_trgm_ops)",
    "GIN, fastupdate off": f"gin ({EXPRESSION} gin_trgm_ops) WITH (fastupdate = off)",
    "GIN, 64 MB pending list": f"gin ({EXPRESSION} gin_trgm_ops)"
    " WITH (gin_pending_list_limit = 65536)",
    "GiST, 12-byte signature (default)": f"gist ({EXPRESSION} gist_trgm_ops)",
    "GiST, 64-byte signature": f"gist ({EXPRESSION} gist_trgm_ops(siglen = 64))",
    # Narrower: the email alone. q= would no longer find names through it.
    "GIN on the email alone": """gin (lower(email COLLATE "C") gin_trgm_ops)""",
    "no trigram index": "",
}
# The service's coalesced creates under load hold a few users a statement.
ROWS_PER_INSERT = 2


class Options(msgspec.Struct, frozen=True, kw_only=True):
    users: int
    seconds: int
    rounds: int
    clients: int
    searches: int
    out: Path
    smoke: bool


class Measured(msgspec.Struct, frozen=True, kw_only=True):
    """One index's medians over the rounds."""

    variant: str
    build_seconds: float
    index_mb: float
    rows_per_second: float
    insert_p50_ms: float
    insert_p99_ms: float
    # By fragment: the search's median and p99 in ms.
    searches: dict[str, tuple[float, float]]


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.trigram", description=__doc__)
    parser.add_argument("--users", type=at_least(1), help="users to seed (1000000; smoke 2000)")
    parser.add_argument("--seconds", type=at_least(1), help="seconds of creates (15; smoke 1)")
    parser.add_argument("--rounds", type=at_least(1), help="rounds of every index (3; smoke 1)")
    parser.add_argument("--clients", type=at_least(1), default=8, help="connections creating (8)")
    parser.add_argument("--searches", type=at_least(1), help="timed searches a q (30; smoke 3)")
    parser.add_argument("--out", type=Path, help="the markdown file to write (bench/TRIGRAM.md)")
    parser.add_argument("--smoke", action="store_true", help="a quick run that checks the harness")
    args = parser.parse_args(argv)
    smoke: bool = args.smoke
    return Options(
        users=args.users or (2_000 if smoke else 1_000_000),
        seconds=args.seconds or (1 if smoke else 15),
        rounds=args.rounds or (1 if smoke else 3),
        clients=args.clients,
        searches=args.searches or (3 if smoke else 30),
        out=args.out or (Path("/dev/null") if smoke else BENCH_DIR / "TRIGRAM.md"),
        smoke=smoke,
    )


async def replace_index(conn: asyncpg.Connection, using: str) -> tuple[float, float]:
    """The index as `using` says, or none; the seconds its build took and its size in MB."""
    await conn.execute(f"DROP INDEX IF EXISTS {INDEX}")
    if not using:
        return 0.0, 0.0
    started = time.perf_counter()
    await conn.execute(f"CREATE INDEX {INDEX} ON users USING {using}")
    built = time.perf_counter() - started
    await conn.execute(f"ALTER INDEX {INDEX} ALTER COLUMN 1 SET STATISTICS 1000")
    await conn.execute(seed.ANALYZE_USERS)
    size: int = await conn.fetchval(f"SELECT pg_relation_size('{INDEX}')")
    return built, size / 1e6


async def create_for(url: str, seconds: float, nonce: str) -> list[float]:
    """Creates of ROWS_PER_INSERT new users a statement, by the service's INSERT, for
    `seconds`; each statement's time."""
    conn = await asyncpg.connect(url)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    try:
        while (started := time.perf_counter()) < deadline:
            n = len(times)
            emails = [f"trgm-{nonce}-{n}-{row}@mail.example.org" for row in range(ROWS_PER_INSERT)]
            names = [f"Bench Person {n}"] * ROWS_PER_INSERT
            await conn.fetch(
                queries.INSERT_EACH,
                names,
                emails,
                ["active"] * ROWS_PER_INSERT,
                ["{}"] * ROWS_PER_INSERT,
                [None] * ROWS_PER_INSERT,  # actor and request_id: an open service's
                [None] * ROWS_PER_INSERT,
            )
            times.append(time.perf_counter() - started)
    finally:
        await conn.close()
    return times


async def time_searches(url: str, count: int) -> dict[str, tuple[float, float]]:
    """Each fragment's first page as the service searches, one at a time: median and p99 ms."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
    db = Database(pool, 10.0)
    samples: dict[str, list[float]] = {fragment: [] for fragment in FRAGMENTS}
    try:
        for round_number in range(count + 1):  # the first round warms up
            for fragment in FRAGMENTS:
                filters = queries.Filters(email_key(fragment), None, None)
                started = time.perf_counter()
                async with queries.searching(db) as conn:
                    await queries.search_users(conn, filters, after=None, limit=LIMIT, offset=0)
                if round_number:
                    samples[fragment].append((time.perf_counter() - started) * 1000)
    finally:
        await pool.close()
    return {
        fragment: (statistics.median(values), percentile(values, 0.99))
        for fragment, values in samples.items()
    }


class Round(msgspec.Struct, frozen=True, kw_only=True):
    build_seconds: float
    index_mb: float
    rows_per_second: float
    insert_p50_ms: float
    insert_p99_ms: float


async def measure_round(url: str, using: str, options: Options) -> Round:
    """Build the index, then create users for options.seconds, and delete them again."""
    conn = await asyncpg.connect(url)
    try:
        build_seconds, index_mb = await replace_index(conn, using)
        nonce = secrets.token_hex(4)
        runs = [
            create_for(url, options.seconds, f"{nonce}-{client}")
            for client in range(options.clients)
        ]
        times = [t for run in await asyncio.gather(*runs) for t in run]
        # The next index starts from the same users.
        await conn.execute("DELETE FROM users WHERE email LIKE 'trgm-%'")
        await conn.execute("VACUUM ANALYZE users")
    finally:
        await conn.close()
    return Round(
        build_seconds=build_seconds,
        index_mb=index_mb,
        rows_per_second=len(times) * ROWS_PER_INSERT / options.seconds,
        insert_p50_ms=statistics.median(times) * 1000,
        insert_p99_ms=percentile(times, 0.99) * 1000,
    )


async def measure(url: str, options: Options) -> list[Measured]:
    """Every index in turn each round, A B C A B C, then each index's searches."""
    rounds: dict[str, list[Round]] = {variant: [] for variant in VARIANTS}
    for round_number in range(1, options.rounds + 1):
        for variant, using in VARIANTS.items():
            measured = await measure_round(url, using, options)
            rounds[variant].append(measured)
            print(
                f"{variant}, round {round_number}: built in {measured.build_seconds:.1f} s,"
                f" {measured.rows_per_second:,.0f} rows/s, insert p50"
                f" {measured.insert_p50_ms:.2f} ms, p99 {measured.insert_p99_ms:.2f} ms",
                flush=True,
            )
    results = []
    for variant, using in VARIANTS.items():
        conn = await asyncpg.connect(url)
        try:
            await replace_index(conn, using)
        finally:
            await conn.close()
        searches = await time_searches(url, options.searches)
        print(f"{variant}: worst search p99 {max(p99 for _, p99 in searches.values()):.1f} ms")
        taken = rounds[variant]
        results.append(
            Measured(
                variant=variant,
                build_seconds=statistics.median(r.build_seconds for r in taken),
                index_mb=statistics.median(r.index_mb for r in taken),
                rows_per_second=statistics.median(r.rows_per_second for r in taken),
                insert_p50_ms=statistics.median(r.insert_p50_ms for r in taken),
                insert_p99_ms=statistics.median(r.insert_p99_ms for r in taken),
                searches=searches,
            )
        )
    return results


def write_report(
    options: Options, argv: Sequence[str], results: list[Measured], version: str
) -> None:
    base = results[0]
    writes = markdown_table(
        ["index", "build", "size", "rows/s", "vs schema.sql", "insert p50", "insert p99"],
        [
            [
                f"{result.variant}",
                f"{result.build_seconds:.1f} s",
                f"{result.index_mb:.0f} MB",
                f"{result.rows_per_second:,.0f}",
                f"{result.rows_per_second / base.rows_per_second:.2f}x",
                f"{result.insert_p50_ms:.2f} ms",
                f"{result.insert_p99_ms:.2f} ms",
            ]
            for result in results
        ],
    )
    searches = markdown_table(
        ["index", *(f"`{fragment}`" for fragment in FRAGMENTS), f"all ≤ {SEARCH_P99_MS:g} ms"],
        [
            [
                result.variant,
                *(
                    f"{median:.1f} / {p99:.1f}"
                    for median, p99 in (result.searches[fragment] for fragment in FRAGMENTS)
                ),
                "yes" if all(p99 <= SEARCH_P99_MS for _, p99 in result.searches.values()) else "no",
            ]
            for result in results
        ],
    )
    command = shlex.join(["python", "-m", "bench.trigram", *argv])
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    options.out.write_text(f"""# The search index's write cost

`{command}`, {when}, PostgreSQL {version}.

{options.users:,} users from `bench/people.py` (as `python -m bench.search` seeds them). Each
way of indexing q= replaces `{INDEX}` in turn, {options.rounds} rounds of all of them in turn
(A B C A B C), and the tables give the medians of the rounds. In each round, {options.clients}
connections run the service's `INSERT` of {ROWS_PER_INSERT} new users a statement, as its
coalesced creates do, for {options.seconds} s; the created users are then deleted and the table
vacuumed. After the rounds, each index is built again and the q= searches of `bench/SEARCH.md`
run one at a time, {options.searches} times each after a warm-up, through the service's own
search code (`queries.searching`, `queries.search_users`), timed in-process: no HTTP, which adds
about 1 ms.

## Creates

{writes}

## Searches, median / p99 in ms

{searches}

The search target of `bench/SEARCH.md` is a p99 of at most {SEARCH_P99_MS:g} ms for each q.
"GIN on the email alone" cannot find users by name: q= would lose half of what it searches.

## Machine

{bullet_list(machine.describe_machine())}
""")


def main(argv: Sequence[str]) -> int:
    options = parse_options(argv)
    with postgres.database_url() as server_url:
        url = seed.database_url(server_url, DATABASE)
        asyncio.run(seed.recreate_databases(server_url, [DATABASE]))
        seed.migrate_service(url)
        print(f"seeding {options.users:,} users", flush=True)
        asyncio.run(fill(url, options.users))
        version = asyncio.run(seed.server_version(url))
        results = asyncio.run(measure(url, options))
    write_report(options, argv, results, version)
    print(f"Wrote {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
