"""Validation rules of user bodies, as a caller meets them: 422 problems."""

from __future__ import annotations

import asyncio
import json
import re
import shutil

import asyncpg
import httpx
import msgspec
import pytest

from service.schemas import Email, UserHandle, email_key, is_email, is_handle
from tests.conftest import assert_problem

VALID_EMAILS = [
    "a@b",
    "ann@example.com",
    "first.last+tag@sub.example.co.uk",
    "jörg@bücher.de",
    "o'brien@example.ie",
    "a/b@example.com",
    "x" * 64 + "@example.com",
    "a@" + "d" * 252,
]

INVALID_EMAILS = [
    "",
    "ab",
    "no-at-sign",
    "@example.com",
    "ann@",
    "a@b@example.com",
    "ann @example.com",
    "ann@exam ple.com",
    "ann\t@example.com",
    "ann\u00a0@example.com",
    "ann@example.com\u2003",
    "ann\n@example.com",
    "ann\x00@example.com",
    "ann\x7f@example.com",
    "ann\x85@example.com",
    "ann@example.com/x",
    "x" * 65 + "@example.com",
    "a@" + "d" * 253,
    *(
        f"a{char}nn@exam{char}ple.com"
        for char in "\ufeff\u200b\u200c\u200d\u2060\u200e\u200f\u061c\u202a\u202b"
        "\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u1680\u2000\u200a\u2028\u2029"
        "\u202f\u205f\u3000\x1c\x1f"
    ),
    "\ufeffbom@example.com",
    "ann@example.com\ufeff",
]

INVALID_NAMES = [
    "",
    "x" * 201,
    "nul\x00byte",
    "bell\x07",
    "tab\there",
    "line\nbreak",
    "del\x7f",
    "c1\x9b",
    # Bidirectional embeddings, overrides and isolates reorder the text after them.
    *(f"ann{char}evil" for char in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"),
]
# Joiners and bidirectional marks, which names in many scripts need.
NAMES_WITH_FORMAT_CHARACTERS = [
    "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian, with a ZWNJ
    "\U0001f469\u200d\U0001f4bb",  # one emoji, joined by a ZWJ
    "\u05e9\u05dc\u05d5\u05dd\u200f 2",  # Hebrew, with a right-to-left mark
]


@pytest.mark.parametrize("email", VALID_EMAILS)
async def test_valid_emails_are_accepted(client: httpx.AsyncClient, email: str) -> None:
    response = await client.post("/users", json={"name": "Ann", "email": email})
    assert response.status_code == 201, response.text
    assert (await client.get(response.headers["location"])).json()["email"] == email


@pytest.mark.parametrize("email", INVALID_EMAILS)
async def test_invalid_emails_are_422_naming_the_field(
    client: httpx.AsyncClient, db: asyncpg.Pool, email: str
) -> None:
    response = await client.post("/users", json={"name": "Ann", "email": email})
    problem = assert_problem(response, 422)
    assert problem["field"] == "$.email"
    assert await db.fetchval("SELECT count(*) FROM users") == 0


@pytest.mark.parametrize(
    "name",
    ["A", "x" * 200, "Zoë Ångström", "李小龍", "Robert'); --", *NAMES_WITH_FORMAT_CHARACTERS],
)
async def test_valid_names_are_accepted(client: httpx.AsyncClient, name: str) -> None:
    response = await client.post("/users", json={"name": name, "email": "a@example.com"})
    assert response.status_code == 201, response.text
    assert response.json()["name"] == name


@pytest.mark.parametrize("name", INVALID_NAMES)
async def test_invalid_names_are_422_naming_the_field(client: httpx.AsyncClient, name: str) -> None:
    response = await client.post("/users", json={"name": name, "email": "a@example.com"})
    assert assert_problem(response, 422)["field"] == "$.name"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Ann"}, None),
        ({"email": "a@example.com"}, None),
        ({"name": None, "email": "a@example.com"}, "$.name"),
        ({"name": 5, "email": "a@example.com"}, "$.name"),
        ({"name": ["Ann"], "email": "a@example.com"}, "$.name"),
        ({"name": "Ann", "email": 10**30}, "$.email"),
        ({"name": "Ann", "email": "a@example.com", "admin": True}, None),
        ([{"name": "Ann", "email": "a@example.com"}], None),
        ("Ann", None),
        (7, None),
    ],
)
async def test_wrong_shapes_and_unknown_fields_are_422(
    client: httpx.AsyncClient, body: object, field: str | None
) -> None:
    problem = assert_problem(await client.post("/users", json=body), 422)
    if field is not None:
        assert problem["field"] == field


async def test_unknown_field_is_named_in_the_detail(client: httpx.AsyncClient) -> None:
    body = {"name": "Ann", "email": "a@example.com", "admin": True}
    problem = assert_problem(await client.post("/users", json=body), 422)
    assert "admin" in problem["detail"]


HANDLES = [
    "0b9d8a52-5c1e-4d8e-9a0a-6f1f1d2b3c4d",
    "0B9D8A52-5C1E-4D8E-9A0A-6F1F1D2B3C4D",
    "0b9d8a52-5c1e-4d8e-9a0a-6f1f1d2b3c4dx",
    "{0b9d8a52-5c1e-4d8e-9a0a-6f1f1d2b3c4d}",
    "0b9d8a525c1e4d8e9a0a6f1f1d2b3c4d",
    "0b9d8a52-5c1e-4d8e-9a0a-6f1f1d2b3c4d\n",
    "a@b\n",
    "a@" + "d" * 253,
    "nope",
]


