"""python -m bench.scim_beside: SCIM's creates and PATCHes, this checkout beside
others, in small interleaved turns on one machine."""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from bench import checkouts, postgres, seed, servers
from bench.options import at_least
from bench.scim import PATCH_OP, USER, entra_create, entra_patch

# The requests timed. Every checkout takes the first three; Entra's PATCH forms
# only those that keep the default attributes.
KINDS = {
    "create, Entra ID's default attributes": ("POST", 201),
    "PATCH, simple and dotted paths": ("PATCH", 200),
    "create, the user's own columns only": ("POST", 201),
    "PATCH, Entra ID's forms": ("PATCH", 200),
}
HEADERS = {"content-type": "application/scim+json"}
BENCH_DIR = Path(__file__).resolve().parent
HEADING = "## Beside other commits"


def plain_create(n: int) -> bytes:
    """A create of what the user's own columns hold, and nothing else."""
    email = f"plain.{n}@bench.example"
    return msgspec.json.encode(
        {
            "schemas": [USER],
            "externalId": f"plain-{n}",
            "userName": email,
            "active": True,
            "displayName": f"Plain User {n}",
            "emails": [{"primary": True, "type": "work", "value": email}],
        }
    )


def simple_patch(n: int) -> bytes:
    """A PATCH that every checkout takes: a simple path, a dotted one, a value map."""
    return msgspec.json.encode(
        {
            "schemas": [PATCH_OP],
            "Operations": [
                {"op": "Replace", "path": "title", "value": f"Lead {n}"},
                {"op": "Replace", "path": "name.familyName", "value": f"User {n}"},
                {"op": "replace", "value": {"displayName": f"Bench {n}", "name.givenName": "B"}},
            ],
        }
    )


def body_of(kind: str, n: int) -> bytes:
    if kind.startswith("create, Entra"):
        return entra_create(n)
    if kind.startswith("create"):
        return plain_create(n)
    return simple_patch(n) if kind.startswith("PATCH, simple") else entra_patch(n)


class Side(msgspec.Struct, kw_only=True):
    """One checkout's service, and what was measured of it."""

    name: str
    server: servers.Server
    kinds: list[str]
    times: dict[str, list[float]] = {}


