"""Idempotency-Key on POST /users and POST /users/bulk, against a real database."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest
from msgspec.structs import replace

from service.settings import Settings
from tests.conftest import assert_problem, client_of

ANN = {"name": "Ann", "email": "ann@example.com"}
STORED = ("location", "etag", "content-type")


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


async def count(db: asyncpg.Pool) -> int:
    total: int = await db.fetchval("SELECT count(*) FROM users")
    return total


async def test_a_retry_gets_the_stored_201_byte_for_byte_and_writes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    first = await client.post("/users", json=ANN, headers=keyed("k1"))
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    await client.patch("/users/ann@example.com", json={"name": "Changed since"})
    again = await client.post("/users", json=ANN, headers=keyed("k1"))
    assert again.status_code == 201
    assert again.content == first.content
    assert [again.headers[name] for name in STORED] == [first.headers[name] for name in STORED]
    assert again.headers["idempotent-replayed"] == "true"
    assert await count(db) == 1


async def test_a_409_the_database_gave_is_stored_and_replayed(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    assert (await client.post("/users", json=ANN)).status_code == 201
    first = await client.post("/users", json=ANN, headers=keyed("k1"))
    assert_problem(first, 409)
    again = await client.post("/users", json=ANN, headers=keyed("k1"))
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    # Once the user with the email is gone, the stored refusal no longer names it.
    await client.delete("/users/ann@example.com")
    after = await client.post("/users", json=ANN, headers=keyed("k1"))
    assert "conflicts" not in assert_problem(after, 409)
    assert after.headers["idempotent-replayed"] == "true"
    assert await count(db) == 0


async def test_bulk_retries_get_the_stored_answer_and_insert_nothing_more(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    users = [{"name": "n", "email": f"u{n}@x.io"} for n in range(3)]
    first = await client.post("/users/bulk", json=users, headers=keyed("bulk"))
    again = await client.post("/users/bulk", json=users, headers=keyed("bulk"))
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.content == first.content == b'{"inserted":3}'
    assert again.headers["idempotent-replayed"] == "true"
    assert await count(db) == 3
    # A refused load is stored too, and leaves the transaction usable for it.
    refused = await client.post("/users/bulk", json=users, headers=keyed("bulk 2"))
    assert_problem(refused, 409)
    replayed = await client.post("/users/bulk", json=users, headers=keyed("bulk 2"))
    assert replayed.content == refused.content
    assert await count(db) == 3


@pytest.mark.parametrize(
    ("path", "body"),
    [("/users", {**ANN, "name": "Other"}), ("/users/bulk", [ANN])],
    ids=["another body", "another path"],
)
async def test_a_key_used_again_with_another_request_is_422(
    client: httpx.AsyncClient, db: asyncpg.Pool, path: str, body: object
) -> None:
    assert (await client.post("/users", json=ANN, headers=keyed("k1"))).status_code == 201
    assert_problem(await client.post(path, json=body, headers=keyed("k1")), 422)
    assert await count(db) == 1


@pytest.mark.parametrize(
    "key", [b"", b"x" * 256, b"caf\xc3\xa9", b"tab\there"], ids=["empty", "long", "utf-8", "tab"]
)
async def test_a_key_that_is_not_1_to_255_printable_ascii_is_400(
    client: httpx.AsyncClient, db: asyncpg.Pool, key: bytes
) -> None:
    for path, body in [("/users", ANN), ("/users/bulk", [ANN])]:
        response = await client.post(path, json=body, headers=[(b"Idempotency-Key", key)])
        assert_problem(response, 400)
    assert await count(db) == 0


@pytest.mark.parametrize("second", ["k2", "k1"], ids=["another", "the same"])
async def test_a_key_sent_on_two_field_lines_is_400(
    client: httpx.AsyncClient, db: asyncpg.Pool, second: str
) -> None:
    headers = [("Idempotency-Key", "k1"), ("Idempotency-Key", second)]
    for path, body in [("/users", ANN), ("/users/bulk", [ANN])]:
        problem = assert_problem(await client.post(path, json=body, headers=headers), 400)
        assert "once" in problem["detail"]
    assert await count(db) == 0


async def test_a_key_of_255_printable_characters_is_accepted(client: httpx.AsyncClient) -> None:
    key = "".join(chr(32 + n % 95) for n in range(255))
    assert (await client.post("/users", json=ANN, headers=keyed(key))).status_code == 201


async def test_twenty_concurrent_requests_with_one_key_write_once(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    responses = await asyncio.gather(
        *(client.post("/users", json=ANN, headers=keyed("race")) for _ in range(20))
    )
    created = [response for response in responses if response.status_code == 201]
    busy = [response for response in responses if response.status_code != 201]
    assert created
    assert len({response.content for response in created}) == 1
    for response in busy:
        assert "in progress" in assert_problem(response, 409)["detail"]
    assert await count(db) == 1
    later = [await client.post("/users", json=ANN, headers=keyed("race")) for _ in range(3)]
    assert {(response.status_code, response.content) for response in later} == {
        (201, created[0].content)
    }


async def test_callers_with_different_tokens_never_see_each_others_keys(
    settings: Settings, db: asyncpg.Pool
) -> None:
    tokens = ("first-token-0123456789", "second-token-0123456789")
    async with client_of(replace(settings, api_tokens=tokens)) as client:
        first, second = ({"Authorization": f"Bearer {token}", **keyed("k1")} for token in tokens)
        assert (await client.post("/users", json=ANN, headers=first)).status_code == 201
        other = await client.post("/users", json=ANN, headers=second)
        assert_problem(other, 409)  # its own attempt, not the first caller's answer
        assert "idempotent-replayed" not in other.headers
        assert (await client.post("/users", json=ANN, headers=first)).status_code == 201


async def test_an_expired_key_runs_again_for_real(settings: Settings, db: asyncpg.Pool) -> None:
    async with client_of(replace(settings, idempotency_ttl=1)) as client:
        assert (await client.post("/users", json=ANN, headers=keyed("k1"))).status_code == 201
        await asyncio.sleep(1.1)
        again = await client.post("/users", json=ANN, headers=keyed("k1"))
        assert_problem(again, 409)
        assert "idempotent-replayed" not in again.headers


async def test_expired_keys_are_purged_in_bounded_batches_by_keyed_writes(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    await db.execute(
        "INSERT INTO idempotency_keys (caller, key, route, fingerprint, status, headers, body, "
        "expires_at) SELECT '', 'old ' || n, '/users', '', 201, '[]', '', now() - interval '1 s' "
        "FROM generate_series(1, 150) AS n"
    )
    assert (await client.post("/users", json=ANN, headers=keyed("new"))).status_code == 201
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 1 + 50
    assert (await client.post("/users/bulk", json=[], headers=keyed("new 2"))).status_code == 201
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key LIKE 'old%'") == 0


async def test_a_503_is_not_stored_and_the_retry_runs_for_real(
    settings: Settings, db: asyncpg.Pool
) -> None:
    # A lock on the table holds the keyed write past DB_COMMAND_TIMEOUT: a 503
    # with nothing written, as when the database goes away mid-request.
    blocker = await asyncpg.connect(settings.database_url)
    try:
        async with client_of(replace(settings, db_command_timeout=0.5)) as client:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
                first = await client.post("/users", json=ANN, headers=keyed("k1"))
            assert_problem(first, 503)
            assert "retry-after" in first.headers
            again = await client.post("/users", json=ANN, headers=keyed("k1"))
            assert again.status_code == 201
            assert "idempotent-replayed" not in again.headers
            assert await count(db) == 1
    finally:
        await blocker.close()
