"""The feed of everything (GET /changes): users', groups' and memberships' changes in one order."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from httpx_sse import aconnect_sse
from msgspec.structs import replace
from starlette.applications import Starlette

from service.scopes import ScopeName
from service.settings import Settings
from tests.conftest import Service, assert_problem, client_of
from tests.test_changes import (
    all_users,
    as_caller,
    client_entry,
    next_events,
    pg_dump,
    purge,
)
from tests.test_changes import follow as changes_follow
from tests.test_changes import page as changes_page

Change = dict[str, Any]


async def page(client: httpx.AsyncClient, after: str | None = None, **params: int) -> Any:
    return await changes_page(client, after, feed="/changes", **params)


async def now(client: httpx.AsyncClient) -> str:
    cursor: str = (await page(client, "now"))["next"]
    return cursor


async def follow(
    client: httpx.AsyncClient, after: str, *, count: int = 0, limit: int = 1000
) -> tuple[list[Change], str]:
    """tests.test_changes.follow, on the feed of everything."""
    return await changes_follow(client, after, count=count, limit=limit, feed="/changes")


def summary(change: Change) -> tuple[str, ...]:
    if change["kind"] == "membership":
        return ("membership", change["type"], change["group_id"], change["user_id"])
    return (change["kind"], change["type"], change["id"])


async def create_group(client: httpx.AsyncClient, name: str) -> str:
    response = await client.post("/groups", json={"name": name})
    assert response.status_code == 201, response.text
    id: str = response.json()["id"]
    return id


async def members(client: httpx.AsyncClient, group: str, **change: list[str]) -> Any:
    response = await client.post(f"/groups/{group}/members", json=change)
    assert response.status_code == 200, response.text
    return response.json()


async def test_users_groups_and_members_come_in_one_order_each_naming_its_kind(
    client: httpx.AsyncClient,
) -> None:
    start = await now(client)
    ann = (await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})).json()
    group = await create_group(client, "Eng")
    await members(client, group, add=["ann@x.io"])
    renamed = await client.patch(f"/groups/{group}", json={"name": "Platform"})
    await members(client, group, remove=["ann@x.io"])
    changes, _ = await follow(client, start, count=5)
    assert [summary(c) for c in changes] == [
        ("user", "created", ann["id"]),
        ("group", "created", group),
        ("membership", "added", group, ann["id"]),
        ("group", "updated", group),
        ("membership", "removed", group, ann["id"]),
    ]
    assert changes[0]["user"] == ann
    assert [c.get("version") for c in changes] == [1, 1, None, 2, None]
    assert changes[3]["group"] == renamed.json()
    assert changes[1]["group"]["name"] == "Eng"
    assert len({c["cursor"] for c in changes}) == 5
    # The cursors are the users' feed's: the user's change has the same one there.
    users = (await client.get("/users/changes", params={"after": start})).json()
    assert [c["cursor"] for c in users["changes"]] == [changes[0]["cursor"]]


async def test_the_users_feed_answers_as_before_whatever_groups_do(
    client: httpx.AsyncClient,
) -> None:
    start = (await client.get("/users/changes", params={"after": "now"})).json()["next"]
    await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    group = await create_group(client, "Eng")
    await members(client, group, add=["ann@x.io"])
    assert (await client.delete(f"/groups/{group}")).status_code == 204
    await follow(client, start, count=3)  # all readable
    response = await client.get("/users/changes", params={"after": start})
    body = response.json()
    [change] = body["changes"]
    # Byte for byte the users' feed of before: its keys, in its order, no kind.
    assert list(change) == [
        "cursor", "type", "id", "version", "at", "actor", "request_id", "user",
    ]  # fmt: skip
    assert response.content.startswith(b'{"changes":[{"cursor":')
    # And its end is its own: past the user's change, not past the groups'.
    assert body["next"] == change["cursor"]
    assert (await client.get("/users/changes", params={"after": body["next"]})).json()[
        "changes"
    ] == []


async def test_a_deleted_group_leaves_one_change_with_its_id_and_nothing_in_a_dump(
    client: httpx.AsyncClient, database_url: str
) -> None:
    start = await now(client)
    name, secret = "Zanzibar Skunkworks", "cost-7f3e9a"
    created = await client.post(
        "/groups", json={"name": name, "attributes": {"cost_center": secret}}
    )
    group = created.json()["id"]
    await client.patch(f"/groups/{group}", json={"name": name + " II"})
    await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    await members(client, group, add=["ann@x.io"])
    kept = await create_group(client, "Kept")
    await members(client, kept, add=["ann@x.io"])
    assert (await client.delete(f"/groups/{group}")).status_code == 204
    changes, _ = await follow(client, start, count=5)
    mine = [c for c in changes if group in (c.get("id"), c.get("group_id"))]
    assert [(c["kind"], c["type"], c["version"], c["group"]) for c in mine] == [
        ("group", "deleted", 3, None)
    ]
    # The other group's changes stay.
    assert [summary(c) for c in changes if kept in (c.get("id"), c.get("group_id"))] == [
        ("group", "created", kept),
        ("membership", "added", kept, changes[0]["id"]),
    ]
    dump = pg_dump(database_url)
    assert "Kept" in dump  # the dump holds the feed's data
    for text in (name, secret):
        for spelt in (text, text.upper()):
            assert spelt not in dump


async def test_a_user_s_delete_ends_its_memberships_with_its_own_deleted_change(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    group = await create_group(client, "Eng")
    await members(client, group, add=["ann@x.io"])
    start = await now(client)
    ann = (await client.get("/users/ann@x.io")).json()["id"]
    assert (await client.delete("/users/ann@x.io")).status_code == 204
    changes, _ = await follow(client, start, count=1)
    # `now` may lie before the earlier writes (an older transaction ran): those
    # come again; after them, the user's delete alone.
    assert summary(changes[-1]) == ("user", "deleted", ann)
    assert all(c["type"] != "removed" for c in changes)
    assert (await client.get(f"/groups/{group}/members")).json() == []


async def test_the_feed_of_everything_needs_users_changes_and_groups_read(
    settings: Settings, db: asyncpg.Pool
) -> None:
    clients = (
        client_entry("feed", {"users:changes"}),
        client_entry("groups", {"groups:read"}),
        client_entry("both", {"users:changes", "groups:read"}),
    )
    async with client_of(replace(settings, api_clients=clients)) as client:
        assert (await client.get("/changes")).status_code == 401
        for name, status in (("feed", 403), ("groups", 403), ("both", 200)):
            response = await client.get("/changes", headers=as_caller(name))
            assert response.status_code == status, response.text
            if status == 403:
                assert response.headers["www-authenticate"].endswith(
                    'scope="users:changes groups:read"'
                )
        assert (await client.get("/users/changes", headers=as_caller("feed"))).status_code == 200


async def test_a_long_poll_is_woken_by_a_membership_change_and_one_of_users_is_not(
    client: httpx.AsyncClient, app: Starlette
) -> None:
    await asyncio.wait_for(app.state.watch.listening.wait(), 10)
    await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    group = await create_group(client, "Eng")
    start = await now(client)
    users_start = (await client.get("/users/changes", params={"after": "now"})).json()["next"]
    poll = asyncio.ensure_future(page(client, start, wait=20))
    users_poll = asyncio.ensure_future(
        client.get("/users/changes", params={"after": users_start, "wait": 2})
    )
    await asyncio.sleep(0.3)
    assert not poll.done()  # held while nothing is new
    await members(client, group, add=["ann@x.io"])
    committed = time.monotonic()
    body = await asyncio.wait_for(poll, 10)
    assert [c["type"] for c in body["changes"]] == ["added"]
    # Woken by the notification, well before the watch's once-a-second poll.
    assert time.monotonic() - committed < 0.8
    # The users' long poll waits its whole time out: nothing of users changed.
    assert (await users_poll).json() == {"changes": [], "next": users_start}


async def test_a_cursor_the_purge_has_passed_is_410_but_a_users_one_only_past_groups_is_not(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    start = await now(client)
    users_start = (await client.get("/users/changes", params={"after": "now"})).json()["next"]
    group = await create_group(client, "Eng")
    await members(client, group, add=["ann@x.io"])
    await follow(client, start, count=2)
    await asyncio.sleep(0.01)
    assert await purge(db, older_than=0, batch=100) == 3
    problem = assert_problem(await client.get("/changes", params={"after": start}), 410)
    assert problem["field"] == "after"
    assert "groups" in problem["detail"]
    headers = {"Accept": "text/event-stream", "Last-Event-ID": start}
    problem = assert_problem(await client.get("/changes", headers=headers), 410)
    assert problem["field"] == "Last-Event-ID"
    # The users' feed lost none of its changes after its cursor: it goes on.
    assert (await client.get("/users/changes", params={"after": users_start})).json() == {
        "changes": [],
        "next": users_start,
    }
    # From the oldest kept, where the purge stands, nothing was missed.
    oldest = await page(client)
    assert oldest["changes"] == []
    await members(client, group, remove=["ann@x.io"])
    changes, _ = await follow(client, oldest["next"], count=1)
    assert [c["type"] for c in changes] == ["removed"]


async def test_a_stream_names_each_event_by_kind_and_type(
    db: asyncpg.Pool, tmp_path: Path, database_url: str, services: list[Service]
) -> None:
    service = Service(tmp_path, {"DATABASE_URL": database_url, "GRACEFUL_TIMEOUT": "20"})
    services.append(service)
    service.wait_ready()
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        start = await now(client)
        headers = {"Accept": "text/event-stream"}
        async with aconnect_sse(
            client, "GET", "/changes", params={"after": start}, headers=headers
        ) as source:
            events = source.aiter_sse()
            await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
            group = await create_group(client, "Eng")
            await members(client, group, add=["ann@x.io"])
            # Read before the delete, which erases the group's earlier changes.
            streamed = await next_events(events, 3)
            await client.delete(f"/groups/{group}")
            streamed += await next_events(events, 1)
    assert [event.event for event in streamed] == [
        "user.created", "group.created", "membership.added", "group.deleted",
    ]  # fmt: skip
    assert [event.json()["kind"] for event in streamed] == ["user", "group", "membership", "group"]


# The copy: a consumer follows the feed of a real server while writers race.
async def seed_users_and_groups(client: httpx.AsyncClient) -> list[str]:
    """The 40 users write_users_and_groups writes to, and six groups holding half of
    them; the groups' ids."""
    users = [{"name": "s", "email": f"w{w}-{n}@x.io"} for w in range(4) for n in range(10)]
    assert (await client.post("/users/bulk", json=users)).status_code == 201
    groups = [await create_group(client, f"seed{n}") for n in range(6)]
    for group in groups:
        await members(client, group, add=[user["email"] for user in users[::2]])
    return groups


