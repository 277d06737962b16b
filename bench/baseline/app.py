"""FastAPI with pydantic models, a pool.acquire() per request, LIMIT/OFFSET and executemany."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel

INSERT_USER = """
    INSERT INTO baseline_users (name, email) VALUES ($1, $2)
    RETURNING id, name, email, created_at
"""
INSERT_USER_ROW = "INSERT INTO baseline_users (name, email) VALUES ($1, $2)"
SELECT_USER_BY_EMAIL = "SELECT id, name, email, created_at FROM baseline_users WHERE email = $1"
SELECT_USERS_PAGE = """
    SELECT id, name, email, created_at FROM baseline_users
    ORDER BY id LIMIT $1 OFFSET $2
"""


class NewUser(BaseModel):
    name: str
    email: str


class User(BaseModel):
    id: int
    name: str
    email: str
    created_at: datetime


class Inserted(BaseModel):
    inserted: int


def get_pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


PoolDependency = Annotated[asyncpg.Pool, Depends(get_pool)]
router = APIRouter()


@router.post("/users", status_code=201)
async def create_user(user: NewUser, pool: PoolDependency) -> User:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(INSERT_USER, user.name, user.email)
    assert row is not None  # INSERT ... RETURNING always returns the row
    return User(**dict(row))


@router.post("/users/bulk", status_code=201)
async def create_users(users: list[NewUser], pool: PoolDependency) -> Inserted:
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(INSERT_USER_ROW, [(user.name, user.email) for user in users])
    return Inserted(inserted=len(users))


@router.get("/users/{email}")
async def get_user(email: str, pool: PoolDependency) -> User | None:
    # The tutorial answers a missing user with null rather than 404.
    async with pool.acquire() as conn:
        row = await conn.fetchrow(SELECT_USER_BY_EMAIL, email)
    return None if row is None else User(**dict(row))


@router.get("/users")
async def list_users(pool: PoolDependency, limit: int = 50, offset: int = 0) -> list[User]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(SELECT_USERS_PAGE, limit, offset)
    return [User(**dict(row)) for row in rows]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(os.environ["DATABASE_URL"])
    try:
        yield
    finally:
        await app.state.pool.close()


def create_app() -> FastAPI:
    app = FastAPI(lifespan=lifespan)
    app.include_router(router)
    return app
