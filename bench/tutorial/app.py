"""The tutorial's app: one APIRouter, a pydantic User and a default asyncpg pool."""

# The endpoints have no return annotations, as in the tutorial: FastAPI reads one
# as a response_model and validates every answer a second time.
# mypy: disable-error-code="no-untyped-def"

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel

DATABASE_URL = os.environ["DATABASE_URL"]

SELECT_USER = "SELECT name, email FROM users WHERE email = $1"
SELECT_USERS = "SELECT name, email FROM users LIMIT $1 OFFSET $2"
INSERT_USER = "INSERT INTO users (name, email) VALUES ($1, $2)"


class User(BaseModel):
    name: str
    email: str


router = APIRouter()
pool: asyncpg.Pool


@router.get("/users/{email}")
async def get_user(email: str):
    async with pool.acquire() as connection:
        row = await connection.fetchrow(SELECT_USER, email)
    if row is None:
        return None
    return User(name=row["name"], email=row["email"])


@router.get("/users")
async def list_users(limit: int = 10, offset: int = 0):
    async with pool.acquire() as connection:
        rows = await connection.fetch(SELECT_USERS, limit, offset)
    return [User(name=row["name"], email=row["email"]) for row in rows]


@router.post("/users")
async def create_user(user: User):
    async with pool.acquire() as connection:
        await connection.execute(INSERT_USER, user.name, user.email)
    return user


@router.post("/users/bulk")
async def create_users(users: list[User]):
    async with pool.acquire() as connection:
        await connection.executemany(INSERT_USER, [(user.name, user.email) for user in users])
    return {"inserted": len(users)}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    global pool
    pool = await asyncpg.create_pool(DATABASE_URL)
    yield
    await pool.close()


def create_app() -> FastAPI:
    """The app, built for uvicorn's --factory, which the bench gives every app alike."""
    app = FastAPI(lifespan=lifespan)
    app.include_router(router)
    return app