def options_of(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scim_beside", description=__doc__)
    parser.add_argument(
        "--rev", action="append", default=[], help="a commit to run beside this checkout"
    )
    parser.add_argument("--turns", type=at_least(1), default=30, help="turns of each (30)")
    parser.add_argument("--per-turn", type=at_least(1), default=10, help="users a turn (10)")
    parser.add_argument(
        "--out", type=Path, default=BENCH_DIR / "SCIM.md", help="where its section goes"
    )
    return parser.parse_args(argv)


def write_section(path: Path, section: str) -> None:
    """Put `section` in the markdown file in place of the one of the same heading, else
    before "## Machine", else at the end."""
    text = path.read_text() if path.exists() else ""
    start = text.find(HEADING)
    if start >= 0:
        end = text.find("\n## ", start + len(HEADING))
        text = text[:start] + text[end + 1 :] if end >= 0 else text[:start]
    at = text.find("## Machine")
    at = len(text) if at < 0 else at
    path.write_text(text[:at] + section + "\n" + text[at:])


def kinds_taken(port: int) -> list[str]:
    """The kinds a checkout takes: Entra's PATCH forms only where it keeps the
    default attributes (before, it answered 400 invalidPath)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    n = time.time_ns()
    conn.request("POST", "/scim/v2/Users", entra_create(n), HEADERS)
    user = json.loads(conn.getresponse().read())["id"]
    conn.request("PATCH", f"/scim/v2/Users/{user}", entra_patch(n), HEADERS)
    response = conn.getresponse()
    response.read()
    conn.close()
    return [kind for kind in KINDS if response.status == 200 or "forms" not in kind]


def turn(side: Side, conn: http.client.HTTPConnection, first: int, count: int) -> None:
    """`count` requests of each kind in turn: creates, then PATCHes of the users made."""
    ids: list[str] = []
    for kind in side.kinds:
        method, expected = KINDS[kind]
        for i in range(count):
            path = "/scim/v2/Users" + ("" if method == "POST" else f"/{ids[i]}")
            started = time.perf_counter()
            conn.request(method, path, body_of(kind, first + i), HEADERS)
            response = conn.getresponse()
            answer = response.read()
            elapsed = time.perf_counter() - started
            if response.status != expected:
                raise RuntimeError(f"{side.name}: {method} {path}: {response.status} {answer!r}")
            if kind.startswith("create, Entra"):
                ids.append(json.loads(answer)["id"])
            side.times[kind].append(elapsed * 1000)


def report(sides: list[Side]) -> list[str]:
    """Each side's rate (1,000 ms over the mean); then this checkout's over each other's."""
    this, others = sides[0], sides[1:]
    lines = ["| request | " + " | ".join(side.name for side in sides) + " |"]
    lines.append("| --- |" + " --- |" * len(sides))
    for kind in KINDS:
        cells = [
            f"{1000 / statistics.mean(side.times[kind]):,.0f}/s"
            if kind in side.kinds
            else "not run"
            for side in sides
        ]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| request | " + " | ".join(f"this ÷ {side.name}" for side in others) + " |",
    ]
    lines.append("| --- |" + " --- |" * len(others))
    for kind in KINDS:
        cells = []
        for side in others:
            if kind not in side.kinds:
                cells.append("not run")
                continue
            rate = statistics.mean(side.times[kind]) / statistics.mean(this.times[kind])
            cells.append(f"{rate:.2f}")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines


def main(argv: Sequence[str]) -> int:
    options = options_of(argv)
    names = ["scim_beside_" + str(n) for n in range(1 + len(options.rev))]
    with (
        checkouts.checkouts(options.rev) as paths,
        postgres.database_url() as server_url,
        tempfile.TemporaryDirectory(prefix="bench-scim-beside-") as logs,
        ExitStack() as stack,
    ):
        asyncio.run(seed.recreate_databases(server_url, names))
        sides = []
        for (name, path), database in zip(paths.items(), names, strict=True):
            url = seed.database_url(server_url, database)
            checkouts.migrate(path, url)
            server = checkouts.start(name, path, url, Path(logs))
            stack.callback(servers.stop, server)
            sides.append(Side(name=name, server=server, kinds=kinds_taken(server.port)))
        conns = {}
        n = int(time.time())  # a fresh userName for every create, run after run
        for side in sides:
            conns[side.name] = http.client.HTTPConnection("127.0.0.1", side.server.port, timeout=30)
            side.times = {k: [] for k in side.kinds}
            turn(side, conns[side.name], n * 1000, 20)  # warm-up
            side.times = {k: [] for k in side.kinds}
        first = n * 1000 + 100
        for number in range(options.turns):
            # Each turn starts with another side: no side always follows the same one.
            for side in sides[number % len(sides) :] + sides[: number % len(sides)]:
                turn(side, conns[side.name], first, options.per_turn)
                first += options.per_turn

    command = shlex.join(["python", "-m", "bench.scim_beside", *argv])
    section = "\n".join(
        [
            HEADING,
            "",
            f"`{command}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "",
            "This checkout beside each commit named, each service with one worker on a "
            "database of its own, in turns: each turn, each service in another order gets "
            f"{options.per_turn} creates of each kind, then a PATCH of each user made, one "
            f"request at a time; {options.turns} turns. A rate is 1,000 ms over the mean "
            "time a request took; a ratio is this checkout's rate over the other's. The "
            "machine is shared: the turns spread its load over every checkout alike, not "
            "away, and a ratio moves by a few hundredths from run to run.",
            "",
            *report(sides),
            "",
        ]
    )
    write_section(options.out, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
