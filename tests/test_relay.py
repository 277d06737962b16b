"""The relay as a real process: the feed into a real nats-server, once each, in order."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import RePublish, StreamConfig

from service import feed_queries, queries
from service.changes import cursor_of, position_of
from service.queries import Position
from service.relay import addressing, change_of, headers_of, stream_config
from service.settings import Settings
from tests.conftest import ROOT, Cluster, NatsServer, Service, connect, free_port
from tests.test_all_changes import (
    Copy,
    all_groups,
    create_group,
    members,
    seed_users_and_groups,
    write_users_and_groups,
)
from tests.test_changes import all_users
from tests.test_failover import SYNCHRONOUS, failover_url, promote

STREAM = "USERS"
CAUGHT_UP_SECONDS = 60.0


class Relay:
    """`python -m service relay`, its output in a file."""

    def __init__(self, folder: Path, database_url: str, nats_url: str, **env: str) -> None:
        self.metrics_port = free_port()
        self.log = folder / f"relay-{self.metrics_port}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "relay"],
            cwd=folder,
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "DATABASE_URL": database_url,
                "NATS_URL": nats_url,
                "RELAY_METRICS_PORT": str(self.metrics_port),
                **env,
            },
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def metrics(self) -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        return {
            name: float(value)
            for name, value in re.findall(r"^(relay_[^ ]+) ([0-9.e+-]+)$", text, re.MULTILINE)
        }


@pytest.fixture
def relays(tmp_path: Path, database_url: str) -> Iterator[list[Relay]]:
    started: list[Relay] = []
    yield started
    for relay in started:
        with contextlib.suppress(subprocess.TimeoutExpired):
            relay.stop()


@pytest.fixture
async def broker(nats_url: str) -> AsyncIterator[NATS]:
    """A client of the NATS server under test, with no stream yet for users.>."""
    nc = await nats.connect(nats_url)
    await drop_streams(nc)
    try:
        yield nc
    finally:
        await drop_streams(nc)
        await nc.close()


async def drop_streams(nc: NATS) -> None:
    """Delete the streams that take users.> on the server under test."""
    js = nc.jetstream()
    for info in await js.streams_info():
        if "users.>" in (info.config.subjects or []):
            await js.delete_stream(info.config.name or "")


@dataclass
class Message:
    sequence: int
    subject: str
    headers: dict[str, str]
    data: bytes


async def stream_messages(nc: NATS, stream: str = STREAM) -> tuple[list[Message], int]:
    """Every message the stream holds, in order, and its last sequence number."""
    js = nc.jetstream()
    state = (await js.stream_info(stream)).state
    found = []
    for sequence in range(state.first_seq, state.last_seq + 1):
        try:
            raw = await js.get_msg(stream, seq=sequence)
        except nats.js.errors.NotFoundError:
            continue  # replaced by a later message of the same user
        assert raw.seq is not None
        assert raw.subject is not None
        found.append(Message(raw.seq, raw.subject, dict(raw.headers or {}), raw.data or b""))
    return found, state.last_seq


async def feed_of(url: str, *, everything: bool = False) -> list[bytes]:
    """Every change the feed holds (of users, or of `everything`), as a page encodes
    it: a user's as GET /users/changes does, a group's or a membership's as
    GET /changes does."""
    conn = await connect(url)
    try:
        feed = await queries.feed_identity(conn)
        changes: list[bytes] = []
        position = Position(0, 0)
        read = feed_queries.all_changes_after if everything else queries.changes_after
        while rows := await read(conn, position, 1000):
            changes += [msgspec.json.encode(change_of(row, feed)) for row in rows]
            position = rows[-1].position
        return changes
    finally:
        await conn.close()


async def caught_up(
    nc: NATS, url: str, relays: list[Relay], *, everything: bool = False
) -> list[bytes]:
    """Wait for the feed to hold the last change written, and for the stream's last
    message to be it; the feed.

    The feed holds a committed change back while an older transaction runs
    anywhere on the server, another database's included: its end alone may
    stop short of the table, and so may a stream that reached it. The last
    change written is in the feed once readable (a delete removes only its
    user's earlier changes).
    """
    deadline = time.monotonic() + CAUGHT_UP_SECONDS
    js = nc.jetstream()
    while True:
        ever = await written(url)
        target = ever[-1][0] if ever else None
        changes = await feed_of(url, everything=everything)
        last = msgspec.json.decode(changes[-1])["cursor"] if changes else None
        stored = None
        with contextlib.suppress(nats.js.errors.NotFoundError):
            state = (await js.stream_info(STREAM)).state
            if state.last_seq:
                stored = ((await js.get_msg(STREAM, seq=state.last_seq)).headers or {}).get("ce-id")
        if target is not None and last == target and stored == target:
            return changes
        if time.monotonic() > deadline:
            logs = "\n".join(relay.output() for relay in relays)
            raise AssertionError(
                f"the stream did not reach {target} (the feed's end {last}, the stream's "
                f"{stored}):\n{logs}"
            )
        await asyncio.sleep(0.2)


async def publishing(nc: NATS, relay: Relay) -> None:
    """Wait for `relay` to store a message, so that a kill lands mid-stream."""
    js = nc.jetstream()
    before = -1
    for _ in range(300):  # 30 s
        assert relay.process.poll() is None, relay.output()
        with contextlib.suppress(nats.js.errors.NotFoundError):
            sequence = (await js.stream_info(STREAM)).state.last_seq
            if before == -1:
                before = sequence
            elif sequence > before and "resuming after cursor" in relay.output():
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the relay published nothing in 30 s:\n{relay.output()}")


class Recorder:
    """Every message the stream stores, by the stream's republish to a plain subject:
    the stream itself keeps only each subject's last.

    The republished copies may come out of the stream's order: NATS 2.9 stores a
    client's publish on that client's own connection, under the stream's lock,
    and republishes it after the lock is released, so two relays' copies of
    neighbouring sequences can cross on the way out (2.10 stores them all on one
    goroutine). Each copy carries its stream sequence, which is what is compared.
    """

    def __init__(self) -> None:
        self.stored: list[tuple[int, str]] = []  # sequence, ce-id; as they arrive

    async def start(self, nc: NATS, settings: Settings | None = None) -> None:
        config = stream_config(settings or Settings())
        config.republish = RePublish(src=">", dest="stored.>", headers_only=True)
        await nc.jetstream().add_stream(config)
        await nc.subscribe("stored.>", cb=self.record, pending_msgs_limit=-1)

    async def record(self, message: Msg) -> None:
        headers = message.headers or {}
        self.stored.append((int(headers["Nats-Sequence"]), headers["ce-id"]))

    def assert_each_change_once_in_order(self, changes: list[bytes], ever: list[str]) -> None:
        """Stored: sequences 1, 2, 3, ... with no gap, each a change written, in feed
        order, none twice; every change the feed holds among them (a delete removes
        its user's earlier changes from the feed, and those it removed before the
        relay read them never go out)."""
        stored = sorted(self.stored)
        assert [sequence for sequence, _ in stored] == list(range(1, len(stored) + 1))
        order = {cursor: number for number, cursor in enumerate(ever)}
        places = [order[cursor] for _, cursor in stored]
        assert places == sorted(set(places))
        held = {msgspec.json.decode(change)["cursor"] for change in changes}
        assert held <= {cursor for _, cursor in stored}

    async def complete(self, nc: NATS, url: str, changes: list[bytes]) -> None:
        """Once every stored message has come: assert_each_change_once_in_order."""
        last = (await nc.jetstream().stream_info(STREAM)).state.last_seq
        for _ in range(100):
            if len(self.stored) >= last:
                break
            await asyncio.sleep(0.1)
        self.assert_each_change_once_in_order(changes, [c for c, _ in await written(url)])


@pytest.fixture
async def recorder(broker: NATS) -> Recorder:
    recorder = Recorder()
    await recorder.start(broker)
    return recorder


async def assert_stream_is_the_feed(
    nc: NATS, client: httpx.AsyncClient, url: str, changes: list[bytes]
) -> list[Message]:
    """The stream holds each user's last change, as the feed shows it, in feed order,
    and that last is the user as the table holds it."""
    messages, last_sequence = await stream_messages(nc)
    ever = [cursor for cursor, _ in await written(url)]
    assert last_sequence <= len(ever)
    feed = {msgspec.json.decode(change)["cursor"]: change for change in changes}
    order = {cursor: number for number, cursor in enumerate(ever)}
    places = [order[message.headers["ce-id"]] for message in messages]
    assert places == sorted(set(places))
    for message in messages:
        theirs = [m.headers["ce-id"] for m in messages if m.subject == message.subject]
        assert message.headers["ce-id"] in feed, f"a change the feed no longer holds: {theirs}"
        assert message.data == feed[message.headers["ce-id"]]
    last_of = {msgspec.json.decode(change)["id"]: change for change in changes}
    assert [message.data for message in messages] == sorted(
        last_of.values(), key=lambda change: order[msgspec.json.decode(change)["cursor"]]
    )
    alive = 0
    for message in messages:
        change = msgspec.json.decode(message.data)
        response = await client.get(f"/users/{change['id']}")
        if change["type"] == "deleted":
            assert response.status_code == 404
        else:
            assert response.json() == change["user"]
            alive += 1
    assert alive == await user_count(url)
    return messages


# Every change written, which the feed does not keep: a delete removes its
# user's (or group's) earlier changes. A test's own record, by triggers of its own.
AUDIT = """
CREATE TABLE IF NOT EXISTS relay_audit (xid xid8, seq bigint, id uuid);
TRUNCATE relay_audit;
CREATE OR REPLACE FUNCTION relay_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    INSERT INTO relay_audit VALUES (NEW.xid, NEW.seq, NEW.user_id);
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION relay_audit_groups() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    INSERT INTO relay_audit VALUES (NEW.xid, NEW.seq, NEW.group_id);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER relay_audit AFTER INSERT ON user_changes
    FOR EACH ROW EXECUTE FUNCTION relay_audit();
CREATE OR REPLACE TRIGGER relay_audit AFTER INSERT ON group_changes
    FOR EACH ROW EXECUTE FUNCTION relay_audit_groups();
"""
NO_AUDIT = """
DROP TRIGGER IF EXISTS relay_audit ON user_changes;
DROP TRIGGER IF EXISTS relay_audit ON group_changes;
DROP FUNCTION IF EXISTS relay_audit();
DROP FUNCTION IF EXISTS relay_audit_groups();
DROP TABLE IF EXISTS relay_audit;
"""


@pytest.fixture(autouse=True)
async def audit(db: object, database_url: str) -> AsyncIterator[None]:
    """Record every change written during the test (after the app emptied the tables)."""
    conn = await connect(database_url)
    try:
        await conn.execute(AUDIT)
        yield
        await conn.execute(NO_AUDIT)
    finally:
        await conn.close()


async def written(url: str) -> list[tuple[str, str]]:
    """The cursor and user (or group) of every change written, in feed order."""
    conn = await connect(url)
    try:
        feed = await queries.feed_identity(conn)
        rows = await conn.fetch(
            # Named txid: ORDER BY xid would sort the text, 10000 before 9999.
            "SELECT xid::text AS txid, seq, id::text FROM relay_audit ORDER BY xid, seq"
        )
        return [(cursor_of(Position(int(r["txid"]), r["seq"]), feed), r["id"]) for r in rows]
    finally:
        await conn.close()


async def user_count(url: str) -> int:
    conn = await connect(url)
    try:
        count = await conn.fetchval("SELECT count(*) FROM users")
        assert isinstance(count, int)
        return count
    finally:
        await conn.close()


async def test_a_change_goes_out_with_cloudevents_headers_and_the_page_body(
    client: httpx.AsyncClient,
    database_url: str,
    nats_url: str,
    broker: NATS,
    relays: list[Relay],
    tmp_path: Path,
) -> None:
    created = (await client.post("/users", json={"name": "Ann", "email": "ann@example.com"})).json()
    relays.append(Relay(tmp_path, database_url, nats_url))
    changes = await caught_up(broker, database_url, relays)
    page = (await client.get("/users/changes")).json()["changes"]
    [message], _ = await stream_messages(broker)
    assert msgspec.json.decode(message.data) == page[0]
    assert message.data == changes[0]
    assert message.subject == f"users.{created['id']}"
    cursor = page[0]["cursor"]
    assert message.headers == {
        "ce-specversion": "1.0",
        "ce-id": cursor,
        "ce-type": "user.created",
        "ce-source": "/users",
        "ce-subject": created["id"],
        "ce-time": page[0]["at"],
        "content-type": "application/json",
        "Nats-Msg-Id": cursor,
        "Nats-Expected-Last-Sequence": "0",
    }
    info = await broker.jetstream().stream_info(STREAM)
    assert info.config.subjects == ["users.>"]
    assert info.config.max_msgs_per_subject == 1
    assert info.config.storage == "file"
    assert info.config.duplicate_window == 120.0


async def test_a_delete_leaves_no_copy_of_the_user_in_the_stream(
    client: httpx.AsyncClient,
    database_url: str,
    nats_url: str,
    broker: NATS,
    recorder: Recorder,
    relays: list[Relay],
    tmp_path: Path,
) -> None:
    relays.append(Relay(tmp_path, database_url, nats_url))
    user = (await client.post("/users", json={"name": "Zelda", "email": "zel@example.com"})).json()
    await caught_up(broker, database_url, relays)  # its create is in the stream
    await client.patch(f"/users/{user['id']}", json={"email": "zelda@example.com"})
    await client.post("/users", json={"name": "Other", "email": "other@example.com"})
    assert (await client.delete(f"/users/{user['id']}")).status_code == 204
    changes = await caught_up(broker, database_url, relays)
    await recorder.complete(broker, database_url, changes)
    messages = await assert_stream_is_the_feed(broker, client, database_url, changes)
    theirs = [m for m in messages if m.subject == f"users.{user['id']}"]
    assert [msgspec.json.decode(m.data)["type"] for m in theirs] == ["deleted"]
    everything = b"".join(m.data + repr(m.headers).encode() for m in messages)
    for trace in (b"Zelda", b"zel@example.com", b"zelda@example.com"):
        assert trace not in everything
    assert b"other@example.com" in everything  # the search would find what is there


async def test_a_stream_that_cannot_hold_the_guarantees_is_refused_in_one_line(
    database_url: str, nats_url: str, broker: NATS, relays: list[Relay], tmp_path: Path
) -> None:
    await broker.jetstream().add_stream(
        StreamConfig(name=STREAM, subjects=["users.>"], max_msgs_per_subject=10)
    )
    relay = Relay(tmp_path, database_url, nats_url)
    relays.append(relay)
    assert relay.process.wait(60) == 1
    [line] = [line for line in relay.output().splitlines() if "gives up" in line]
    assert "max_msgs_per_subject is 10, not 1" in line


class Writers:
    """Creates, bulk loads, email changes and deletes, racing until stopped.

    With `outages`, the database may be away a while: a write answered 503, or
    not answered at all, is left behind, and the writer goes on.
    """

    def __init__(self, client: httpx.AsyncClient, *, outages: bool = False) -> None:
        self.client = client
        self.outages = outages
        self.done = asyncio.Event()
        self.ids: list[str] = []
        self.random = random.Random(7)  # noqa: S311 - a test's choices
        self.tasks = [
            asyncio.create_task(self.create()),
            asyncio.create_task(self.bulk()),
            asyncio.create_task(self.change_emails()),
            asyncio.create_task(self.delete()),
        ]

    async def write(
        self, method: str, path: str, body: object, expected: set[int]
    ) -> httpx.Response | None:
        """One write, its answer one of `expected`; None for one the outage took."""
        try:
            response = await self.client.request(method, path, json=body)
        except httpx.TransportError:
            if not self.outages:
                raise
            return None
        if response.status_code == 503 and self.outages:
            return None
        assert response.status_code in expected, response.text
        return response

    async def create(self) -> None:
        for n in range(100_000):  # bounded; ends at stop()
            if self.done.is_set():
                return
            body = {"name": f"C{n}", "email": f"c{n}@example.com"}
            if response := await self.write("POST", "/users", body, {201}):
                self.ids.append(response.json()["id"])
            await asyncio.sleep(0.005)

    async def bulk(self) -> None:
        for n in range(1000):
            if self.done.is_set():
                return
            users = [{"name": f"B{n}-{k}", "email": f"b{n}-{k}@example.com"} for k in range(200)]
            await self.write("POST", "/users/bulk", users, {201})
            await asyncio.sleep(0.2)

    async def change_emails(self) -> None:
        for n in range(100_000):
            if self.done.is_set():
                return
            if self.ids:
                user = self.random.choice(self.ids)
                # 404: deleted meanwhile, by the delete writer.
                body = {"email": f"e{n}@example.com"}
                await self.write("PATCH", f"/users/{user}", body, {200, 404})
            await asyncio.sleep(0.01)

    async def delete(self) -> None:
        for _ in range(100_000):
            if self.done.is_set():
                return
            if len(self.ids) > 10:
                user = self.ids.pop(self.random.randrange(len(self.ids)))
                await self.write("DELETE", f"/users/{user}", None, {204})
            await asyncio.sleep(0.03)

    async def stop(self) -> None:
        self.done.set()
        await asyncio.gather(*self.tasks)


async def test_a_relay_killed_mid_stream_resumes_with_each_change_once_in_order(
    client: httpx.AsyncClient,
    database_url: str,
    nats_url: str,
    broker: NATS,
    recorder: Recorder,
    relays: list[Relay],
    tmp_path: Path,
) -> None:
    writers = Writers(client)
    chance = random.Random(3)  # noqa: S311
    for _ in range(4):
        relay = Relay(tmp_path, database_url, nats_url)
        relays.append(relay)
        await publishing(broker, relay)
        await asyncio.sleep(chance.random() * 0.5)  # mid-stream: writers go on
        relay.kill()
    await writers.stop()
    relays.append(Relay(tmp_path, database_url, nats_url))
    changes = await caught_up(broker, database_url, relays)
    assert len(changes) > 400  # bulk loads among them
    await recorder.complete(broker, database_url, changes)
    await assert_stream_is_the_feed(broker, client, database_url, changes)


async def test_a_nats_restart_loses_and_repeats_no_change(
    client: httpx.AsyncClient,
    database_url: str,
    nats_server: NatsServer,
    relays: list[Relay],
    tmp_path: Path,
) -> None:
    relay = Relay(tmp_path, database_url, nats_server.url)
    relays.append(relay)
    writers = Writers(client)
    for _ in range(300):  # up to 30 s for it to start publishing
        if "resuming after cursor" in relay.output():
            break
        await asyncio.sleep(0.1)
    for restarts in (1, 2):
        await asyncio.sleep(1.5)
        await asyncio.to_thread(nats_server.restart)
        for _ in range(300):  # each restart its own outage: up to 30 s to reconnect
            if relay.output().count("reconnected to NATS") == restarts:
                break
            await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    await writers.stop()
    nc = await nats.connect(nats_server.url)
    try:
        changes = await caught_up(nc, database_url, relays)
        assert len(changes) > 400  # bulk loads among them
        await assert_stream_is_the_feed(nc, client, database_url, changes)
    finally:
        await nc.close()
    assert relay.process.poll() is None, relay.output()
    assert relay.output().count("reconnected to NATS") == 2, relay.output()


async def test_a_second_relay_neither_duplicates_nor_reorders(
    client: httpx.AsyncClient,
    database_url: str,
    nats_url: str,
    broker: NATS,
    recorder: Recorder,
    relays: list[Relay],
    tmp_path: Path,
) -> None:
    writers = Writers(client)
    relays.append(Relay(tmp_path, database_url, nats_url))
    relays.append(Relay(tmp_path, database_url, nats_url))
    await asyncio.sleep(5)
    relays.append(Relay(tmp_path, database_url, nats_url))
    await asyncio.sleep(3)
    await writers.stop()
    changes = await caught_up(broker, database_url, relays)
    await recorder.complete(broker, database_url, changes)
    await assert_stream_is_the_feed(broker, client, database_url, changes)
    assert all(relay.process.poll() is None for relay in relays)
    # The losers were refused (wrong last sequence) or left unanswered (a
    # duplicate of a message being stored), and read the stream again.
    collided = ("another relay is publishing", "no acknowledgement within")
    assert any(line in relay.output() for relay in relays for line in collided)


async def test_the_relay_counts_what_it_published_and_its_lag(
    client: httpx.AsyncClient,
    database_url: str,
    nats_url: str,
    broker: NATS,
    relays: list[Relay],
    tmp_path: Path,
) -> None:
    users = [{"name": f"M{k}", "email": f"m{k}@example.com"} for k in range(50)]
    await client.post("/users/bulk", json=users)
    relay = Relay(tmp_path, database_url, nats_url)
    relays.append(relay)
    await caught_up(broker, database_url, relays)
    for _ in range(50):  # the lag is measured every second
        found = relay.metrics()
        if found.get("relay_lag_changes") == 0:
            break
        await asyncio.sleep(0.2)
    assert found["relay_published_total"] == 50
    assert found["relay_lag_changes"] == 0
    assert found["relay_lag_seconds"] == 0


@pytest.mark.parametrize("groups", [False, True], ids=["users", "RELAY_GROUPS"])
async def test_a_consumer_from_the_first_message_keeps_a_copy_equal_to_the_table(
    client: httpx.AsyncClient,
    database_url: str,
    nats_url: str,
    broker: NATS,
    relays: list[Relay],
    tmp_path: Path,
    groups: bool,
) -> None:
    """The durable consumer of docs/RELAY.md, killed and started again while writes go
    on: of users, and with RELAY_GROUPS=1 of groups and members too."""
    example = (ROOT / "docs" / "RELAY.md").read_text()
    code = re.search(r"```python\n(.*?)```", example, re.DOTALL)
    assert code is not None
    script = tmp_path / "consumer.py"
    script.write_text(code[1])
    copy = tmp_path / "copy.json"
    group_ids: list[str] = []
    if groups:
        group_ids = await seed_users_and_groups(client)
    relay = Relay(tmp_path, database_url, nats_url, **(GROUPS if groups else {}))
    relays.append(relay)
    writers = Writers(client)
    stop = asyncio.Event()
    group_writers = [
        asyncio.create_task(write_users_and_groups(client, n, group_ids, stop))
        for n in range(2 if groups else 0)
    ]
    await publishing(broker, relay)

    def consumer() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, str(script), nats_url, str(copy)],
            stdout=(tmp_path / "consumer.log").open("a"),
            stderr=subprocess.STDOUT,
        )

    first = consumer()
    for _ in range(600):  # until it has saved a copy: up to 60 s
        if copy.exists():
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)
    assert first.poll() is None, (tmp_path / "consumer.log").read_text()
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    second = consumer()
    await asyncio.sleep(2)
    stop.set()
    await asyncio.gather(*group_writers)
    await writers.stop()
    changes = await caught_up(broker, database_url, relays, everything=groups)
    last = msgspec.json.decode(changes[-1])["cursor"]
    users = {user["id"]: user for user in await all_users(client)}
    listed, pairs = await all_groups(client)
    tables: dict[str, dict[str, Any]] = {
        "users": users,
        "groups": {group["id"]: group for group in listed},
        "members": {f"{group}/{user}": True for group, user in pairs},
    }
    kept = ("users", "groups", "members") if groups else ("users",)
    # What the killed one fetched and never acknowledged comes again after ack_wait (5 s).
    state: dict[str, Any] = {}
    for _ in range(1200):  # 120 s: a loaded machine is slow
        with contextlib.suppress(FileNotFoundError, msgspec.DecodeError):
            state = msgspec.json.decode(copy.read_bytes())
            if state["last"] == last and all(state[part] == tables[part] for part in kept):
                break
        await asyncio.sleep(0.1)
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0, (tmp_path / "consumer.log").read_text()
    assert state["last"] == last, f"the copy stopped at {state['last']}, the feed at {last}"
    for part in kept:
        held, table = state[part], tables[part]
        assert held.keys() == table.keys(), (part, sorted(held.keys() ^ table.keys())[:3])
        assert held == table, part
    if groups:
        assert tables["members"]  # the race left members to compare
    else:
        assert state["groups"] == state["members"] == {}


def procfile_relay(database_url: str, nats_url: str) -> subprocess.Popen[str]:
    """The Procfile's relay: command, its log lines on a pipe."""
    procfile = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines())
    return subprocess.Popen(
        ["sh", "-c", procfile["relay"].strip()],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": database_url,
            "NATS_URL": nats_url,
            "RELAY_METRICS_PORT": str(free_port()),
        },
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_the_procfile_relay_logs_json_and_stops_cleanly_on_sigterm(
    database_url: str, nats_url: str, broker: NATS, tmp_path: Path
) -> None:
    process = procfile_relay(database_url, nats_url)
    try:
        for _ in range(300):  # until the stream exists: up to 30 s
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await broker.jetstream().stream_info(STREAM)
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
    finally:
        process.send_signal(signal.SIGTERM)  # exec: the signal reaches the relay itself
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    lines = [msgspec.json.decode(line) for line in stderr.splitlines() if line.startswith("{")]
    messages = [line["message"] for line in lines]
    assert any(message.startswith("relay started") for message in messages), stderr
    assert any(message.startswith("relay: resuming after cursor") for message in messages)
    assert messages[-1] == "relay stopped"  # and no line about its own close after it


