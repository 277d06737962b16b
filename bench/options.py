"""Command-line option types shared by the bench commands."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than `low`."""

    def parse(raw: str) -> int:
        value = int(raw)
        if value < low:
            raise argparse.ArgumentTypeError(
                f"expected a whole number of at least {low}, got {raw}"
            )
        return value

    return parse


def subset_of(names: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: a comma-separated subset of `names`, in the order of `names`."""

    def parse(raw: str) -> tuple[str, ...]:
        given = raw.split(",")
        if set(given) - set(names):  # "" is no name, so the subset is never empty
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {','.join(names)}, got {raw}"
            )
        return tuple(name for name in names if name in given)

    return parse
