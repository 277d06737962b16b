"""The SQL of service/queries.py, checked against a real PostgreSQL."""

from __future__ import annotations

import asyncpg
import pytest

from service import queries
from service.queries import CHANGE_USER, USER_COLUMNS


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