@pytest.fixture(params=["restart", "failover"])
def outage(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.replication
async def test_a_postgres_restart_or_failover_loses_and_repeats_no_change(
    outage: str,
    nats_url: str,
    broker: NATS,
    recorder: Recorder,
    relays: list[Relay],
    services: list[Service],
    tmp_path: Path,
) -> None:
    """The primary killed mid-stream, then started again or its synchronous standby
    promoted, with a service process writing and the relay relaying throughout."""
    with tempfile.TemporaryDirectory(prefix="users-relay-") as folder:
        standbys = 1 if outage == "failover" else 0
        settings = SYNCHRONOUS if standbys else {}
        cluster = await asyncio.to_thread(
            Cluster, Path(folder), standbys=standbys, primary_settings=settings
        )
        try:
            primary = cluster.primary
            url = failover_url(primary, cluster.standbys[0]) if standbys else primary.url()
            await primary.execute(AUDIT)
            service = Service(tmp_path, {"DATABASE_URL": url, "DB_COMMAND_TIMEOUT": "2"})
            services.append(service)
            await asyncio.to_thread(service.wait_ready)
            relay = Relay(tmp_path, url, nats_url)
            relays.append(relay)
            async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
                writers = Writers(client, outages=True)
                await publishing(broker, relay)
                await asyncio.sleep(0.5)
                # As a crash would: no shutdown checkpoint, sessions cut mid-commit.
                await asyncio.to_thread(primary.stop, "immediate")
                await asyncio.sleep(1)
                if standbys:
                    await promote(cluster.standbys[0])
                else:
                    await asyncio.to_thread(primary.start)
                await asyncio.sleep(3)
                await writers.stop()
                changes = await caught_up(broker, url, relays)
                assert len(changes) > 400  # bulk loads among them
                await recorder.complete(broker, url, changes)
                await assert_stream_is_the_feed(broker, client, url, changes)
            assert relay.process.poll() is None, relay.output()
            assert relay.stop() == 0  # before the servers stop, which it would log
        finally:
            await asyncio.to_thread(cluster.stop)
    # One line when the database was lost, one when it was back; none between.
    lines = relay.output().splitlines()
    assert [line for line in lines if "database" in line] == [
        next(line for line in lines if "lost the database" in line),
        next(line for line in lines if "the database is back" in line),
    ]


# Groups' and memberships' changes, with RELAY_GROUPS=1.

GROUPS = {"RELAY_GROUPS": "1"}
GROUP_SUBJECTS = ["users.>", "groups.>", "memberships.>"]


@pytest.fixture
async def group_recorder(broker: NATS) -> Recorder:
    recorder = Recorder()
    await recorder.start(broker, Settings(relay_groups=True))
    return recorder


def subject_of(change: dict[str, Any]) -> str:
    """The subject of a change of the feed of everything, as the relay encodes it."""
    if "group_id" in change:
        return f"memberships.{change['group_id']}.{change['user_id']}"
    return f"{'groups' if change.get('kind') == 'group' else 'users'}.{change['id']}"


async def members_of(nc: NATS, group: str) -> list[Message]:
    """The stream's messages of a group's members."""
    messages, _ = await stream_messages(nc)
    return [m for m in messages if m.subject.startswith(f"memberships.{group}.")]


async def until_purged(nc: NATS, group: str) -> None:
    """Wait for the relay to purge a deleted group's members' messages: it does so
    once the group's delete is acknowledged, after the stream reached it."""
    for _ in range(300):  # 30 s
        if not await members_of(nc, group):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the members of {group} are still in the stream")


async def test_groups_and_members_go_out_under_subjects_of_their_own_kind(
    client: httpx.AsyncClient,
    database_url: str,
    nats_url: str,
    broker: NATS,
    relays: list[Relay],
    tmp_path: Path,
) -> None:
    ann = (await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})).json()["id"]
    group = await create_group(client, "Eng")
    await members(client, group, add=["ann@x.io"])
    await client.patch(f"/groups/{group}", json={"name": "Engineering"})
    relay = Relay(tmp_path, database_url, nats_url, **GROUPS)
    relays.append(relay)
    changes = await caught_up(broker, database_url, relays, everything=True)
    users_page = (await client.get("/users/changes")).json()["changes"]
    page = (await client.get("/changes")).json()["changes"]
    messages, _ = await stream_messages(broker)
    # The group's create is replaced by its rename: one message a subject.
    assert [m.subject for m in messages] == [
        f"users.{ann}", f"memberships.{group}.{ann}", f"groups.{group}"
    ]  # fmt: skip
    assert [m.data for m in messages] == [changes[0], changes[2], changes[3]]
    # A user's change is the users' feed's, as without RELAY_GROUPS; the others
    # are the feed of everything's.
    assert msgspec.json.decode(messages[0].data) == users_page[0]
    assert [msgspec.json.decode(m.data) for m in messages[1:]] == page[2:]
    assert [
        (m.headers["ce-type"], m.headers["ce-subject"], m.headers["ce-id"], m.headers["ce-time"])
        for m in messages
    ] == [
        ("user.created", ann, page[0]["cursor"], page[0]["at"]),
        ("membership.added", f"{group}/{ann}", page[2]["cursor"], page[2]["at"]),
        ("group.updated", group, page[3]["cursor"], page[3]["at"]),
    ]
    info = await broker.jetstream().stream_info(STREAM)
    assert info.config.subjects == GROUP_SUBJECTS
    for _ in range(50):  # the lag is measured every second
        found = relay.metrics()
        if found.get("relay_lag_changes") == 0:
            break
        await asyncio.sleep(0.2)
    assert found["relay_published_total"] == 4
    assert found["relay_lag_changes"] == 0


