"""The schema, the migration command and the pool's lifecycle."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import msgspec
import pytest
from msgspec.structs import replace

from service.app import create_app
from service.database import (
    Database,
    DatabaseRefused,
    SchemaMissing,
    close_pool,
    open_pool,
    refusal,
)
from service.migration import Schema
from service.settings import Settings
from tests.conftest import (
    REFUSALS,
    GuardedDatabase,
    assert_problem,
    attributes_of_bytes,
    connect,
    free_port,
)

ROOT = Path(__file__).resolve().parent.parent


def run_migrate(database_url: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "service", "migrate"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def test_migrate_runs_twice_and_keeps_the_data(fresh_database_url: str) -> None:
    first = run_migrate(fresh_database_url)
    assert first.wait(60) == 0, first.communicate()[0]
    conn = await connect(fresh_database_url)
    try:
        await conn.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@x.io')")
        second = run_migrate(fresh_database_url)
        output = second.communicate(timeout=60)[0]
        assert second.returncode == 0, output
        assert "schema applied" in output
        assert await conn.fetchval("SELECT count(*) FROM users") == 1
    finally:
        await conn.close()


async def test_migrate_brings_a_first_release_table_up_to_date_keeping_every_user(
    fresh_database_url: str,
) -> None:
    conn = await connect(fresh_database_url)
    try:
        await conn.execute((ROOT / "tests" / "fixtures" / "schema_v1.sql").read_text())
        await conn.execute(
            "INSERT INTO users (name, email, created_at) SELECT 'User ' || n, "
            "'User' || n || '@Example.com', now() - n * interval '1 day' "
            "FROM generate_series(1, 2000) AS n"
        )
        before = await conn.fetch("SELECT id, name, email, created_at FROM users ORDER BY id")
        for _ in range(2):
            run = run_migrate(fresh_database_url)
            assert run.wait(60) == 0, run.communicate()[0]
        after = await conn.fetch(
            "SELECT id, name, email, created_at, public_id, updated_at, version FROM users "
            "ORDER BY id"
        )
        assert [tuple(row)[:4] for row in after] == [tuple(row) for row in before]
        assert len({row["public_id"] for row in after}) == len(before)
        assert all(row["updated_at"] is not None and row["version"] == 1 for row in after)
        # The constraints: a unique, required id made by the database, and the
        # first release's rules, which still hold.
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO users (name, email, public_id) VALUES ('A', 'a@x.io', $1)",
                after[0]["public_id"],
            )
        with pytest.raises(asyncpg.NotNullViolationError):
            await conn.execute(
                "INSERT INTO users (name, email, public_id) VALUES ('A', 'a@x', null)"
            )
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO users (name, email) VALUES ('A', 'USER1@example.com')")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("INSERT INTO users (name, email) VALUES ('A', 'no-at-sign')")
        made = await conn.fetchrow(
            "INSERT INTO users (name, email) VALUES ('A', 'a@x.io') "
            "RETURNING public_id, updated_at, version"
        )
        assert made is not None
        assert made["public_id"] is not None
        assert made["version"] == 1
        assert await conn.fetchval("SELECT to_regclass('idempotency_keys') IS NOT NULL")
    finally:
        await conn.close()


async def test_migrate_brings_a_second_release_table_up_to_date_without_rewriting_it(
    fresh_database_url: str,
) -> None:
    conn = await connect(fresh_database_url)
    try:
        # As the second release's migration applied it: its index builds one by one.
        schema = Schema((ROOT / "tests" / "fixtures" / "schema_v2.sql").read_text())
        await conn.execute(schema.transactional)
        for statement, _ in schema.alone:
            await conn.execute(statement)
        await conn.execute(
            "INSERT INTO users (name, email, created_at) SELECT 'User ' || n, "
            "'User' || n || '@Example.com', now() - n * interval '1 day' "
            "FROM generate_series(1, 2000) AS n"
        )
        await conn.execute("UPDATE users SET name = 'Renamed', version = 2 WHERE id <= 10")
        columns = "id, public_id, name, email, created_at, updated_at, version"
        before = await conn.fetch(f"SELECT {columns} FROM users ORDER BY id")  # noqa: S608
        # A rewrite gives the table a new file: the same file means none happened.
        file = "SELECT relfilenode FROM pg_class WHERE oid = 'users'::regclass"
        stored_in = await conn.fetchval(file)
        for _ in range(2):
            run = run_migrate(fresh_database_url)
            assert run.wait(60) == 0, run.communicate()[0]
        assert await conn.fetchval(file) == stored_in
        after = await conn.fetch(
            f"SELECT {columns}, status, attributes::text FROM users ORDER BY id"  # noqa: S608
        )
        assert [tuple(row)[:7] for row in after] == [tuple(row) for row in before]
        assert {(row["status"], row["attributes"]) for row in after} == {("active", "{}")}
        # The new rules hold, and are valid for the rows already there.
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE users SET status = 'gone' WHERE id = 1")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("""UPDATE users SET attributes = '{"Bad": "x"}' WHERE id = 1""")
        assert await conn.fetchval(
            "SELECT bool_and(convalidated) FROM pg_constraint WHERE conname = ANY($1::text[])",
            ["users_status_valid", "users_attributes_valid"],
        )
    finally:
        await conn.close()


async def test_concurrent_migrations_both_succeed(fresh_database_url: str) -> None:
    runs = [run_migrate(fresh_database_url) for _ in range(3)]
    for run in runs:
        assert run.wait(60) == 0, run.communicate()[0]
    conn = await connect(fresh_database_url)
    try:
        indexes = await conn.fetchval("SELECT count(*) FROM pg_indexes WHERE tablename = 'users'")
        # The primary key, the unique lower(email), id and externalId indexes, search,
        # created_at, attributes and disabled users.
        assert indexes == 8
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("name", "email"),
    [
        ("", "ann@x.io"),
        ("x" * 201, "ann@x.io"),
        ("bell\x07", "ann@x.io"),
        ("Ann", "no-at-sign"),
        ("Ann", "two@@x.io"),
        ("Ann", "sp ace@x.io"),
        ("Ann", "x" * 65 + "@x.io"),
        ("Ann", "a@" + "d" * 253),
        ("Ann", "a@x.io/path"),
    ],
)
async def test_check_constraints_refuse_what_the_api_refuses(
    db: asyncpg.Pool, name: str, email: str
) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("INSERT INTO users (name, email) VALUES ($1, $2)", name, email)


@pytest.mark.parametrize(
    ("status", "attributes"),
    [
        ("suspended", "{}"),
        ("Active", "{}"),
        ("active", "[]"),
        ("active", '"x"'),
        ("active", '{"Tenant": "x"}'),
        ("active", '{"1st": "x"}'),
        ("active", '{"": "x"}'),
        ("active", '{"%s": "x"}' % ("a" * 65)),
        ("active", '{"tenant": 1}'),
        ("active", '{"tenant": null}'),
        ("active", '{"tenant": "%s"}' % ("x" * 1001)),
        ("active", '{"tenant": "a\\u0007b"}'),
        ("active", '{"tenant": "a\u202eb"}'),
        ("active", msgspec.json.encode({f"a{n}": "x" for n in range(51)}).decode()),
        ("active", msgspec.json.encode(attributes_of_bytes(8193)).decode()),
    ],
)
async def test_check_constraints_refuse_the_status_and_attributes_the_api_refuses(
    db: asyncpg.Pool, status: str, attributes: str
) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "INSERT INTO users (name, email, status, attributes) VALUES ('A', 'a@x.io', $1, $2)",
            status, attributes,
        )  # fmt: skip


async def test_check_constraints_take_attributes_up_to_their_bounds(db: asyncpg.Pool) -> None:
    fifty = {f"a{n:02}": "é" * 2 for n in range(50)}
    longest = {"a" * 64: "x"}
    for n, attributes in enumerate((fifty, attributes_of_bytes(8192), {"a": ""}, longest)):
        await db.execute(
            "INSERT INTO users (name, email, attributes) VALUES ('A', $1, $2)",
            f"a{n}@x.io", msgspec.json.encode(attributes).decode(),
        )  # fmt: skip


async def test_unique_index_ignores_case(db: asyncpg.Pool) -> None:
    await db.execute("INSERT INTO users (name, email) VALUES ('a', 'Ann@X.io')")
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("INSERT INTO users (name, email) VALUES ('b', 'aNN@x.IO')")


async def test_close_pool_terminates_a_connection_that_will_not_finish(
    settings: Settings,
) -> None:
    pool = await open_pool(settings)
    busy = asyncio.ensure_future(pool.execute("SELECT pg_sleep(30)"))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await close_pool(pool, grace=0.5)
    assert time.monotonic() - started < 5
    with pytest.raises(asyncpg.PostgresConnectionError):
        await busy


async def test_a_request_waits_at_most_the_pool_timeout_then_gets_503(
    settings: Settings, db: asyncpg.Pool
) -> None:
    app = create_app(replace(settings, db_pool_max=2, db_pool_timeout=0.3))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        app_db: Database = app.state.db
        async with app_db.connection(), app_db.connection():
            started = time.monotonic()
            response = await client.get("/users")
            waited = time.monotonic() - started
        assert_problem(response, 503)
        assert response.headers["retry-after"] == "1"
        assert 0.3 <= waited < 1.5
        # Freed connections serve again at once.
        assert (await client.get("/users")).status_code == 200


@pytest.mark.parametrize("cause", REFUSALS)
async def test_a_refusal_fails_start_up_at_once_with_one_line_naming_its_cause(
    guarded_database: GuardedDatabase,
    settings: Settings,
    cause: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = replace(
        settings, database_url=guarded_database.refused_url(cause), db_start_timeout=3
    )
    started = time.monotonic()
    with pytest.raises(DatabaseRefused) as raised:
        await open_pool(refused)
    assert time.monotonic() - started < 1  # no attempt again
    assert "retrying" not in caplog.text
    line = str(raised.value)
    assert line.startswith(f"database at 127.0.0.1:{guarded_database.port} refused the service: ")
    assert REFUSALS[cause] in line
    assert "\n" not in line
    assert "password-" not in line  # neither the right password nor the wrong one


async def test_the_database_that_refuses_those_serves_the_right_url(
    guarded_database: GuardedDatabase, settings: Settings
) -> None:
    pool = await open_pool(replace(settings, database_url=guarded_database.url()))
    try:
        assert await pool.fetchval("SELECT count(*) FROM users") >= 0
    finally:
        await close_pool(pool)


def test_an_untrusted_certificate_is_a_refusal_and_a_refused_port_is_not() -> None:
    url = "postgresql://app@db.internal/app?sslmode=verify-full"
    untrusted = ssl.SSLCertVerificationError("certificate verify failed: self-signed certificate")
    assert "TLS certificate failed verification" in (refusal(untrusted, url) or "")
    assert refusal(ConnectionRefusedError(111, "Connect call failed"), url) is None
    assert refusal(ConnectionResetError(104, "Connection reset by peer"), url) is None


async def test_start_up_refuses_a_database_without_the_users_table(
    settings: Settings, fresh_database_url: str
) -> None:
    with pytest.raises(SchemaMissing) as raised:
        await open_pool(replace(settings, database_url=fresh_database_url))
    assert str(raised.value).endswith(" has no users table: run `python -m service migrate`")


@pytest.mark.parametrize("cause", REFUSALS)
def test_migrate_fails_at_once_with_one_line_when_the_database_refuses(
    guarded_database: GuardedDatabase, cause: str
) -> None:
    started = time.monotonic()
    run = run_migrate(guarded_database.refused_url(cause), DB_START_TIMEOUT="3")
    output = run.communicate(timeout=60)[0]
    assert run.returncode == 1, output
    assert time.monotonic() - started < 2.5, output  # no attempt again
    [line] = output.splitlines()
    assert line.startswith(f"ERROR    service: database at 127.0.0.1:{guarded_database.port} ")
    assert REFUSALS[cause] in line


def test_migrate_waits_for_an_unreachable_database_then_gives_up_with_one_line() -> None:
    nobody = f"postgresql://users@127.0.0.1:{free_port()}/users"
    started = time.monotonic()
    run = run_migrate(nobody, DB_START_TIMEOUT="1.5")
    output = run.communicate(timeout=60)[0]
    took = time.monotonic() - started
    assert run.returncode == 1, output
    assert 1.5 <= took < 10, output
    lines = output.splitlines()
    assert len(lines) == 3, output
    assert "retrying in 0.5 s (attempt 1 of 3)" in lines[0]
    assert "retrying in 1.0 s (attempt 2 of 3)" in lines[1]
    assert lines[2].startswith("ERROR    service: database not reachable at 127.0.0.1:")
    assert lines[2].endswith("giving up after 3 attempts in 1.5 s")
