"""Rounds reduced to medians, and the issue's targets checked against those medians."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Literal

import msgspec

from bench.scenarios import FEED_OFF, Scenario

RSS_LIMIT_MB = 60.0


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    """One round of one variant."""

    rate: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int


class VariantResult(msgspec.Struct, frozen=True, kw_only=True):
    label: str
    app: str
    rate: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    rounds: int


class ScenarioResult(msgspec.Struct, frozen=True, kw_only=True):
    scenario: Scenario
    variants: tuple[VariantResult, ...]

    def find(self, label: str) -> VariantResult | None:
        return next((variant for variant in self.variants if variant.label == label), None)


class Ratio(msgspec.Struct, frozen=True, kw_only=True):
    """A target: the median of one variant over another's, in the same scenario of one run."""

    name: str
    scenario: str
    label: str
    base: str
    bound: float
    measure: Literal["rate", "p99"] = "rate"

    @property
    def goal(self) -> str:
        # Latency must fall, rates must rise.
        return f"<= {self.bound:.2f}x" if self.measure == "p99" else f">= {self.bound:g}x"

    def met(self, ratio: float) -> bool:
        return ratio <= self.bound if self.measure == "p99" else ratio >= self.bound


def against_floor(
    scenario: str, title: str, *, label: str = "service", floor: str = "floor", rate: float = 0.8
) -> tuple[Ratio, Ratio]:
    """A scenario's rate at least `rate` times its floor's, and its p99 at most 1.5 times."""
    return (
        Ratio(name=f"{title}: rate vs its floor", scenario=scenario, label=label, base=floor,
              bound=rate),
        Ratio(name=f"{title}: p99 vs the floor's", scenario=scenario, label=label, base=floor,
              bound=1.5, measure="p99"),
    )  # fmt: skip


# One worker, 100,000 users, wrk -t1 -c64 (lookups of 100, -c8): each scenario
# against its floor, the same work with no framework (bench/floor.py), and
# its tail against the comparators'.
TARGETS = (
    *against_floor("get", "GET /users/{email}", rate=0.85),
    Ratio(name="GET /users/{email}: p99 vs the tutorial's", scenario="get", label="service",
          base="tutorial", bound=1 / 3, measure="p99"),
    Ratio(name="GET /users/{email}: req/s, auth on vs off", scenario="get",
          label="service, auth on", base="service", bound=0.9),
    Ratio(name="GET /users/{email}: req/s, JWT vs auth off", scenario="get",
          label="service, JWT", base="service", bound=0.9),
    *against_floor("first_page", "First page"),
    Ratio(name="First page: p99 vs the peer's", scenario="first_page", label="service",
          base="peer", bound=1, measure="p99"),
    *against_floor("deep_page", "Deep after= page", label="service after=", floor="floor after="),
    Ratio(name="Deep after= page: req/s vs the peer's keyset page", scenario="deep_page",
          label="service after=", base="peer after=", bound=1.5),
    Ratio(name="Deep after= page: p99 vs the peer's keyset page", scenario="deep_page",
          label="service after=", base="peer after=", bound=1, measure="p99"),
    *against_floor("create", "POST /users"),
    Ratio(name="POST /users: p99 vs the tutorial's", scenario="create", label="service",
          base="tutorial", bound=1, measure="p99"),
    Ratio(name="POST /users: p99 vs the peer's", scenario="create", label="service",
          base="peer", bound=1, measure="p99"),
    Ratio(name="POST /users: req/s with the change feed vs without", scenario="create",
          label="service", base=FEED_OFF, bound=0.85),
    Ratio(name="POST /users/bulk: rows/s vs the COPY limit", scenario="bulk", label="service",
          base="COPY limit", bound=0.8),
    Ratio(name="POST /users/bulk: rows/s with the change feed vs without", scenario="bulk",
          label="service", base=FEED_OFF, bound=0.85),
    *against_floor("lookup", "POST /users/lookup of 100", label="service lookup",
                   floor="floor lookup"),
    Ratio(name="Users/s: a lookup of 100 vs a GET each", scenario="lookup",
          label="service lookup", base="service GETs", bound=5),
    *against_floor("search", "GET /users?q="),
    *against_floor("feed_page", "GET /users/changes page"),
)  # fmt: skip


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    """A target: one variant's median p99, at most `bound_ms`."""

    name: str
    scenario: str
    label: str
    bound_ms: float


LATENCIES = (
    Latency(name="POST /users/lookup of 100 users p99", scenario="lookup",
            label="service lookup", bound_ms=10),
)  # fmt: skip