async def test_the_lag_counts_groups_and_members_changes_with_relay_groups(
    client: httpx.AsyncClient, database_url: str
) -> None:
    await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    group = await create_group(client, "Eng")
    await members(client, group, add=["ann@x.io"])
    conn = await connect(database_url)
    try:
        assert (await queries.changes_behind(conn, Position(0, 0), 100))[0] == 1
        count, seconds = await feed_queries.all_changes_behind(conn, Position(0, 0), 100)
        assert count == 3
        assert seconds > 0
        assert (await feed_queries.all_changes_behind(conn, Position(0, 0), 2))[0] == 2
    finally:
        await conn.close()


async def test_without_relay_groups_no_group_or_member_change_goes_out(
    client: httpx.AsyncClient,
    database_url: str,
    nats_url: str,
    broker: NATS,
    relays: list[Relay],
    tmp_path: Path,
) -> None:
    ann = (await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})).json()["id"]
    relays.append(Relay(tmp_path, database_url, nats_url))
    await caught_up(broker, database_url, relays)
    group = await create_group(client, "Eng")
    await members(client, group, add=["ann@x.io"])
    bob = (await client.post("/users", json={"name": "Bob", "email": "bob@x.io"})).json()["id"]
    await caught_up(broker, database_url, relays)  # Bob's create, after the group's
    messages, _ = await stream_messages(broker)
    assert [m.subject for m in messages] == [f"users.{ann}", f"users.{bob}"]
    info = await broker.jetstream().stream_info(STREAM)
    assert info.config.subjects == ["users.>"]


