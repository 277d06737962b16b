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
