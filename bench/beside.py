"""python -m bench.beside: the service's core rates, this checkout beside other commits,
in interleaved rounds of one run: a change's effect is a ratio measured side by side."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shlex
import signal
import statistics
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from bench import checkouts, machine, postgres, seed, servers
from bench.options import at_least
from bench.report import markdown_table
from bench.scenarios import SCENARIOS, Scenario, Variant
from bench.wrk import run_wrk, wrk_binary

BENCH_DIR = Path(__file__).resolve().parent
# The scenarios of python -m bench that every change must keep, each as the service gets it.
KEYS = ("get", "lookup", "create")
# python -m bench's wrk -c (its --connections), where the scenario names none of its own.
CONNECTIONS = 64
# The team's rule: lookups and creates within 5% of the previous commit, measured beside it.
RULED = ("lookup", "create")
FLOOR = 0.95
WARMUP_SECONDS = 2


class Subject(msgspec.Struct, frozen=True, kw_only=True):
    scenario: Scenario
    variant: Variant


SUBJECTS = {
    scenario.key: Subject(
        scenario=scenario,
        variant=next(v for v in scenario.variants if v.label == scenario.subject),
    )
    for scenario in SCENARIOS
    if scenario.key in KEYS
}


class Options(msgspec.Struct, frozen=True, kw_only=True):
    revs: tuple[str, ...]
    rounds: int
    seconds: int
    users: int
    warmup: int
    out: Path
    smoke: bool


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.beside", description=__doc__)
    parser.add_argument(
        "--rev", action="append", required=True, help="a commit to run beside this checkout"
    )
    parser.add_argument("--rounds", type=at_least(1), help="rounds (5; smoke 1)")
    parser.add_argument("--seconds", type=at_least(1), help="seconds of each run (6; smoke 1)")
    parser.add_argument("--users", type=at_least(1), help="users seeded (100000; smoke 1000)")
    parser.add_argument("--out", type=Path, help="the report (bench/BESIDE.md)")
    parser.add_argument("--smoke", action="store_true", help="a quick run that checks the harness")
    args = parser.parse_args(argv)
    smoke: bool = args.smoke
    out = args.out or (
        Path(tempfile.mkdtemp(prefix="bench-beside-")) / "BESIDE.md"
        if smoke
        else BENCH_DIR / "BESIDE.md"
    )
    return Options(
        revs=tuple(args.rev),
        rounds=args.rounds or (1 if smoke else 5),
        seconds=args.seconds or (1 if smoke else 6),
        users=args.users or (1_000 if smoke else 100_000),
        warmup=0 if smoke else WARMUP_SECONDS,
        out=out,
        smoke=smoke,
    )


class Run(msgspec.Struct, frozen=True, kw_only=True):
    rate: float
    p99_ms: float
    requests: int
    failed: int  # non-2xx answers and socket errors


def measure(subject: Subject, url: str, users: int, seconds: int) -> Run:
    """One wrk run of the scenario against url, as python -m bench runs it."""
    variant = subject.variant
    # A fresh nonce a run keeps the created emails unique.
    args = (str(users), secrets.token_hex(4), *variant.args)
    summary = run_wrk(
        url,
        variant.script,
        args,
        duration=seconds,
        connections=variant.connections or CONNECTIONS,
        headers=variant.headers,
    )
    return Run(
        rate=summary.rps * variant.per_request,
        p99_ms=summary.p99_us / 1000,
        requests=summary.requests,
        failed=summary.non_2xx + summary.socket_errors,
    )


def rounds_of(options: Options, urls: dict[str, str]) -> list[dict[str, dict[str, Run]]]:
    """Each round: each scenario, each checkout in turn, in the other order every other round."""
    names = list(urls)
    for key, subject in SUBJECTS.items():
        for name in names if options.warmup else ():
            measure(subject, urls[name], options.users, options.warmup)
            print(f"warm-up | {key} | {name}", flush=True)
    rounds: list[dict[str, dict[str, Run]]] = []
    for number in range(options.rounds):
        order = names if number % 2 == 0 else names[::-1]
        found: dict[str, dict[str, Run]] = {}
        for key, subject in SUBJECTS.items():
            found[key] = {}
            for name in order:
                run = measure(subject, urls[name], options.users, options.seconds)
                found[key][name] = run
                print(
                    f"round {number + 1}/{options.rounds} | {key} | {name}: "
                    f"{run.rate:,.0f} {subject.scenario.unit}, p99 {run.p99_ms:.2f} ms, "
                    f"failed {run.failed}",
                    flush=True,
                )
        rounds.append(found)
    return rounds


def ratios(rounds: list[dict[str, dict[str, Run]]], key: str, this: str, other: str) -> list[float]:
    """This checkout's rate over the other's, round by round."""
    return [found[key][this].rate / found[key][other].rate for found in rounds]


def table(rounds: list[dict[str, dict[str, Run]]], names: list[str]) -> str:
    """Medians over rounds of each rate, and the median of the rounds' ratios: the headline."""
    this, others = names[0], names[1:]
    header = [
        "scenario", *names, *(f"this ÷ {name}" for name in others),
        f"lookup and create ≥ {FLOOR:.2f}",
    ]  # fmt: skip
    rows = []
    for key, subject in SUBJECTS.items():
        rates = [
            f"{statistics.median(found[key][name].rate for found in rounds):,.0f} "
            f"{subject.scenario.unit}"
            for name in names
        ]
        medians = [statistics.median(ratios(rounds, key, this, other)) for other in others]
        kept = "" if key not in RULED else "yes" if min(medians) >= FLOOR else "**no**"
        cells = [*rates, *(f"**{ratio:.3f}**" for ratio in medians), kept]
        rows.append([f"{key}: {subject.scenario.title}", *cells])
    return markdown_table(header, rows)


