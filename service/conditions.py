"""ETags, and the If-Match and If-None-Match conditions on them (RFC 9110 §13)."""

from __future__ import annotations

from uuid import UUID

from service.queries import Condition
from service.schemas import Stored, StoredGroup


def etag(stored: Stored) -> str:
    """A user's strong ETag: its version, then its id, so a new user of one email has another."""
    return f'"{stored.version}-{stored.user.id}"'


def group_etag(stored: StoredGroup) -> str:
    """A group's strong ETag, made as a user's is."""
    return f'"{stored.version}-{stored.group.id}"'


def tags(header: str) -> list[str]:
    """The entity tags of a comma-separated list, as sent (weak ones keep their W/)."""
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def none_match(header: str, current: str) -> bool:
    """Whether If-None-Match names the current ETag: compared weakly, as §13.1.2 asks."""
    if header.strip() == "*":
        return True
    return any(tag.removeprefix("W/") == current for tag in tags(header))


def match_condition(header: str) -> Condition:
    """The (id, version) pairs of If-Match, or None for "*": any user that exists.

    Weak tags never match (§13.1.1), nor do tags this service did not make.
    """
    if header.strip() == "*":
        return None
    pairs: list[tuple[UUID, int]] = []
    for tag in tags(header):
        version, _, id = tag.removeprefix('"').removesuffix('"').partition("-")
        # A bigint at most, as the version column is.
        if not (tag[:1] == '"' == tag[-1:] and version.isascii() and version.isdigit()):
            continue
        if len(version) > 18:
            continue
        try:
            pairs.append((UUID(hex=id), int(version)))
        except ValueError:
            continue
    return pairs
