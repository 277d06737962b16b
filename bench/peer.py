"""The peer: the four endpoints in Litestar, msgspec and asyncpg, as Litestar's docs show."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import asyncpg
from litestar import Litestar, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import Parameter

from service.queries import to_user
from service.schemas import Inserted, NewUser, User, email_key

# The service's schema and semantics: emails are one identity regardless of case
# and pages are in email order; one query per request, returning the same columns.
SELECT_USER = """
SELECT public_id::text AS id, name, email, status, attributes,
    rfc3339(created_at) AS created_at, rfc3339(updated_at) AS updated_at
FROM users WHERE lower(email) = $1
"""
SELECT_PAGE_AT = """
SELECT public_id::text AS id, name, email, status, attributes,
    rfc3339(created_at) AS created_at, rfc3339(updated_at) AS updated_at FROM users
ORDER BY lower(email) LIMIT $1 OFFSET $2
"""
SELECT_PAGE_AFTER = """
SELECT public_id::text AS id, name, email, status, attributes,
    rfc3339(created_at) AS created_at, rfc3339(updated_at) AS updated_at FROM users
WHERE lower(email) > $1 ORDER BY lower(email) LIMIT $2
"""
INSERT_USER = """
INSERT INTO users (name, email) VALUES ($1, $2)
ON CONFLICT ((lower(email))) DO NOTHING
RETURNING public_id::text AS id, name, email, status, attributes,
    rfc3339(created_at) AS created_at, rfc3339(updated_at) AS updated_at
"""
INSERT_USER_ROW = "INSERT INTO users (name, email) VALUES ($1, $2)"


def pool_of(state: State) -> asyncpg.Pool:
    pool: asyncpg.Pool = state.pool
    return pool


@get("/users/{email:str}")
async def get_user(state: State, email: str) -> User:
    row = await pool_of(state).fetchrow(SELECT_USER, email_key(email))
    if row is None:
        raise NotFoundException(detail="No user has that email")
    return to_user(row)


@get("/users")
async def list_users(
    state: State,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 10,
    offset: Annotated[int, Parameter(ge=0)] = 0,
    after: str | None = None,
) -> list[User]:
    if after is None:
        rows = await pool_of(state).fetch(SELECT_PAGE_AT, limit, offset)
    else:
        rows = await pool_of(state).fetch(SELECT_PAGE_AFTER, email_key(after), limit)
    return [to_user(row) for row in rows]


@post("/users")
async def create_user(state: State, data: NewUser) -> User:
    row = await pool_of(state).fetchrow(INSERT_USER, data.name, data.email)
    if row is None:
        raise HTTPException(status_code=409, detail="A user with that email already exists")
    return to_user(row)


@post("/users/bulk")
async def create_users(state: State, data: list[NewUser]) -> Inserted:
    try:
        # executemany is atomic: all rows or none.
        await pool_of(state).executemany(INSERT_USER_ROW, [(new.name, new.email) for new in data])
    except asyncpg.UniqueViolationError:
        raise HTTPException(status_code=409, detail="Emails already exist") from None
    return Inserted(inserted=len(data))


@asynccontextmanager
async def db_pool(app: Litestar) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(os.environ["DATABASE_URL"])
    try:
        yield
    finally:
        await app.state.pool.close()


def create_app() -> Litestar:
    return Litestar(
        route_handlers=[get_user, list_users, create_user, create_users], lifespan=[db_pool]
    )
