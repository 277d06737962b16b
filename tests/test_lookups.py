"""Coalesced lookups: one query for many callers, each with its own answer."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
import pytest
from msgspec.structs import replace
from starlette.applications import Starlette

from service import queries
from service.app import create_app
from service.lookups import Batcher, Creates, Reads
from service.schemas import NewUser, Stored
from service.settings import Settings
from tests.conftest import assert_problem, connect


async def seed(db: asyncpg.Pool, count: int) -> list[str]:
    emails = [f"User{n:04d}@Example.com" for n in range(count)]
    await db.executemany(
        "INSERT INTO users (name, email) VALUES ($1, $2)",
        [(f"name {n}", email) for n, email in enumerate(emails)],
    )
    return emails


async def test_lookups_in_one_turn_share_one_query(db: asyncpg.Pool, database_url: str) -> None:
    emails = await seed(db, 50)
    conn = await connect(database_url)
    queries: list[str] = []
    conn.add_query_logger(lambda record: queries.append(record.query))
    try:
        # One connection cannot run two queries at once: only coalescing passes.
        reads = Reads(conn)
        asked = [e.lower() for e in emails] + ["missing@example.com"]
        users = await asyncio.gather(*(reads.user.get(email) for email in asked))
    finally:
        await conn.close()
    assert len(queries) == 1
    assert [found.user.email if found else None for found in users] == [*emails, None]


async def test_pages_after_emails_in_one_turn_share_one_query(
    db: asyncpg.Pool, database_url: str
) -> None:
    emails = sorted(await seed(db, 40), key=str.lower)
    conn = await connect(database_url)
    queries: list[str] = []
    conn.add_query_logger(lambda record: queries.append(record.query))
    try:
        reads = Reads(conn)
        # One connection cannot run two queries at once: only coalescing passes.
        afters = [(emails[n].lower(), 5, n % 3) for n in range(0, 40, 4)]
        pages = await asyncio.gather(*(reads.page_after.get(key) for key in afters))
        # The same offset page, asked for at once, is read once.
        first = await asyncio.gather(*(reads.page_at.get((3, 0)) for _ in range(10)))
    finally:
        await conn.close()
    # asyncpg's own type introspection runs too; count the service's queries.
    assert len([query for query in queries if "FROM users" in query]) == 2
    for (after, size, skip), page in zip(afters, pages, strict=True):
        start = [e.lower() for e in emails].index(after) + 1 + skip
        assert [user.email for user in page] == emails[start : start + size]
    assert all([user.email for user in page] == emails[:3] for page in first)


async def test_many_user_lookups_in_one_turn_share_one_statement(
    db: asyncpg.Pool, database_url: str
) -> None:
    emails = [email.lower() for email in await seed(db, 30)]
    conn = await connect(database_url)
    statements: list[str] = []
    conn.add_query_logger(lambda record: statements.append(record.query))
    try:
        reads = Reads(conn)
        # One connection cannot run two queries at once: only coalescing passes.
        asked = [tuple(emails[n : n + 10]) for n in range(0, 25, 5)] + [("nobody@x.io",)]
        answers = await asyncio.gather(*(reads.handles.get(keys) for keys in asked))
    finally:
        await conn.close()
    assert len([query for query in statements if "FROM users" in query]) == 1
    for keys, found in zip(asked, answers, strict=True):
        assert [found[key].email.lower() for key in keys if key in found] == [
            key for key in keys if key != "nobody@x.io"
        ]


async def test_weighed_calls_fill_a_query_up_to_the_batch_and_are_never_split() -> None:
    asked: list[list[tuple[int, ...]]] = []

    async def answer(keys: list[tuple[int, ...]]) -> list[int]:
        asked.append(keys)
        return [len(key) for key in keys]

    batcher: Batcher[tuple[int, ...], int] = Batcher(answer, batch=500, weight=len)
    calls = [tuple(range(n, n + 200)) for n in range(3)]
    calls += [tuple(range(1000)), tuple(range(-5, 0)), tuple(range(-500, 0))]
    assert await asyncio.gather(*(batcher.get(keys) for keys in calls)) == [
        len(keys) for keys in calls
    ]
    # 200 + 200, then 200 (a third would pass 500), then 1,000 alone, whole,
    # then 5 and 500 (a query of 505 would pass it too).
    assert [[len(key) for key in keys] for keys in asked] == [[200, 200], [200], [1000], [5], [500]]


async def test_concurrent_page_requests_each_get_their_own_page(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    emails = sorted(await seed(db, 120), key=str.lower)
    paths = [f"/users?limit={n % 7 + 1}&offset={n}" for n in range(60)]
    paths += [f"/users?limit={n % 5 + 1}&after={emails[n]}" for n in range(60)]
    paths += [f"/users?limit=2&after={emails[n]}&offset={n % 4}" for n in range(20)]
    paths += ["/users?limit=3"] * 20
    responses = await asyncio.gather(*(client.get(path) for path in paths))
    for path, response in zip(paths, responses, strict=True):
        query = dict(part.split("=") for part in path.partition("?")[2].split("&"))
        size = int(query["limit"])
        start = int(query.get("offset", 0))
        if "after" in query:
            start += emails.index(query["after"]) + 1
        assert [user["email"] for user in response.json()] == emails[start : start + size], path


async def test_concurrent_requests_for_different_emails_each_get_their_own_user(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    emails = await seed(db, 300)
    asked = [email.upper() if n % 2 else email for n, email in enumerate(emails)]
    asked += [f"nobody{n}@example.com" for n in range(30)]
    responses = await asyncio.gather(*(client.get(f"/users/{email}") for email in asked))
    for email, response in zip(asked, responses, strict=True):
        if email.startswith("nobody"):
            assert response.status_code == 404
        else:
            assert response.status_code == 200
            assert response.json()["email"].lower() == email.lower()
            assert response.json()["name"] == f"name {int(email[4:8])}"


async def test_the_same_email_asked_many_times_at_once_answers_every_caller(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    await seed(db, 1)
    responses = await asyncio.gather(
        *(client.get("/users/user0000@example.com") for _ in range(50))
    )
    assert {response.status_code for response in responses} == {200}


async def test_a_read_after_a_write_does_not_join_a_query_already_under_way(
    db: asyncpg.Pool, database_url: str
) -> None:
    conn = await connect(database_url)
    answered = asyncio.Event()
    release = asyncio.Event()

    async def held_answer(keys: list[str]) -> list[Stored | None]:
        # The real query, whose answer is then held back: a caller joining
        # this batch late would get an answer from before its write.
        users = await queries.find_users_by_keys(conn, keys)
        answered.set()
        await release.wait()
        return users

    try:
        lookups = Batcher(held_answer)
        before = asyncio.ensure_future(lookups.get("late@example.com"))
        await answered.wait()
        await db.execute("INSERT INTO users (name, email) VALUES ('n', 'Late@Example.com')")
        after = asyncio.ensure_future(lookups.get("late@example.com"))
        await asyncio.sleep(0.05)
        release.set()
        assert await before is None
        user = await after
    finally:
        await conn.close()
    assert user is not None
    assert user.user.email == "Late@Example.com"


async def test_creates_in_one_turn_share_one_statement_and_each_get_their_answer(
    db: asyncpg.Pool, database_url: str
) -> None:
    await seed(db, 1)  # User0000@Example.com
    conn = await connect(database_url)
    statements: list[str] = []
    conn.add_query_logger(lambda record: statements.append(record.query))
    try:
        creates = Creates(conn)
        # One connection cannot run two statements at once: only coalescing passes.
        asked = ["a@x.io", "b@x.io", "A@X.IO", "user0000@example.com", "c@x.io", "b@x.io"]
        users = await asyncio.gather(
            *(creates.create(NewUser(name=f"n{n}", email=email)) for n, email in enumerate(asked))
        )
    finally:
        await conn.close()
    assert len([query for query in statements if "INSERT INTO users" in query]) == 1
    # The first create of an email wins, later ones in any case get None (a 409),
    # and an email already stored is None too.
    assert [found and (found.user.name, found.user.email) for found in users] == [
        ("n0", "a@x.io"),
        ("n1", "b@x.io"),
        None,
        None,
        ("n4", "c@x.io"),
        None,
    ]
    assert await db.fetchval("SELECT count(*) FROM users") == 4


async def test_concurrent_creates_of_different_emails_are_all_created(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    emails = [f"new{n}@example.com" for n in range(60)]
    responses = await asyncio.gather(
        *(client.post("/users", json={"name": f"n{n}", "email": e}) for n, e in enumerate(emails))
    )
    for n, (email, response) in enumerate(zip(emails, responses, strict=True)):
        assert response.status_code == 201, response.text
        assert response.json()["name"] == f"n{n}"
        assert response.headers["location"] == f"/users/{email}"
    assert await db.fetchval("SELECT count(*) FROM users") == 60


async def test_a_read_after_a_create_sees_the_new_user(client: httpx.AsyncClient) -> None:
    for n in range(30):
        email = f"fresh{n}@example.com"
        background = [client.get(f"/users/other{k}@example.com") for k in range(5)]
        created, *_ = await asyncio.gather(
            client.post("/users", json={"name": "n", "email": email}), *background
        )
        assert created.status_code == 201
        assert (await client.get(f"/users/{email}")).status_code == 200


@pytest.fixture
def impatient_app(settings: Settings) -> Starlette:
    return create_app(replace(settings, db_command_timeout=0.5))


async def test_a_failed_batched_query_fails_every_waiting_request_with_503(
    impatient_app: Starlette, database_url: str
) -> None:
    transport = httpx.ASGITransport(app=impatient_app)
    async with (
        impatient_app.router.lifespan_context(impatient_app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        blocker = await connect(database_url)
        try:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
                started = time.monotonic()
                responses = await asyncio.gather(
                    *(client.get(f"/users/u{n}@example.com") for n in range(40))
                )
                elapsed = time.monotonic() - started
        finally:
            await blocker.close()
        for response in responses:
            assert_problem(response, 503)
            assert response.headers["retry-after"] == "1"
        assert elapsed < 2
        # The lookups recover once the database answers again.
        assert (await client.get("/users/u1@example.com")).status_code == 404