async def write_users_and_groups(
    client: httpx.AsyncClient, writer: int, groups: list[str], stop: asyncio.Event
) -> None:
    """Creates and deletes of users, creates, renames and deletes of groups, and
    member adds and removes among 40 emails, until stopped."""
    rng = random.Random(writer)  # noqa: S311  # a reproducible load, not a secret
    for n in range(10_000):  # bounded; ends at stop
        if stop.is_set():
            return
        count = rng.randrange(1, 8)
        emails = [f"w{rng.randrange(4)}-{rng.randrange(10)}@x.io" for _ in range(count)]
        group = rng.choice(groups)
        action = rng.choices(
            ("user", "delete user", "group", "rename", "delete group", "add", "remove"),
            weights=(4, 1, 1, 2, 1, 8, 8),
        )[0]
        if action == "user":
            await client.post("/users", json={"name": f"n{n}", "email": emails[0]})
        elif action == "delete user":
            await client.delete(f"/users/{emails[0]}")
        elif action == "group":
            response = await client.post("/groups", json={"name": f"g{writer}-{n}"})
            if response.status_code == 201:
                groups.append(response.json()["id"])
        elif action == "rename":
            await client.patch(f"/groups/{group}", json={"name": f"r{writer}-{n}"})
        elif action == "delete group" and len(groups) > 3:  # some left to choose from
            if (await client.delete(f"/groups/{group}")).status_code == 204:
                groups.remove(group)
        elif action in ("add", "remove"):
            await client.post(f"/groups/{group}/members", json={action: sorted(set(emails))})


