"""python -m bench.access: what checking a caller costs a request, in-process, per kind of token.

The rate figures of `python -m bench` (no auth, a static token, a JWT) move with whatever else
the machine runs; this times the one step that differs between them, Callers.check, on its own:
a static token's digest lookup, a JWT already checked (held by its digest), and a JWT's first
check (its signature and claims), each the median of several runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bench.issuer import AUDIENCE, Issuer
from service.access_tokens import AccessTokens
from service.app import routes
from service.auth import Callers
from service.settings import Settings

STATIC_TOKEN = "a-static-token-of-32-characters!"  # noqa: S105 - a bench's own


def scope_of(token: str) -> dict[str, Any]:
    """The ASGI scope of GET /users/{user} with this bearer token, as Dispatch routes it."""
    return {
        "route": routes[0],
        "query_string": b"",
        "headers": [
            (b"host", b"localhost:8000"),
            (b"user-agent", b"wrk"),
            (b"authorization", f"Bearer {token}".encode()),
        ],
    }


async def per_call(check: Callable[[], Awaitable[None]], calls: int) -> float:
    """Microseconds one call of `check` takes, over `calls` calls."""
    started = time.perf_counter()
    for _ in range(calls):
        await check()
    return (time.perf_counter() - started) / calls * 1e6


async def measure(rounds: int, calls: int) -> dict[str, list[float]]:
    issuers = {algorithm: Issuer(algorithm).start() for algorithm in ("RS256", "ES256")}
    try:
        checkers = {}
        for algorithm, issuer in issuers.items():
            access_tokens = AccessTokens(issuer.url, AUDIENCE, None)
            await access_tokens.keys.refresh()
            checkers[algorithm] = (issuer, access_tokens)
        issuer, access_tokens = checkers["RS256"]
        callers = Callers(Settings(api_tokens=(STATIC_TOKEN,)).callers(), access_tokens)
        static, held = scope_of(STATIC_TOKEN), scope_of(issuer.token())
        await callers.check(held)

        async def first_check(algorithm: str) -> None:
            issuer, access_tokens = checkers[algorithm]
            access_tokens.checked.clear()
            await Callers((), access_tokens).check(scope_of(issuer.token()))

        kinds: dict[str, Callable[[], Awaitable[None]]] = {
            "static token": lambda: callers.check(static),
            "JWT, already checked": lambda: callers.check(held),
            "JWT RS256, first check": lambda: first_check("RS256"),
            "JWT ES256, first check": lambda: first_check("ES256"),
        }
        found: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(rounds):
            for kind, check in kinds.items():
                # The first checks also sign a token each: counted apart below.
                found[kind].append(await per_call(check, calls if "first" not in kind else 200))
        signing = {algorithm: sign_cost(issuer) for algorithm, (issuer, _) in checkers.items()}
        for algorithm, cost in signing.items():
            found[f"JWT {algorithm}, first check"] = [
                value - cost for value in found[f"JWT {algorithm}, first check"]
            ]
        return found
    finally:
        for issuer in issuers.values():
            issuer.stop()


def sign_cost(issuer: Issuer, calls: int = 200) -> float:
    """Microseconds the stand-in takes to sign one token, taken off the first checks."""
    started = time.perf_counter()
    for _ in range(calls):
        issuer.token()
    return (time.perf_counter() - started) / calls * 1e6


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.access", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7, help="runs of each kind (7)")
    parser.add_argument("--calls", type=int, default=100_000, help="checks a run (100,000)")
    args = parser.parse_args(argv)
    found = asyncio.run(measure(args.rounds, args.calls))
    print("| kind | median µs a request | runs |")
    print("|---|---|---|")
    for kind, values in found.items():
        print(f"| {kind} | {statistics.median(values):.2f} | {len(values)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