async def test_a_group_s_delete_leaves_none_of_its_members_messages_nor_its_name(
    client: httpx.AsyncClient,
    database_url: str,
    nats_url: str,
    broker: NATS,
    relays: list[Relay],
    tmp_path: Path,
) -> None:
    relays.append(Relay(tmp_path, database_url, nats_url, **GROUPS))
    users = [{"name": f"U{n}", "email": f"u{n}@x.io"} for n in range(3)]
    await client.post("/users/bulk", json=users)
    name, secret = "Zanzibar Skunkworks", "cost-7f3e9a"
    created = await client.post("/groups", json={"name": name, "attributes": {"cc": secret}})
    group = created.json()["id"]
    await members(client, group, add=[user["email"] for user in users])
    kept = await create_group(client, "Kept")
    await members(client, kept, add=["u0@x.io"])
    await caught_up(broker, database_url, relays, everything=True)
    assert len(await members_of(broker, group)) == 3
    assert (await client.delete(f"/groups/{group}")).status_code == 204
    await caught_up(broker, database_url, relays, everything=True)
    await until_purged(broker, group)
    messages, _ = await stream_messages(broker)
    theirs = [m for m in messages if group in m.subject]
    assert [(m.subject, m.headers["ce-type"]) for m in theirs] == [
        (f"groups.{group}", "group.deleted")
    ]
    assert len(await members_of(broker, kept)) == 1
    everything = b"".join(m.data + repr(m.headers).encode() for m in messages)
    for trace in (name, secret):
        assert trace.encode() not in everything
    assert b"Kept" in everything


