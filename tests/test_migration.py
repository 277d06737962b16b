"""The migration's concurrent index builds: made once, valid, and used by search."""

from __future__ import annotations

import asyncpg
import msgspec
import pytest

from service import queries
from service.migration import SCHEMA_PATH, Schema, migrate
from tests.conftest import connect

SEARCH_INDEXES = [
    "users_search_trgm",
    "idempotency_keys_user_id",
    "users_external_id_key",
    "idempotency_keys_emails",
    "groups_external_id_key",
    "groups_search_trgm",
    "users_created_at",
    "users_attributes",
    "users_disabled",
]
INDEXES = """
SELECT c.relname, c.oid, i.indisvalid, i.indisunique FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relname = ANY($1::text[]) ORDER BY c.relname
"""


async def indexes(conn: asyncpg.Connection) -> list[tuple[str, int, bool, bool]]:
    return [tuple(row) for row in await conn.fetch(INDEXES, SEARCH_INDEXES)]


async def kinds(conn: asyncpg.Connection, name: str) -> tuple[bool, bool]:
    """Whether the index `name` is valid, and whether it is unique."""
    return {index: (valid, unique) for index, _, valid, unique in await indexes(conn)}[name]


def test_schema_builds_its_search_indexes_outside_the_transaction() -> None:
    schema = Schema(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema.indexes == SEARCH_INDEXES
    assert "CONCURRENTLY" not in schema.transactional.replace("-- ", "").split("concurrently:")[0]
    assert "CREATE EXTENSION IF NOT EXISTS pg_trgm" in schema.transactional


async def test_migrate_builds_valid_indexes_once_and_again_changes_nothing(
    fresh_database_url: str,
) -> None:
    await migrate(fresh_database_url)
    conn = await connect(fresh_database_url)
    try:
        built = await indexes(conn)
        assert [(name, valid) for name, _, valid, _ in built] == [
            ("groups_external_id_key", True),
            ("groups_search_trgm", True),
            ("idempotency_keys_emails", True),
            ("idempotency_keys_user_id", True),
            ("users_attributes", True),
            ("users_created_at", True),
            ("users_disabled", True),
            ("users_external_id_key", True),
            ("users_search_trgm", True),
        ]
        await migrate(fresh_database_url)
        assert await indexes(conn) == built  # the same indexes, not rebuilt
    finally:
        await conn.close()


async def test_migrate_names_the_emails_of_409s_stored_before_it_could(
    fresh_database_url: str,
) -> None:
    await migrate(fresh_database_url)
    conn = await connect(fresh_database_url)
    try:
        # As the release before stored them: no emails column to fill.
        await conn.execute(
            "INSERT INTO idempotency_keys (caller, key, route, fingerprint, status, headers, "
            "body, expires_at) VALUES ('', $1, '/users/bulk', '', $2, '[]', $3, now() + '1 day')"
            " , ('', 'created', '/users', '', 201, '[]', '{}', now() + '1 day')",
            "refused", 409, b'{"status":409,"conflicts":["Ann@X.io","bo@x.io"]}',
        )  # fmt: skip
        await migrate(fresh_database_url)
        rows = await conn.fetch("SELECT key, emails FROM idempotency_keys")
        named = {row["key"]: row["emails"] for row in rows}
        assert named == {"refused": ["ann@x.io", "bo@x.io"], "created": None}
    finally:
        await conn.close()


async def test_migrate_rebuilds_an_index_an_interrupted_build_left_invalid(
    fresh_database_url: str,
) -> None:
    await migrate(fresh_database_url)
    conn = await connect(fresh_database_url)
    try:
        # A concurrent build that fails leaves its index behind, INVALID.
        await conn.execute("DROP INDEX users_created_at")
        await conn.execute(
            "INSERT INTO users (name, email, created_at) VALUES "
            "('A', 'a@x.io', '2026-01-01Z'), ('B', 'b@x.io', '2026-01-01Z')"
        )
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "CREATE UNIQUE INDEX CONCURRENTLY users_created_at ON users (created_at)"
            )
        assert await kinds(conn, "users_created_at") == (False, True)  # invalid, unique

        await migrate(fresh_database_url)
        assert await kinds(conn, "users_created_at") == (True, False)
    finally:
        await conn.close()


async def test_the_search_filter_can_use_the_trigram_index(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn, conn.transaction():
        # On a small table a scan is cheaper; this asks whether the index serves at all.
        await conn.execute("SET LOCAL enable_seqscan = off")
        clauses, arguments = queries.filter_clauses(queries.Filters("okafor", None, None))
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) SELECT FROM users" + queries.where(clauses), *arguments
        )
    assert "users_search_trgm" in msgspec.json.encode(msgspec.json.decode(plan)).decode()


# users_email_valid as the first releases made it, with "\s" and no invisible characters.
FIRST_EMAIL_RULE = """
ALTER TABLE users DROP CONSTRAINT users_email_valid;
ALTER TABLE users ADD CONSTRAINT users_email_valid CHECK (
    char_length(email) BETWEEN 3 AND 254
    AND char_length(split_part(email, '@', 1)) BETWEEN 1 AND 64
    AND split_part(email, '@', 2) <> ''
    AND split_part(email, '@', 3) = ''
    AND strpos(split_part(email, '@', 2), '/') = 0
    AND email !~ '[\\s\\x01-\\x1f\\x7f-\\x9f]'
);
COMMENT ON CONSTRAINT users_email_valid ON users IS NULL;
"""
CONSTRAINT_IS_VALID = "SELECT convalidated FROM pg_constraint WHERE conname = 'users_email_valid'"
INSERT = "INSERT INTO users (name, email) VALUES ('Bom', $1)"


async def test_migrate_brings_an_earlier_email_rule_up_to_date_keeping_every_user(
    fresh_database_url: str,
) -> None:
    await migrate(fresh_database_url)
    conn = await connect(fresh_database_url)
    try:
        await conn.execute(FIRST_EMAIL_RULE)
        await conn.execute(INSERT, "ann@example.com")
        await migrate(fresh_database_url)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(INSERT, "\ufeffbom@example.com")
        assert await conn.fetchval(CONSTRAINT_IS_VALID) is True
        assert await conn.fetchval("SELECT array_agg(email) FROM users") == ["ann@example.com"]
    finally:
        await conn.close()


async def test_rows_an_earlier_rule_let_in_leave_the_new_rule_enforced_but_not_valid(
    fresh_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await migrate(fresh_database_url)
    conn = await connect(fresh_database_url)
    try:
        await conn.execute(FIRST_EMAIL_RULE)
        await conn.execute(INSERT, "\ufeffbom@example.com")
        await migrate(fresh_database_url)
        assert "users_email_valid" in caplog.text
        assert await conn.fetchval(CONSTRAINT_IS_VALID) is False
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(INSERT, "\u200bzwsp@example.com")
        await conn.execute("DELETE FROM users")
        await migrate(fresh_database_url)  # validated once the owners correct the rows
        assert await conn.fetchval(CONSTRAINT_IS_VALID) is True
    finally:
        await conn.close()