@pytest.mark.parametrize("text", [*VALID_EMAILS, *INVALID_EMAILS, *HANDLES])
def test_is_handle_agrees_with_the_user_handle_constraint(text: str) -> None:
    try:
        msgspec.convert(text, UserHandle)
    except msgspec.ValidationError:
        assert not is_handle(text)
    else:
        assert is_handle(text)


def test_email_key_folds_ascii_letters_only() -> None:
    assert email_key("Ann@Example.COM") == "ann@example.com"
    assert email_key("JÖRG@X.DE") == "jÖrg@x.de"


async def test_email_identity_matches_the_database(db: asyncpg.Pool) -> None:
    for email in ["Ann@Example.COM", "JÖRG@Bücher.DE", "İstanbul@x.tr"]:
        assert await db.fetchval('SELECT lower($1::text COLLATE "C")', email) == email_key(email)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/users", {"name": "x"}, "$.email"),
        ("/users", {"email": "a@b.c"}, "$.name"),
        ("/users", {"name": "x", "email": "a@b.c", "role": "admin"}, "$.role"),
        ("/users", [], "$"),
        ("/users/bulk", [{"name": "x"}], "$[0].email"),
        (
            "/users/bulk",
            [{"name": "x", "email": "a@b.c"}, {"name": "y", "email": "c@d.e", "z": 1}],
            "$[1].z",
        ),
        ("/users/bulk", {}, "$"),
        ("/users/a@b.c", {"name": "x", "nickname": "y"}, "$.nickname"),
        ("/users/a@b.c", {}, "$"),
        ("/users/a@b.c", "x", "$"),
    ],
)
async def test_every_422_about_the_body_names_the_exact_path(
    client: httpx.AsyncClient, path: str, body: object, field: str
) -> None:
    await client.post("/users", json={"name": "A", "email": "a@b.c"})
    method = "PATCH" if path.startswith("/users/a@") else "POST"
    problem = assert_problem(await client.request(method, path, json=body), 422)
    assert problem["field"] == field
    assert problem["detail"].endswith(f" at {field}")


async def test_the_database_refuses_what_the_api_refuses(db: asyncpg.Pool) -> None:
    insert = "INSERT INTO users (name, email) VALUES ($1, $2)"
    for email in INVALID_EMAILS:
        if "\x00" not in email:  # text cannot hold NUL at all
            with pytest.raises(asyncpg.CheckViolationError):
                await db.execute(insert, "Ann", email)
    for name in INVALID_NAMES:
        if "\x00" not in name:
            with pytest.raises(asyncpg.CheckViolationError):
                await db.execute(insert, name, "ann@example.com")
    for number, email in enumerate(VALID_EMAILS):
        await db.execute(insert, NAMES_WITH_FORMAT_CHARACTERS[number % 3], email)


# ECMA-262's WhiteSpace and LineTerminator, what "\s" means to a JavaScript client.
ECMA_SPACE = {*"\t\n\v\f\r \u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff"} | {
    chr(code) for code in range(0x2000, 0x200B)
}
BMP = [chr(code) for code in range(0x10000) if not 0xD800 <= code <= 0xDFFF]
# Each BMP character in the local part and in the domain, as one string for node.
NODE_CHECK = """
const [pattern, flags] = JSON.parse(process.argv[1]);
const re = new RegExp(pattern, flags);
const accepted = [];
for (let code = 0; code < 0x10000; code++) {
  if (code >= 0xd800 && code <= 0xdfff) continue;
  const c = String.fromCharCode(code);
  accepted.push([re.test("a" + c + "@example.com"), re.test("a@ex" + c + "ample.com")]);
}
console.log(JSON.stringify(accepted));
"""


def accepted_by_python(pattern: str) -> list[list[bool]]:
    compiled = re.compile(pattern)
    return [
        [bool(compiled.search(f"a{c}@example.com")), bool(compiled.search(f"a@ex{c}ample.com"))]
        for c in BMP
    ]


@pytest.mark.parametrize("flags", ["", "u"])
async def test_javascript_reads_the_served_email_pattern_as_python_does(
    client: httpx.AsyncClient, flags: str
) -> None:
    document = (await client.get("/openapi.json")).json()
    pattern = document["components"]["schemas"]["NewUser"]["properties"]["email"]["pattern"]
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    process = await asyncio.create_subprocess_exec(
        node, "-e", NODE_CHECK, json.dumps([pattern, flags]), stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    assert json.loads(stdout) == accepted_by_python(pattern)


def test_the_email_pattern_refuses_every_ecma_262_space_and_invisible_character() -> None:
    invisible = {*"\u200b\u200c\u200d\u2060\ufeff\u200e\u200f\u061c"} | {
        chr(code) for code in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
    }
    email = re.compile(msgspec.json.schema(Email)["pattern"])
    for char in ECMA_SPACE | invisible:
        assert not email.search(f"a{char}@example.com"), hex(ord(char))
        assert not email.search(f"a@ex{char}ample.com"), hex(ord(char))


@pytest.mark.parametrize("text", [*VALID_EMAILS, *INVALID_EMAILS, *HANDLES])
def test_is_email_agrees_with_the_email_constraint(text: str) -> None:
    try:
        msgspec.convert(text, Email)
    except msgspec.ValidationError:
        assert not is_email(text)
    else:
        assert is_email(text)
