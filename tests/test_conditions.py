"""ETags and the conditions on them, away from any request."""

from __future__ import annotations

from uuid import UUID

import pytest

from service.conditions import etag, match_condition, none_match
from service.schemas import Stored, User

ID = "0b9d8a52-5c1e-4d8e-9a0a-6f1f1d2b3c4d"
NOW = "2026-01-01T00:00:00.000000Z"
STORED = Stored(
    User(
        id=ID, name="A", email="a@x", status="active", attributes={}, created_at=NOW, updated_at=NOW
    ),
    7,
)


def test_the_etag_is_strong_and_names_the_version_and_the_id() -> None:
    assert etag(STORED) == f'"7-{ID}"'


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (f'"7-{ID}"', True),
        (f'W/"7-{ID}"', True),
        (f' "1-x" , "7-{ID}" ', True),
        ("*", True),
        (f'"8-{ID}"', False),
        ("", False),
    ],
)
def test_if_none_match_compares_weakly(header: str, matches: bool) -> None:
    assert none_match(header, etag(STORED)) is matches


def test_if_match_star_is_any_user() -> None:
    assert match_condition(" * ") is None


def test_if_match_keeps_only_strong_tags_this_service_could_have_made() -> None:
    header = (
        f'W/"1-{ID}", "2-{ID}", "3-nothex", "x-{ID}", "{"9" * 19}-{ID}", 4-{ID}, "٣-{ID}", "5-{ID}"'
    )
    assert match_condition(header) == [(UUID(ID), 2), (UUID(ID), 5)]