async def test_a_group_s_delete_stored_but_not_purged_is_purged_by_the_next_relay(
    client: httpx.AsyncClient,
    database_url: str,
    nats_url: str,
    broker: NATS,
    relays: list[Relay],
    tmp_path: Path,
) -> None:
    """A relay killed between storing a group's delete, and more after it, and purging
    the group's members' messages: the next one, resuming after them, purges them."""
    relay = Relay(tmp_path, database_url, nats_url, **GROUPS)
    relays.append(relay)
    await client.post("/users/bulk", json=[{"name": "A", "email": "a@x.io"}])
    group = await create_group(client, "Eng")
    await members(client, group, add=["a@x.io"])
    await caught_up(broker, database_url, relays, everything=True)
    assert relay.stop() == 0
    assert (await client.delete(f"/groups/{group}")).status_code == 204
    await client.post("/users/bulk", json=[{"name": "B", "email": "b@x.io"}])
    await client.post("/users/bulk", json=[{"name": "C", "email": "c@x.io"}])
    # The delete and the two creates after it, stored as the relay stores them.
    js = broker.jetstream()
    last = (await js.stream_info(STREAM)).state.last_seq
    conn = await connect(database_url)
    try:
        feed = await queries.feed_identity(conn)
        previous = (await js.get_msg(STREAM, seq=last)).headers or {}
        after, _ = position_of(previous["ce-id"], "ce-id")
        rows = await feed_queries.all_changes_after(conn, after, 10)
    finally:
        await conn.close()
    assert rows is not None
    assert [addressing(row)[1] for row in rows] == ["group.deleted", "user.created", "user.created"]
    for offset, row in enumerate(rows):
        change = change_of(row, feed)
        addressed = addressing(row)
        headers = headers_of(row, addressed, change.cursor, "/users", last + offset, None)
        await js.publish(addressed[0], msgspec.json.encode(change), headers=headers)
    assert len(await members_of(broker, group)) == 1
    relay = Relay(tmp_path, database_url, nats_url, **GROUPS)
    relays.append(relay)
    await until_purged(broker, group)
    assert (await js.stream_info(STREAM)).state.last_seq == last + 3  # nothing stored again
    assert f"resuming after cursor {change.cursor}" in relay.output()
    for _ in range(50):  # counted once the purge's answer is in: up to 5 s
        if relay.metrics()["relay_purges_total"] == 1:
            break
        await asyncio.sleep(0.1)
    assert relay.metrics()["relay_purges_total"] == 1