class Copy:
    """What a consumer keeps: users and groups by id with their versions (a deleted
    one's too), and the memberships, applied by the documented rules."""

    def __init__(self) -> None:
        self.users: dict[str, tuple[int, Change | None]] = {}
        self.groups: dict[str, tuple[int, Change | None]] = {}
        self.members: set[tuple[str, str]] = set()
        self.applied: set[tuple[str, str]] = set()  # the kinds and types seen

    def apply(self, change: Change) -> None:
        self.applied.add((change["kind"], change["type"]))
        if change["kind"] == "membership":
            pair = (change["group_id"], change["user_id"])
            if change["type"] == "removed":
                self.members.discard(pair)
            elif self.held(self.groups, pair[0]) and self.held(self.users, pair[1]):
                self.members.add(pair)
            return
        held = self.users if change["kind"] == "user" else self.groups
        if change["version"] > held.get(change["id"], (0, None))[0]:
            held[change["id"]] = (change["version"], change[change["kind"]])
        if change["type"] == "deleted":
            position = 0 if change["kind"] == "group" else 1
            self.members = {pair for pair in self.members if pair[position] != change["id"]}

    @staticmethod
    def held(things: dict[str, tuple[int, Change | None]], id: str) -> bool:
        """Not known to be deleted: a member change may come before its user's create."""
        version, thing = things.get(id, (0, None))
        return version == 0 or thing is not None

    def live(self, things: dict[str, tuple[int, Change | None]]) -> dict[str, Change]:
        return {id: thing for id, (_, thing) in things.items() if thing is not None}


