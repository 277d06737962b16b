"""The JSON shapes of the API as msgspec Structs, with named constraints."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

import msgspec

# C0 and C1 control characters (NUL included) and DEL, never allowed.
_NO_CONTROL = r"\x00-\x1f\x7f-\x9f"
# Bidirectional embeddings, overrides and isolates, which reorder the text
# after them: a name shown in a list or a log could display as another.
_BIDI_CONTROLS = r"\u202a-\u202e\u2066-\u2069"
# Spaces other than the controls, written out rather than as "\s": clients
# read the document's patterns as ECMA-262, whose "\s" holds U+FEFF and
# Python's does not. These are ECMA-262's, with Python's all among them.
_SPACES = r" \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
# Invisible format characters an address has no use for: zero-width spaces
# and joiners, and bidirectional marks.
_INVISIBLE = r"\u200b-\u200f\u2060\u061c"
# Python's "$" also matches before a final newline, so "Ann\n" would pass
# "^...$"; "(?!\n)" rules that out, and changes nothing in JSON Schema's regex.
_END = r"$(?!\n)"

Name = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=200,
        pattern=rf"^[^{_NO_CONTROL}{_BIDI_CONTROLS}]*{_END}",
        description="Display name: 1 to 200 characters, no control characters or "
        "bidirectional embeddings, overrides or isolates.",
    ),
]

# One "@", a local part of 1 to 64 characters and a non-empty domain, with no
# space, control or invisible character. "/" is refused in the domain, where no
# host name can hold it, so a trailing "/" in a path is never part of an email.
# Written with \uXXXX escapes only, which Python and ECMA-262 read alike.
_NOT_IN_EMAIL = f"{_SPACES}{_INVISIBLE}{_BIDI_CONTROLS}{_NO_CONTROL}"
_EMAIL = rf"[^@{_NOT_IN_EMAIL}]{{1,64}}@[^@/{_NOT_IN_EMAIL}]+"
MIN_EMAIL_LENGTH = 3
MAX_EMAIL_LENGTH = 254
Email = Annotated[
    str,
    msgspec.Meta(
        min_length=MIN_EMAIL_LENGTH,
        max_length=MAX_EMAIL_LENGTH,
        pattern=rf"^{_EMAIL}{_END}",
        description="Email address, unique regardless of letter case.",
        examples=["ann@example.com"],
    ),
]

# What names a user in a path: its email, or its id as a canonical UUID.
UUID_PATTERN = "-".join(f"[0-9a-fA-F]{{{n}}}" for n in (8, 4, 4, 4, 12))
HANDLE_PATTERN = rf"^(?:{_EMAIL}|{UUID_PATTERN}){_END}"
UserHandle = Annotated[
    str,
    msgspec.Meta(
        min_length=MIN_EMAIL_LENGTH,
        max_length=MAX_EMAIL_LENGTH,
        pattern=HANDLE_PATTERN,
        description="The user's email in any letter case, or its id.",
        examples=["ann@example.com", "0b9d8a52-5c1e-4d8e-9a0a-6f1f1d2b3c4d"],
    ),
]

# What GET /users?q= searches for: part of an email or a name. Three
# characters make a trigram, the least the index can look up.
MIN_SEARCH_LENGTH = 3
MAX_SEARCH_LENGTH = 100
SearchText = Annotated[
    str,
    msgspec.Meta(
        min_length=MIN_SEARCH_LENGTH,
        max_length=MAX_SEARCH_LENGTH,
        pattern=rf"^[^{_NO_CONTROL}]*{_END}",
        description="3 to 100 characters, no control characters.",
    ),
]

# What Idempotency-Key accepts; checked by hand (idempotency.key_of), named
# here so that the document says the same.
MAX_IDEMPOTENCY_KEY_LENGTH = 255
IdempotencyKey = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY_LENGTH,
        pattern=rf"^[ -~]+{_END}",
        description="1 to 255 printable ASCII characters.",
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


# One lookup names at most this many users: one statement, whose answer is
# bounded too. Decoding enforces it, so the document and the 422 say the same.
MAX_LOOKUP_HANDLES = 1_000
# Room for MAX_LOOKUP_HANDLES of the longest handles that can name a user: 254
# characters (Email's max_length) of up to 4 bytes each, quoted, comma-separated.
MAX_LOOKUP_BYTES = 1024 * 1024
Handles = Annotated[
    list[
        Annotated[
            str,
            msgspec.Meta(
                description="A user's email in any letter case, or its id. Any other string "
                "names no user and is listed in `missing`.",
                examples=["ann@example.com", "0b9d8a52-5c1e-4d8e-9a0a-6f1f1d2b3c4d"],
            ),
        ]
    ],
    msgspec.Meta(
        max_length=MAX_LOOKUP_HANDLES,
        description=f"Up to {MAX_LOOKUP_HANDLES:,} handles, in the caller's order.",
    ),
]


class UserPatch(Body):
    """Either field or both."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    email: Email | msgspec.UnsetType = msgspec.UNSET

    def __post_init__(self) -> None:
        # Decoding turns this into a ValidationError, and so into a 422 at "$".
        if self.name is msgspec.UNSET and self.email is msgspec.UNSET:
            raise ValueError("Expected name, email or both")


# The body PATCH decodes, and the document shows: at least one field.
Patch = Annotated[UserPatch, msgspec.Meta(extra_json_schema={"minProperties": 1})]

# A time a request gives: tz=True asks for an offset, and the document says
# "format: date-time".
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]
# A time the service shows: RFC 3339 in UTC, as the database's rfc3339() writes it.
TimestampText = Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})]


class User(msgspec.Struct, kw_only=True):
    id: Annotated[
        str,
        msgspec.Meta(
            description="Made by the service; never changes.",
            extra_json_schema={"format": "uuid"},
        ),
    ]
    name: str
    email: str
    created_at: TimestampText
    updated_at: TimestampText


class Stored(msgspec.Struct, frozen=True):
    """A user as stored: what the API shows, and the version its ETag names.

    A Struct rather than a NamedTuple: made in C, ~0.3 µs less a lookup.
    """

    user: User
    version: int


class Inserted(msgspec.Struct, kw_only=True):
    inserted: int


class Lookup(msgspec.Struct, kw_only=True):
    """The answer of POST /users/lookup."""

    found: Annotated[
        list[User],
        msgspec.Meta(description="Each user named, once, in the order of its first mention."),
    ]
    missing: Annotated[
        list[str],
        msgspec.Meta(
            description="The handles that name no user, as given, in request order; each "
            "string once, at its first mention."
        ),
    ]


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


_handle = re.compile(HANDLE_PATTERN)


def is_handle(text: str) -> bool:
    """Whether text keeps UserHandle's rules, as msgspec checks them (its patterns search)."""
    # For a lookup's handles: msgspec.convert(text, Email) cost ~5 µs a string,
    # 0.6 ms of a 100-handle lookup; this, ~1 µs.
    return MIN_EMAIL_LENGTH <= len(text) <= MAX_EMAIL_LENGTH and _handle.search(text) is not None


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def email_key(email: str) -> str:
    """The identity of an email: ASCII letters folded to lower case.

    This is what PostgreSQL's lower() does under the "C" collation of the
    email column, so Python and the unique index agree on who is who.
    """
    # str.lower() is the fast path, and exact for ASCII.
    return email.lower() if email.isascii() else email.translate(_ASCII_LOWER)
