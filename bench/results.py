"""Rounds reduced to medians, and the issue's targets checked against those medians."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import msgspec

from bench.scenarios import Scenario

RSS_LIMIT_MB = 80.0


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


class TargetCheck(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    goal: str
    measured: str
    # None when an app it needs was not run.
    met: bool | None


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


def find(results: Sequence[ScenarioResult], key: str, label: str) -> VariantResult | None:
    for result in results:
        if result.scenario.key == key:
            return result.find(label)
    return None


def compare(
    name: str,
    goal: str,
    numerator: VariantResult | None,
    denominator: VariantResult | None,
    *,
    value: Callable[[VariantResult], float],
    unit: str,
    passes: Callable[[float], bool],
) -> TargetCheck:
    if numerator is None or denominator is None or value(denominator) == 0:
        return TargetCheck(name=name, goal=goal, measured="not run", met=None)
    ratio = value(numerator) / value(denominator)
    measured = f"{ratio:.2f}x ({number(value(numerator))} vs {number(value(denominator))} {unit})"
    return TargetCheck(name=name, goal=goal, measured=measured, met=passes(ratio))


def number(value: float) -> str:
    """Whole numbers for rates, two decimals for milliseconds."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def rate(result: VariantResult) -> float:
    return result.rate


def p99(result: VariantResult) -> float:
    return result.p99_ms


def check_targets(results: Sequence[ScenarioResult], service_rss: int | None) -> list[TargetCheck]:
    get_service = find(results, "get", "service")
    get_baseline = find(results, "get", "baseline")
    checks = [
        compare(
            "GET /users/{email} rps vs baseline",
            ">= 6x",
            get_service,
            get_baseline,
            value=rate,
            unit="req/s",
            passes=lambda ratio: ratio >= 6,
        ),
        compare(
            "GET /users/{email} rps vs ceiling",
            ">= 0.60x",
            get_service,
            find(results, "get", "ceiling"),
            value=rate,
            unit="req/s",
            passes=lambda ratio: ratio >= 0.6,
        ),
        compare(
            "GET /users/{email} p99 vs baseline",
            "<= 0.33x",
            get_service,
            get_baseline,
            value=p99,
            unit="ms",
            passes=lambda ratio: ratio <= 1 / 3,
        ),
        compare(
            "Deep page: after= rps vs baseline offset=",
            ">= 15x",
            find(results, "deep_page", "service after="),
            find(results, "deep_page", "baseline offset="),
            value=rate,
            unit="req/s",
            passes=lambda ratio: ratio >= 15,
        ),
        compare(
            "POST /users/bulk rows/s vs baseline",
            ">= 2x",
            find(results, "bulk", "service"),
            find(results, "bulk", "baseline"),
            value=rate,
            unit="rows/s",
            passes=lambda ratio: ratio >= 2,
        ),
    ]
    if service_rss is None:
        checks.append(
            TargetCheck(
                name="Service worker RSS after the run",
                goal="<= 80 MB",
                measured="not run",
                met=None,
            )
        )
    else:
        megabytes = service_rss / 1_000_000
        checks.append(
            TargetCheck(
                name="Service worker RSS after the run",
                goal=f"<= {RSS_LIMIT_MB:.0f} MB",
                measured=f"{megabytes:.1f} MB",
                met=megabytes <= RSS_LIMIT_MB,
            )
        )
    service_hits = [
        variant
        for result in results
        if result.scenario.hits_only
        for variant in result.variants
        if variant.app == "service"
    ]
    non_2xx = sum(variant.non_2xx for variant in service_hits)
    socket_errors = sum(variant.socket_errors for variant in service_hits)
    checks.append(
        TargetCheck(
            name="Service non-2xx on hit scenarios",
            goal="= 0",
            measured=f"{non_2xx} ({socket_errors} socket errors)" if service_hits else "not run",
            met=non_2xx == 0 if service_hits else None,
        )
    )
    return checks