def round_table(rounds: list[dict[str, dict[str, Run]]], names: list[str]) -> str:
    """Every run's rate, p99 and failures, with the round's ratios."""
    this, others = names[0], names[1:]
    header = ["round", "scenario", *names, *(f"this ÷ {name}" for name in others)]
    rows = []
    for number, found in enumerate(rounds, 1):
        for key in SUBJECTS:
            runs = [found[key][name] for name in names]
            cells = [
                f"{run.rate:,.0f} (p99 {run.p99_ms:.1f} ms"
                + (f", {run.failed} failed" if run.failed else "")
                + ")"
                for run in runs
            ]
            cells += [f"{ratios([found], key, this, other)[0]:.3f}" for other in others]
            rows.append([str(number), key, *cells])
    return markdown_table(header, rows)


def load_average() -> str:
    return ", ".join(f"{load:.2f}" for load in os.getloadavg())


def markdown(
    options: Options,
    command: str,
    names: list[str],
    rounds: list[dict[str, dict[str, Run]]],
    loads: tuple[str, str],
    postgres_version: str,
) -> str:
    described = {**machine.describe_machine(), **machine.describe_versions(postgres_version)}
    scenarios = "; ".join(
        f"`{key}` {subject.scenario.title} ({subject.variant.script}, wrk -t1 "
        f"-c{subject.variant.connections or CONNECTIONS}, in {subject.scenario.unit})"
        for key, subject in SUBJECTS.items()
    )
    return "\n".join(
        [
            "# This checkout beside other commits",
            "",
            f"`{command}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
            + (" (a smoke run: its figures mean nothing)" if options.smoke else ""),
            "",
            f"Load average (1, 5, 15 min) at the start: {loads[0]}; at the end: {loads[1]}.",
            "",
            "Each checkout runs its own service, from its own code, with one worker, on a "
            f"database of its own seeded with the same {options.users:,} users. "
            f"{options.rounds} round{'s' if options.rounds > 1 else ''}; in each, each scenario "
            f"runs {options.seconds} s against "
            "each checkout in turn, in the other order every other round"
            + (f", after a {options.warmup} s warm-up of each" if options.warmup else "")
            + f". Scenarios, as `python -m bench` runs them: {scenarios}. A rate is the median "
            "over rounds; a ratio, the headline, is the median of the rounds' ratios of this "
            "checkout's rate over the other's. The team's rule: lookups and creates within "
            f"5% of the previous commit (a ratio of at least {FLOOR:.2f}).",
            "",
            table(rounds, names),
            "",
            "## Rounds",
            "",
            round_table(rounds, names),
            "",
            "## Machine",
            "",
            *(f"- {key}: {value}" for key, value in described.items()),
            "",
        ]
    )


def main(argv: Sequence[str]) -> int:
    signal.signal(signal.SIGTERM, servers.exit_on_sigterm)
    options = parse_options(argv)
    wrk_binary()
    command = shlex.join(["python", "-m", "bench.beside", *argv])
    loads_start = load_average()
    names_of_databases = [f"bench_beside_{n}" for n in range(1 + len(options.revs))]
    with (
        checkouts.checkouts(options.revs) as paths,
        postgres.database_url() as server_url,
        tempfile.TemporaryDirectory(prefix="bench-beside-logs-") as logs,
        ExitStack() as stack,
    ):
        asyncio.run(seed.recreate_databases(server_url, names_of_databases))
        postgres_version = asyncio.run(seed.server_version(server_url))
        urls = {}
        for (name, path), database in zip(paths.items(), names_of_databases, strict=True):
            url = seed.database_url(server_url, database)
            print(f"{name}: migrating and seeding {options.users:,} users into {database}")
            checkouts.migrate(path, url)
            asyncio.run(seed.seed_service(url, options.users))
            server = checkouts.start(name, path, url, Path(logs))
            stack.callback(servers.stop, server)
            urls[name] = server.url
        rounds = rounds_of(options, urls)
    names = list(urls)
    loads = (loads_start, load_average())
    report = markdown(options, command, names, rounds, loads, postgres_version)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(report)
    print("\n" + table(rounds, names))
    print(f"\nLoad average at the start: {loads[0]}; at the end: {loads[1]}")
    print(f"Wrote {options.out}")
    broken = [
        f"{key} ({name})"
        for found in rounds
        for key, runs in found.items()
        for name, run in runs.items()
        if run.requests == 0 or run.failed
    ]
    if broken:
        print(f"No requests, or failed ones, in: {', '.join(sorted(set(broken)))}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
