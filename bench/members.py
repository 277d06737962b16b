"""python -m bench.members: adding and removing one member, and the membership check, on a
group of 10 and on a group of 10,000 members, beside GET /users/{email}."""

from __future__ import annotations

import argparse
import asyncio
import http.client
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec

from bench import postgres, seed, servers
from bench.options import at_least
from bench.search import percentile

DATABASE = "bench_members"
BATCH = 1_000  # the most handles one call takes


class Options(msgspec.Struct, frozen=True, kw_only=True):
    big: int
    small: int
    requests: int


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.members", description=__doc__)
    parser.add_argument("--big", type=at_least(1), help="members of the big group (10000)")
    parser.add_argument("--requests", type=at_least(1), help="changes timed per group (1000)")
    parser.add_argument("--smoke", action="store_true", help="a quick run that checks the harness")
    args = parser.parse_args(argv)
    smoke: bool = args.smoke
    return Options(
        big=args.big or (100 if smoke else 10_000),
        small=10,
        requests=args.requests or (10 if smoke else 1_000),
    )


def call(conn: http.client.HTTPConnection, method: str, path: str, body: object = None) -> float:
    """Milliseconds from sending the request to reading its answer; a 4xx or 5xx raises."""
    data = None if body is None else msgspec.json.encode(body)
    headers = {} if data is None else {"content-type": "application/json"}
    started = time.perf_counter()
    conn.request(method, path, data, headers)
    response = conn.getresponse()
    content = response.read()
    elapsed = (time.perf_counter() - started) * 1000
    if response.status >= 400:
        raise RuntimeError(f"{method} {path}: {response.status} {content!r}")
    return elapsed


def make_group(conn: http.client.HTTPConnection, name: str, members: Sequence[str]) -> str:
    conn.request("POST", "/groups", msgspec.json.encode({"name": name}))
    group: str = msgspec.json.decode(conn.getresponse().read())["id"]
    for start in range(0, len(members), BATCH):
        call(conn, "POST", f"/groups/{group}/members", {"add": members[start : start + BATCH]})
    return group


def time_groups(port: int, options: Options) -> dict[str, list[float]]:
    """Each request one at a time over one keep-alive connection, the groups in turn: add a
    user who is not a member, check a member, remove the user again (so each group keeps
    its size), and look a user up."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    groups = {
        f"group of {size:,}": make_group(
            conn, f"g{size}", [seed.seeded_email(n) for n in range(size)]
        )
        for size in (options.small, options.big)
    }
    times: dict[str, list[float]] = {}
    warmup = 1 if options.requests < 100 else 50
    for number in range(warmup + options.requests):
        outsider = seed.seeded_email(options.big + number)
        member = seed.seeded_email(number % options.small)
        for name, group in groups.items():
            timed = {
                f"add one, {name}": call(
                    conn, "POST", f"/groups/{group}/members", {"add": [outsider]}
                ),
                f"check, {name}": call(conn, "GET", f"/groups/{group}/members/{member}"),
                f"remove one, {name}": call(
                    conn, "POST", f"/groups/{group}/members", {"remove": [outsider]}
                ),
            }
            for key, elapsed in timed.items():
                if number >= warmup:
                    times.setdefault(key, []).append(elapsed)
        elapsed = call(conn, "GET", f"/users/{member}")
        if number >= warmup:
            times.setdefault("GET /users/{email}", []).append(elapsed)
    conn.close()
    return times


def main(argv: Sequence[str]) -> int:
    options = parse_options(argv)
    with (
        tempfile.TemporaryDirectory(prefix="bench-members-logs-") as logs,
        postgres.database_url() as server_url,
    ):
        url = seed.database_url(server_url, DATABASE)
        asyncio.run(seed.recreate_databases(server_url, [DATABASE]))
        seed.migrate_service(url)
        asyncio.run(seed.seed_service(url, options.big + options.requests + 100))
        with servers.running(
            ["service"], database_urls={"service": url}, workers=1, log_dir=Path(logs)
        ) as running:
            times = time_groups(running["service"].port, options)
    for name, values in sorted(times.items()):
        print(
            f"  {name}: median {statistics.median(values):.2f} ms, "
            f"p99 {percentile(values, 0.99):.2f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
