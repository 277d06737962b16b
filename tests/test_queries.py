"""The SQL of service/queries.py, checked against a real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from service import queries
from service.queries import CHANGE_USER, USER_COLUMNS
from service.schemas import NewUser
from service.settings import Settings
from tests.conftest import connect
from tests.test_users import until_waiting_on_locks


def search_page() -> str:
    clauses, arguments = queries.filter_clauses(queries.Filters("ann", None, None))
    return queries.SEARCH_PAGE.format(
        where=" AND ".join(clauses), limit=len(arguments) + 1, offset=len(arguments) + 2
    )


# Every statement whose rows to_user reads, and where its user's columns begin.
USER_QUERIES = {
    "INSERT_EACH": (queries.INSERT_EACH, 0),
    "FIND_USERS_BY_KEYS": (queries.FIND_USERS_BY_KEYS, 0),
    "FIND_USERS_BY_HANDLES": (queries.FIND_USERS_BY_HANDLES, 0),
    "FIND_USER": (queries.FIND_USER, 0),
    "LIST_PAGE_AT": (queries.LIST_PAGE_AT, 0),
    "LIST_PAGES_AFTER": (queries.LIST_PAGES_AFTER, 1),
    "UPDATE_USER": (queries.UPDATE_USER, 0),
    "SEARCH_PAGE": (search_page(), 0),
    "CHANGES_PAGE": (queries.CHANGES_PAGE, CHANGE_USER),
}


@pytest.mark.parametrize("name", USER_QUERIES)
async def test_rows_read_as_users_hold_the_user_columns_in_order(
    name: str, db: asyncpg.Pool
) -> None:
    # to_user reads its columns by position: a reordered SELECT would swap fields.
    query, first = USER_QUERIES[name]
    async with db.acquire() as conn:
        statement = await conn.prepare(query)
        columns = tuple(attribute.name for attribute in statement.get_attributes())
    assert columns[first : first + len(USER_COLUMNS)] == USER_COLUMNS


async def test_a_batch_of_creates_and_a_bulk_load_sharing_emails_wait_their_turn(
    db: asyncpg.Pool, settings: Settings
) -> None:
    """Given their emails in other orders, one waits for the other: the batch
    creates them all, and the load is told they are taken, not a deadlock."""
    batch = [queries.new_row(NewUser(name="C", email=e)) for e in ["z@x.io", "m@x.io", "a@x.io"]]
    load = [NewUser(name="L", email=email) for email in ["A@x.io", "M@x.io", "Z@x.io"]]
    assert settings.database_url is not None
    holder = await connect(settings.database_url)
    try:
        # An m@x.io not yet committed stops both until it is rolled back.
        held = holder.transaction()
        await held.start()
        await holder.execute("INSERT INTO users (name, email) VALUES ('H', 'm@x.io')")
        async with db.acquire() as creating, db.acquire() as loading:
            created = asyncio.create_task(queries.insert_each(creating, batch))
            await until_waiting_on_locks(db, 1)
            taken = asyncio.create_task(queries.copy_users(loading, load))
            await until_waiting_on_locks(db, 2)
            await held.rollback()
            stored = await created
            assert await taken == ["a@x.io", "m@x.io", "z@x.io"]
    finally:
        await holder.close()
    assert [user and user.user.email for user in stored] == ["z@x.io", "m@x.io", "a@x.io"]
