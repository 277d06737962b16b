"""The JSON shapes of the API as msgspec Structs, with named constraints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

# C0 and C1 control characters (NUL included) and DEL, never allowed.
_NO_CONTROL = r"\x00-\x1f\x7f-\x9f"
# Python's "$" also matches before a final newline, so "Ann\n" would pass
# "^...$"; "(?!\n)" rules that out, and changes nothing in JSON Schema's regex.
_END = r"$(?!\n)"

Name = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=200,
        pattern=rf"^[^{_NO_CONTROL}]*{_END}",
        description="Display name: 1 to 200 characters, no control characters.",
    ),
]

# One "@", a local part of 1 to 64 characters and a non-empty domain, with no
# whitespace or control characters. "/" is refused in the domain, where no
# host name can hold it, so a trailing "/" in a path is never part of an email.
Email = Annotated[
    str,
    msgspec.Meta(
        min_length=3,
        max_length=254,
        pattern=rf"^[^@\s{_NO_CONTROL}]{{1,64}}@[^@\s/{_NO_CONTROL}]+{_END}",
        description="Email address, unique regardless of letter case.",
        examples=["ann@example.com"],
    ),
]


class Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of request bodies."""

    # forbid_unknown_fields: a misspelt field is an error, never silently dropped.
    # kw_only: fields are always named, so their order can change freely.


class NewUser(Body):
    name: Name
    email: Email


# One bulk request inserts at most this many users: one COPY, bounded in time
# and memory. Decoding enforces it, so the document and the 422 say the same.
MAX_BULK_USERS = 10_000
NewUsers = Annotated[
    list[NewUser],
    msgspec.Meta(max_length=MAX_BULK_USERS, description="All of them are created, or none."),
]


class UserPatch(Body):
    name: Name


class User(msgspec.Struct, kw_only=True):
    name: str
    email: str
    # tz=True: always with an offset, and "format: date-time" in the document.
    created_at: Annotated[datetime, msgspec.Meta(tz=True)]


class Inserted(msgspec.Struct, kw_only=True):
    inserted: int


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An RFC 9457 problem detail."""

    type: str
    title: str
    status: int
    detail: str
    # Where the request was wrong, as a path into the body ("$[3].email") or
    # the name of a query parameter ("limit").
    field: str | None = None
    # The emails that made a create or bulk create conflict.
    conflicts: list[str] | None = None


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def email_key(email: str) -> str:
    """The identity of an email: ASCII letters folded to lower case.

    This is what PostgreSQL's lower() does under the "C" collation of the
    email column, so Python and the unique index agree on who is who.
    """
    # str.lower() is the fast path, and exact for ASCII.
    return email.lower() if email.isascii() else email.translate(_ASCII_LOWER)