@pytest.mark.parametrize(
    ("made_with_groups", "deny_purge", "env", "fault"),
    [
        (False, False, GROUPS, "not including groups.>, memberships.>"),
        (True, False, {}, "it holds groups' changes, which would go stale without RELAY_GROUPS=1"),
        (True, True, GROUPS, "deny_purge is true: a group's delete purges its members' messages"),
    ],
    ids=["groups-on-a-users-stream", "groups-off-on-a-groups-stream", "deny-purge"],
)
async def test_a_stream_made_for_the_other_relay_groups_is_refused_in_one_line(
    database_url: str,
    nats_url: str,
    broker: NATS,
    relays: list[Relay],
    tmp_path: Path,
    made_with_groups: bool,
    deny_purge: bool,
    env: dict[str, str],
    fault: str,
) -> None:
    config = stream_config(Settings(relay_groups=made_with_groups))
    config.deny_purge = deny_purge
    await broker.jetstream().add_stream(config)
    relay = Relay(tmp_path, database_url, nats_url, **env)
    relays.append(relay)
    assert relay.process.wait(60) == 1
    [line] = [line for line in relay.output().splitlines() if "gives up" in line]
    assert fault in line


async def assert_stream_is_the_feed_of_everything(
    nc: NATS, client: httpx.AsyncClient, url: str, changes: list[bytes]
) -> None:
    """The stream holds each subject's last change, as the feed shows it, in feed
    order, and nothing of a deleted group's members; a copy kept from it by the
    feed's rules is the tables."""
    ever = [cursor for cursor, _ in await written(url)]
    order = {cursor: number for number, cursor in enumerate(ever)}
    feed = {msgspec.json.decode(change)["cursor"]: change for change in changes}
    last_of = {subject_of(msgspec.json.decode(change)): change for change in changes}
    wanted = sorted(last_of.values(), key=lambda c: order[msgspec.json.decode(c)["cursor"]])
    for _ in range(100):  # the last page's purges may still be under way: 10 s
        messages, _ = await stream_messages(nc)
        if [m.data for m in messages] == wanted:
            break
        await asyncio.sleep(0.1)
    places = [order[m.headers["ce-id"]] for m in messages]
    assert places == sorted(set(places))
    for message in messages:
        assert message.data == feed[message.headers["ce-id"]]
    assert [m.data for m in messages] == wanted
    copy = Copy()
    for message in messages:
        change = msgspec.json.decode(message.data)
        copy.apply(change if "kind" in change else {"kind": "user", **change})
    table_groups, table_members = await all_groups(client)
    assert copy.live(copy.users) == {user["id"]: user for user in await all_users(client)}
    assert copy.live(copy.groups) == {group["id"]: group for group in table_groups}
    assert copy.members == table_members


