"""What a trial of SCIM as Okta and Entra ID use it found: each fault, and its fix held."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from msgspec.structs import replace

from service.settings import Settings
from tests.conftest import Service, client_of

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SEARCH = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
SCIM_JSON = "application/scim+json"


def new_user(email: str, name: str = "Ann Lee") -> Any:
    return {"schemas": [USER], "userName": email, "displayName": name, "active": True}


def patch(*operations: Any) -> Any:
    return {"schemas": [PATCH], "Operations": list(operations)}


def scim_error(response: httpx.Response, status: int, scim_type: str | None = None) -> str:
    """The detail of a SCIM error with this status and scimType."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == SCIM_JSON
    error = response.json()
    assert error["schemas"] == [ERROR]
    assert error["status"] == str(status)
    assert error.get("scimType") == scim_type
    detail: str = error["detail"]
    return detail


async def create(client: httpx.AsyncClient, email: str, name: str = "Ann Lee") -> Any:
    created = await client.post("/scim/v2/Users", json=new_user(email, name))
    assert created.status_code == 201, created.text
    return created.json()


async def two_users(client: httpx.AsyncClient) -> None:
    await create(client, "ann@example.com")
    await create(client, "bob@example.com", "Bob Ray")


# 2. Writes to one user queue, as native ones do.
def test_concurrent_patches_of_one_user_all_succeed_and_all_count(
    db: asyncpg.Pool, tmp_path: Path, database_url: str, services: list[Service]
) -> None:
    service = Service(tmp_path, {"DATABASE_URL": database_url, "DB_POOL_MAX": "10"})
    services.append(service)
    service.wait_ready()

    async def patches() -> tuple[list[int], str, str]:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            user = await create(client, "ann@example.com")
            path = f"/scim/v2/Users/{user['id']}"
            rename = [
                patch({"op": "replace", "path": "displayName", "value": f"Ann {n}"})
                for n in range(20)
            ]
            answers = await asyncio.gather(*(client.patch(path, json=body) for body in rename))
            final = (await client.get(path)).json()["meta"]["version"]
            return [answer.status_code for answer in answers], user["meta"]["version"], final

    statuses, first, final = asyncio.run(patches())
    assert statuses == [200] * 20
    # ETags are "<version>-<id>": the version counts each write.
    assert int(final.strip('"').split("-")[0]) == int(first.strip('"').split("-")[0]) + 20


# 9. If-Match on PUT.
async def test_a_put_with_a_stale_if_match_is_a_412_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    user = await create(client, "ann@example.com")
    path, stale = f"/scim/v2/Users/{user['id']}", user["meta"]["version"]
    renamed = await client.patch(
        path, json=patch({"op": "replace", "path": "displayName", "value": "B"})
    )
    assert renamed.status_code == 200
    put = await client.put(path, json=new_user("new@example.com", "C"), headers={"If-Match": stale})
    scim_error(put, 412)
    assert (await client.get(path)).json() == renamed.json()
    current = {"If-Match": renamed.json()["meta"]["version"]}
    replaced = await client.put(path, json=new_user("new@example.com", "C"), headers=current)
    assert replaced.json()["userName"] == "new@example.com"


async def test_a_put_without_if_match_is_a_428_when_it_is_required(
    db: asyncpg.Pool, settings: Settings
) -> None:
    async with client_of(replace(settings, require_if_match=True)) as client:
        user = await create(client, "ann@example.com")
        path = f"/scim/v2/Users/{user['id']}"
        scim_error(await client.put(path, json=new_user("new@example.com", "C")), 428)
        assert (await client.get(path)).json() == user
