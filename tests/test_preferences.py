"""The Prefer header's preferences, read as RFC 7240 says."""

from __future__ import annotations

import time

import pytest

from service.preferences import preferences


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], {}),
        (["count=exact"], {"count": "exact"}),
        (["Count=Exact"], {"count": "Exact"}),
        (["respond-async, wait=100"], {"respond-async": "", "wait": "100"}),
        (["return=minimal; foo=bar, count=estimated"], {"return": "minimal", "count": "estimated"}),
        (['count="exact"'], {"count": "exact"}),
        (['x="a, b; c", count=exact'], {"x": "a, b; c", "count": "exact"}),
        (['x="q\\"d"'], {"x": 'q"d'}),
        (["count = exact"], {"count": "exact"}),
        (["count=exact, count=estimated"], {"count": "exact"}),
        (["count=exact", "count=estimated"], {"count": "exact"}),
        (["=x, count=exact"], {"count": "exact"}),
        (["count=ex act"], {}),
        (['count="open'], {}),
    ],
)
def test_preferences_are_read_by_name_first_one_winning(
    headers: list[str], expected: dict[str, str]
) -> None:
    assert preferences(headers) == expected


def test_a_long_hostile_header_is_read_in_linear_time() -> None:
    started = time.perf_counter()
    hostile = ["count" + " " * 60_000 + "x", '"' + "\\\\" * 30_000, "a=" + '"",' * 20_000]
    assert preferences(hostile) == {"a": ""}
    assert time.perf_counter() - started < 0.5