async def test_relays_killed_while_users_groups_and_members_race_store_each_change_once(
    client: httpx.AsyncClient,
    database_url: str,
    nats_url: str,
    broker: NATS,
    group_recorder: Recorder,
    relays: list[Relay],
    tmp_path: Path,
) -> None:
    groups = await seed_users_and_groups(client)
    stop = asyncio.Event()
    writers = [
        asyncio.create_task(write_users_and_groups(client, n, groups, stop)) for n in range(4)
    ]
    bulk = Writers(client)  # and bulk loads, email changes and deletes of users
    chance = random.Random(5)  # noqa: S311
    try:
        for _ in range(4):
            relay = Relay(tmp_path, database_url, nats_url, **GROUPS)
            relays.append(relay)
            await publishing(broker, relay)
            await asyncio.sleep(chance.random() * 0.5)  # mid-stream: writers go on
            relay.kill()
    finally:
        stop.set()
        await asyncio.gather(*writers)
        await bulk.stop()
    relays.append(Relay(tmp_path, database_url, nats_url, **GROUPS))
    changes = await caught_up(broker, database_url, relays, everything=True)
    kinds = {(c.get("kind", "user"), c["type"]) for c in map(msgspec.json.decode, changes)}
    assert {("group", "deleted"), ("membership", "added"), ("membership", "removed")} <= kinds
    await group_recorder.complete(broker, database_url, changes)
    await assert_stream_is_the_feed_of_everything(broker, client, database_url, changes)