class TargetCheck(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    goal: str
    measured: str
    # None when an app it needs was not run.
    met: bool | None
    # The measure against the goal, 1.0 or more when met (for the chart); None when not run.
    score: float | None = None


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    """The service's median rate over another variant's, in one scenario of one run."""

    scenario: str
    versus: str
    ratio: float


def summarize(label: str, app: str, samples: Sequence[Sample]) -> VariantResult:
    """Medians for rate and p99; counts of failures add up over rounds."""
    return VariantResult(
        label=label,
        app=app,
        rate=statistics.median(sample.rate for sample in samples),
        p99_ms=statistics.median(sample.p99_ms for sample in samples),
        requests=sum(sample.requests for sample in samples),
        non_2xx=sum(sample.non_2xx for sample in samples),
        socket_errors=sum(sample.socket_errors for sample in samples),
        rounds=len(samples),
    )


def find(results: Sequence[ScenarioResult], key: str) -> ScenarioResult | None:
    return next((result for result in results if result.scenario.key == key), None)


def number(value: float) -> str:
    """Whole numbers for rates, two decimals for milliseconds."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def check_ratio(target: Ratio, results: Sequence[ScenarioResult]) -> TargetCheck:
    result = find(results, target.scenario)
    numerator = None if result is None else result.find(target.label)
    denominator = None if result is None else result.find(target.base)
    if result is None or numerator is None or denominator is None:
        return TargetCheck(name=target.name, goal=target.goal, measured="not run", met=None)
    if target.measure == "p99":
        top, bottom, unit = numerator.p99_ms, denominator.p99_ms, "ms"
    else:
        top, bottom, unit = numerator.rate, denominator.rate, result.scenario.unit
    ratio = top / bottom if bottom else float("inf")
    if target.measure == "p99":
        score = target.bound / ratio if ratio else float("inf")
    else:
        score = ratio / target.bound
    return TargetCheck(
        name=target.name,
        goal=target.goal,
        measured=f"{ratio:.2f}x ({number(top)} vs {number(bottom)} {unit})",
        met=target.met(ratio),
        score=score,
    )


def check_latency(target: Latency, results: Sequence[ScenarioResult]) -> TargetCheck:
    result = find(results, target.scenario)
    variant = None if result is None else result.find(target.label)
    goal = f"<= {target.bound_ms:g} ms"
    if variant is None:
        return TargetCheck(name=target.name, goal=goal, measured="not run", met=None)
    return TargetCheck(
        name=target.name,
        goal=goal,
        measured=f"{variant.p99_ms:.2f} ms",
        met=variant.p99_ms <= target.bound_ms,
        score=target.bound_ms / variant.p99_ms if variant.p99_ms else float("inf"),
    )


def check_rss(service_rss: int | None) -> TargetCheck:
    name, goal = "Service worker RSS after the run", f"<= {RSS_LIMIT_MB:.0f} MB"
    if service_rss is None:
        return TargetCheck(name=name, goal=goal, measured="not run", met=None)
    megabytes = service_rss / 1_000_000
    return TargetCheck(
        name=name,
        goal=goal,
        measured=f"{megabytes:.1f} MB",
        met=megabytes <= RSS_LIMIT_MB,
        score=RSS_LIMIT_MB / megabytes,
    )


def check_errors(results: Sequence[ScenarioResult]) -> TargetCheck:
    """Non-2xx answers of the service, auth on or off, where every request should succeed."""
    service_hits = [
        variant
        for result in results
        if result.scenario.hits_only
        for variant in result.variants
        if variant.app.startswith("service")
    ]
    name, goal = "Service non-2xx on hit scenarios", "= 0"
    if not service_hits:
        return TargetCheck(name=name, goal=goal, measured="not run", met=None)
    non_2xx = sum(variant.non_2xx for variant in service_hits)
    socket_errors = sum(variant.socket_errors for variant in service_hits)
    return TargetCheck(
        name=name,
        goal=goal,
        measured=f"{non_2xx} ({socket_errors} socket errors)",
        met=non_2xx == 0,
        score=1.0 if non_2xx == 0 else 0.0,
    )


def check_targets(results: Sequence[ScenarioResult], service_rss: int | None) -> list[TargetCheck]:
    return [
        *(check_ratio(target, results) for target in TARGETS),
        *(check_latency(target, results) for target in LATENCIES),
        check_rss(service_rss),
        check_errors(results),
    ]


def comparisons(results: Sequence[ScenarioResult]) -> list[Comparison]:
    """The service's variant over every other variant of each scenario, by median rate."""
    found: list[Comparison] = []
    for result in results:
        subject = result.find(result.scenario.subject)
        if subject is None:
            continue
        found.extend(
            Comparison(
                scenario=result.scenario.title, versus=other.label, ratio=subject.rate / other.rate
            )
            for other in result.variants
            if other is not subject and other.rate
        )
    return found