async def all_groups(client: httpx.AsyncClient) -> tuple[list[Change], set[tuple[str, str]]]:
    """Every group, and its members as (group, user) pairs."""
    groups: list[Change] = []
    url: str | None = "/groups?limit=7"
    while url is not None:
        response = await client.get(url)
        groups += response.json()
        link = response.headers.get("link")
        url = None if link is None else link.partition("<")[2].partition(">")[0]
    pairs: set[tuple[str, str]] = set()
    for group in groups:
        url = f"/groups/{group['id']}/members?limit=5"
        while url is not None:
            response = await client.get(url)
            if response.status_code == 404:  # deleted meanwhile
                break
            pairs |= {(group["id"], user["id"]) for user in response.json()}
            link = response.headers.get("link")
            url = None if link is None else link.partition("<")[2].partition(">")[0]
    return groups, pairs


def test_a_copy_of_users_groups_and_members_kept_while_writers_race_equals_the_tables(
    db: asyncpg.Pool, tmp_path: Path, database_url: str, services: list[Service]
) -> None:
    service = Service(tmp_path, {"DATABASE_URL": database_url, "WEB_CONCURRENCY": "2"})
    services.append(service)
    service.wait_ready()

    async def race() -> None:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            groups = await seed_users_and_groups(client)
            stop = asyncio.Event()
            writers = [
                asyncio.create_task(write_users_and_groups(client, n, groups, stop))
                for n in range(6)
            ]
            try:
                await asyncio.sleep(0.3)
                # The recipe: the present position, then every user, group and
                # member, then the feed from there.
                after = await now(client)
                copy = Copy()
                for user in await all_users(client, limit=13):
                    copy.users[user["id"]] = (0, user)
                listed, pairs = await all_groups(client)
                for listed_group in listed:
                    copy.groups[listed_group["id"]] = (0, listed_group)
                copy.members = pairs
                for _ in range(10):
                    changes, after = await follow(client, after, limit=50)
                    for change in changes:
                        copy.apply(change)
                    await asyncio.sleep(0.1)
            finally:
                stop.set()
                await asyncio.gather(*writers)
            # Every writer has stopped: a change written now lies after all of theirs.
            marker = await create_group(client, "marker")
            changes, _ = await follow(client, after, count=1)
            while changes[-1].get("id") != marker:
                more, _ = await follow(client, changes[-1]["cursor"], count=1)
                changes += more
            for change in changes:
                copy.apply(change)
            table_groups, table_pairs = await all_groups(client)
            assert copy.live(copy.users) == {u["id"]: u for u in await all_users(client)}
            assert copy.live(copy.groups) == {g["id"]: g for g in table_groups}
            assert copy.members == table_pairs
            # The race made every kind of change while the consumer followed it.
            assert copy.applied == {
                ("user", "created"), ("user", "deleted"), ("group", "created"),
                ("group", "updated"), ("group", "deleted"), ("membership", "added"),
                ("membership", "removed"),
            }  # fmt: skip

    asyncio.run(race())


