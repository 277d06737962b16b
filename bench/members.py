"""python -m bench.members: groups at scale. Among 1,000,000 users, a group of 100,000
members is filled through the API 1,000 users a call (memberships a second); then, one
request at a time, one member is added and removed (natively and by SCIM PATCH) and the
membership check made, on that group and on a group of 10, beside GET /users/{email};
then GET /scim/v2/Groups/{id} of the big group, all its members shown: its time, size and
the worker's RSS; last, wrk loads the membership check and GET /users/{email} in
interleaved rounds (rates and p99s)."""

from __future__ import annotations

import argparse
import asyncio
import http.client
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec

from bench import postgres, seed, servers
from bench.options import at_least
from bench.search import percentile
from bench.wrk import run_wrk

DATABASE = "bench_members"
BATCH = 1_000  # the most handles one call takes
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


class Options(msgspec.Struct, frozen=True, kw_only=True):
    users: int
    big: int
    small: int
    requests: int
    rounds: int
    duration: int


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.members", description=__doc__)
    parser.add_argument("--users", type=at_least(1), help="users seeded (1000000)")
    parser.add_argument("--big", type=at_least(1), help="members of the big group (100000)")
    parser.add_argument("--requests", type=at_least(1), help="changes timed per group (1000)")
    parser.add_argument("--rounds", type=at_least(1), help="wrk rounds of each (5)")
    parser.add_argument("--duration", type=at_least(1), help="seconds a wrk round (10)")
    parser.add_argument("--smoke", action="store_true", help="a quick run that checks the harness")
    args = parser.parse_args(argv)
    smoke: bool = args.smoke
    big = args.big or (100 if smoke else 100_000)
    requests = args.requests or (10 if smoke else 1_000)
    return Options(
        # Outsiders for the adds follow the members: at least that many users.
        users=max(args.users or (1_000 if smoke else 1_000_000), big + requests + 100),
        big=big,
        small=10,
        requests=requests,
        rounds=args.rounds or (1 if smoke else 5),
        duration=args.duration or (1 if smoke else 10),
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


def make_group(
    conn: http.client.HTTPConnection, name: str, members: Sequence[str]
) -> tuple[str, list[float]]:
    """The new group's id, filled with `members` a call of BATCH at a time, and each
    call's memberships a second."""
    conn.request("POST", "/groups", msgspec.json.encode({"name": name}))
    group: str = msgspec.json.decode(conn.getresponse().read())["id"]
    rates = []
    for start in range(0, len(members), BATCH):
        batch = members[start : start + BATCH]
        elapsed = call(conn, "POST", f"/groups/{group}/members", {"add": batch})
        rates.append(len(batch) / elapsed * 1000)
    return group, rates


def user_id(conn: http.client.HTTPConnection, email: str) -> str:
    conn.request("GET", f"/users/{email}")
    found: str = msgspec.json.decode(conn.getresponse().read())["id"]
    return found


def scim_patch(*operations: object) -> dict[str, object]:
    return {"schemas": [PATCH_OP], "Operations": list(operations)}


def time_groups(
    conn: http.client.HTTPConnection, groups: dict[str, str], options: Options
) -> dict[str, list[float]]:
    """Each request one at a time over one keep-alive connection, the groups in turn: add a
    user who is not a member, check a member, remove the user again (so each group keeps
    its size), the same add and remove by SCIM PATCH (as Entra adds, as Okta removes),
    and look a member of both up: natively, and by SCIM with its groups and without."""
    times: dict[str, list[float]] = {}
    warmup = 1 if options.requests < 100 else 50
    for number in range(warmup + options.requests):
        outsider = seed.seeded_email(options.big + number)
        outsider_id = user_id(conn, outsider)
        member = seed.seeded_email(number % options.small)
        add = {"op": "Add", "path": "members", "value": [{"$ref": None, "value": outsider_id}]}
        remove = {"op": "remove", "path": f'members[value eq "{outsider_id}"]'}
        for name, group in groups.items():
            scim = f"/scim/v2/Groups/{group}"
            timed = {
                f"add one, {name}": call(
                    conn, "POST", f"/groups/{group}/members", {"add": [outsider]}
                ),
                f"check, {name}": call(conn, "GET", f"/groups/{group}/members/{member}"),
                f"remove one, {name}": call(
                    conn, "POST", f"/groups/{group}/members", {"remove": [outsider]}
                ),
                f"SCIM add one, {name}": call(conn, "PATCH", scim, scim_patch(add)),
                f"SCIM remove one, {name}": call(conn, "PATCH", scim, scim_patch(remove)),
            }
            for key, elapsed in timed.items():
                if number >= warmup:
                    times.setdefault(key, []).append(elapsed)
        member_id = user_id(conn, member)  # in both groups
        timed = {
            "GET /users/{email}": call(conn, "GET", f"/users/{member}"),
            "SCIM GET /Users/{id}": call(conn, "GET", f"/scim/v2/Users/{member_id}"),
            "SCIM GET /Users/{id}, groups excluded": call(
                conn, "GET", f"/scim/v2/Users/{member_id}?excludedAttributes=groups"
            ),
        }
        for key, elapsed in timed.items():
            if number >= warmup:
                times.setdefault(key, []).append(elapsed)
    return times


class FullRead(msgspec.Struct, frozen=True, kw_only=True):
    """GET /scim/v2/Groups/{id} of the big group, all its members shown, a few times."""

    times: list[float]  # ms each
    members: int
    size: int  # bytes of the answer
    rss_before: int  # the worker's resident bytes before the first read
    rss_peak: int  # the most sampled while they ran
    rss_after: int


def read_whole_group(
    conn: http.client.HTTPConnection, server: servers.Server, group: str, reads: int
) -> FullRead:
    """The reads one at a time, the worker's RSS sampled every 5 ms meanwhile."""
    rss_before = servers.worker_rss(server)
    peak = [rss_before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak.append(servers.worker_rss(server))

    sampler = threading.Thread(target=sample)
    sampler.start()
    times, members, size = [], 0, 0
    try:
        for _ in range(reads):
            started = time.perf_counter()
            conn.request("GET", f"/scim/v2/Groups/{group}")
            response = conn.getresponse()
            body = response.read()
            times.append((time.perf_counter() - started) * 1000)
            if response.status != 200:
                raise RuntimeError(f"GET /scim/v2/Groups/{group}: {response.status} {body!r}")
            members, size = len(msgspec.json.decode(body)["members"]), len(body)
    finally:
        done.set()
        sampler.join()
    return FullRead(
        times=times,
        members=members,
        size=size,
        rss_before=rss_before,
        rss_peak=max(peak),
        rss_after=servers.worker_rss(server),
    )


def load(url: str, group: str, options: Options) -> dict[str, tuple[list[float], list[float]]]:
    """wrk -t1 -c64 as python -m bench runs it, in interleaved rounds: GET /users/{email}
    and the membership check, each on a random one of the big group's members. Each
    kind's rates (req/s) and p99s (ms), a round each."""
    kinds = {
        "GET /users/{email}": ("get_user.lua", ()),
        "membership check": ("member_check.lua", (group, str(options.big))),
    }
    found: dict[str, tuple[list[float], list[float]]] = {kind: ([], []) for kind in kinds}
    for number in range(options.rounds):
        for kind, (script, args) in kinds.items() if number % 2 == 0 else reversed(kinds.items()):
            summary = run_wrk(
                url, script, (str(options.big), "-", *args),
                duration=options.duration, connections=64,
            )  # fmt: skip
            if summary.non_2xx or summary.connect_errors or summary.read_errors:
                raise RuntimeError(f"{kind}: {summary}")
            found[kind][0].append(summary.requests / summary.duration_us * 1e6)
            found[kind][1].append(summary.p99_us / 1000)
    return found


def main(argv: Sequence[str]) -> int:
    options = parse_options(argv)
    with (
        tempfile.TemporaryDirectory(prefix="bench-members-logs-") as logs,
        postgres.database_url() as server_url,
    ):
        url = seed.database_url(server_url, DATABASE)
        asyncio.run(seed.recreate_databases(server_url, [DATABASE]))
        seed.migrate_service(url)
        asyncio.run(seed.seed_service(url, options.users))
        with servers.running(
            ["service"], database_urls={"service": url}, workers=1, log_dir=Path(logs)
        ) as running:
            server = running["service"]
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            groups, fills = {}, {}
            for size in (options.small, options.big):
                name = f"group of {size:,}"
                members = [seed.seeded_email(n) for n in range(size)]
                groups[name], fills[name] = make_group(conn, f"g{size}", members)
            times = time_groups(conn, groups, options)
            whole = read_whole_group(
                conn, server, groups[f"group of {options.big:,}"], 3 if options.rounds == 1 else 10
            )
            conn.close()
            loads = load(server.url, groups[f"group of {options.big:,}"], options)
    rates = fills[f"group of {options.big:,}"]
    print(
        f"{options.users:,} users; filling the group of {options.big:,}, {BATCH:,} a call: "
        f"median {statistics.median(rates):,.0f} memberships/s, lowest {min(rates):,.0f}/s"
    )
    print("One request at a time:")
    for name, values in sorted(times.items()):
        print(
            f"  {name}: median {statistics.median(values):.2f} ms, "
            f"p99 {percentile(values, 0.99):.2f} ms"
        )
    mib = 1024 * 1024
    print(
        f"GET /scim/v2/Groups/{{id}}, all {whole.members:,} members, {len(whole.times)} reads: "
        f"median {statistics.median(whole.times):.1f} ms, slowest {max(whole.times):.1f} ms, "
        f"{whole.size / mib:.1f} MiB; worker RSS {whole.rss_before / mib:.0f} MiB before, "
        f"{whole.rss_peak / mib:.0f} MiB at most, {whole.rss_after / mib:.0f} MiB after"
    )
    print(f"wrk -t1 -c64, {options.rounds} interleaved rounds of {options.duration} s, medians:")
    for kind, (rates, p99s) in loads.items():
        print(
            f"  {kind}: {statistics.median(rates):,.0f} req/s, p99 {statistics.median(p99s):.2f} ms"
            f" (rounds: {' '.join(f'{rate:,.0f}' for rate in rates)})"
        )
    (get_rates, get_p99s), (check_rates, check_p99s) = loads.values()
    rate = statistics.median(check_rates) / statistics.median(get_rates)
    p99 = statistics.median(check_p99s) / statistics.median(get_p99s)
    print(f"  check vs GET: rate {rate:.2f}x, p99 {p99:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