def by_ops(request: int) -> dict[str, str]:
    """The headers of the client ops's request numbered `request`."""
    return as_caller("ops", f"request-{request}-0123456789abcdef")


def request_ids(changes: list[Change]) -> list[tuple[str, str, str | None, int | None]]:
    return [
        (c["kind"], c["type"], c["actor"], c["request_id"] and int(c["request_id"].split("-")[1]))
        for c in changes
    ]


async def test_group_and_member_changes_name_their_caller_and_request(
    settings: Settings, db: asyncpg.Pool
) -> None:
    scopes: set[ScopeName] = {"users:create", "users:changes", "groups:read", "groups:write"}
    async with client_of(replace(settings, api_clients=(client_entry("ops", scopes),))) as client:
        client.headers.update(as_caller("ops"))
        start = await now(client)
        await client.post("/users", json={"name": "Ann", "email": "ann@x.io"}, headers=by_ops(1))
        id = (await client.post("/groups", json={"name": "Eng"}, headers=by_ops(2))).json()["id"]
        await client.post(f"/groups/{id}/members", json={"add": ["ann@x.io"]}, headers=by_ops(3))
        await client.post(f"/groups/{id}/members", json={"remove": ["ann@x.io"]}, headers=by_ops(4))
        await client.patch(f"/groups/{id}", json={"name": "X"}, headers=by_ops(5))
        await client.delete(f"/groups/{id}", headers=by_ops(6))
        changes, _ = await follow(client, start, count=2)
        # The user's change, then the group's delete: its earlier changes went with it.
        assert request_ids(changes) == [
            ("user", "created", "ops", 1),
            ("group", "deleted", "ops", 6),
        ]
        other = (await client.post("/groups", json={"name": "K"}, headers=by_ops(7))).json()["id"]
        await client.post(f"/groups/{other}/members", json={"add": ["ann@x.io"]}, headers=by_ops(8))
        await client.patch(f"/groups/{other}", json={"name": "L"}, headers=by_ops(9))
        more, _ = await follow(client, changes[-1]["cursor"], count=3)
        assert request_ids(more) == [
            ("group", "created", "ops", 7),
            ("membership", "added", "ops", 8),
            ("group", "updated", "ops", 9),
        ]


async def test_scim_group_writes_name_their_caller_and_request(
    settings: Settings, db: asyncpg.Pool
) -> None:
    scopes: set[ScopeName] = {"scim", "users:create", "users:changes", "groups:read"}
    async with client_of(replace(settings, api_clients=(client_entry("idp", scopes),))) as client:
        client.headers.update(as_caller("idp"))
        start = await now(client)
        user = (await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})).json()
        group = "urn:ietf:params:scim:schemas:core:2.0:Group"
        created = await client.post(
            "/scim/v2/Groups",
            json={"schemas": [group], "displayName": "Eng", "members": [{"value": user["id"]}]},
            headers=as_caller("idp", "request-2-0123456789abcdef"),
        )
        assert created.status_code == 201, created.text
        renamed = await client.patch(
            f"/scim/v2/Groups/{created.json()['id']}",
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "replace", "path": "displayName", "value": "Ops"}],
            },
            headers=as_caller("idp", "request-3-0123456789abcdef"),
        )
        assert renamed.status_code == 204, renamed.text
        changes, _ = await follow(client, start, count=4)
        assert [(c["kind"], c["type"], c["actor"]) for c in changes] == [
            ("user", "created", "idp"),
            ("group", "created", "idp"),
            ("membership", "added", "idp"),
            ("group", "updated", "idp"),
        ]
        assert [c["request_id"] for c in changes[1:]] == [
            "request-2-0123456789abcdef",
            "request-2-0123456789abcdef",
            "request-3-0123456789abcdef",
        ]
