"""Okta's SCIM 2.0 spec test: the requests Okta gives integrators to check a server, in order."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from msgspec.structs import replace

from service.settings import Settings
from tests.conftest import client_of
from tests.scim.messages import ERROR, USER

TOKEN = "okta-provisioning-token-0123456789"  # noqa: S105
LIST_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
# The headers of every request Okta's test sends, but its creates'.
OKTA_HEADERS = {
    "Accept-Charset": "utf-8",
    "Content-Type": "application/scim+json; charset=utf-8",
    "Accept": "application/scim+json",
    "Authorization": f"Bearer {TOKEN}",
    "User-Agent": "OKTA SCIM Integration",
}
# Its creates send plain JSON and ask for SCIM's with a charset.
CREATE_HEADERS = {
    "Content-Type": "application/json",
    "Authorization": f"Bearer {TOKEN}",
    "Accept": "application/scim+json; charset=utf-8",
}


@pytest.fixture
async def okta(settings: Settings, db: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(replace(settings, api_tokens=(TOKEN,))) as client:
        yield client


def okta_create(user_name: str, given: str, family: str) -> dict[str, Any]:
    """The body of the test's create, as Okta's template sends it."""
    return {
        "schemas": [USER],
        "userName": user_name,
        "name": {"givenName": given, "familyName": family},
        "emails": [{"primary": True, "value": user_name, "type": "work"}],
        "displayName": f"{given} {family}",
        "active": True,
    }


def not_empty(value: Any) -> bool:
    """Runscope's not_empty: present, and neither null nor an empty string or list."""
    return value not in (None, "", [], {})


def assert_profile(user: dict[str, Any]) -> None:
    """What the test asks of every user it reads: each field there and not empty."""
    for value in (
        user["id"],
        user["name"]["familyName"],
        user["name"]["givenName"],
        user["userName"],
        user["active"],
        user["emails"][0]["value"],
    ):
        assert not_empty(value), user


def assert_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    error = response.json()
    assert not_empty(error["detail"])
    assert error["status"] == str(status)
    assert ERROR in error["schemas"]


async def test_okta_spec_test_passes_from_the_users_endpoint_to_a_bad_token(
    okta: httpx.AsyncClient,
) -> None:
    # The test runs against a server that holds users: one provisioned earlier.
    seeded = await okta.post(
        "/scim/v2/Users", json=okta_create("seed@atko.com", "Sam", "Seed"), headers=CREATE_HEADERS
    )
    assert seeded.status_code == 201, seeded.text

    # Required Test: Test Users endpoint.
    page = await okta.get("/scim/v2/Users?count=1&startIndex=1", headers=OKTA_HEADERS)
    assert page.status_code == 200, page.text
    listed = page.json()
    assert LIST_RESPONSE in listed["schemas"]
    assert not_empty(listed["Resources"])
    for number in ("itemsPerPage", "startIndex", "totalResults"):
        assert isinstance(listed[number], int)
    assert_profile(listed["Resources"][0])
    isv_user_id = listed["Resources"][0]["id"]

    # Required Test: Get Users/{{id}}.
    read = await okta.get(f"/scim/v2/Users/{isv_user_id}", headers=OKTA_HEADERS)
    assert read.status_code == 200, read.text
    assert_profile(read.json())
    assert read.json()["id"] == isv_user_id

    # Required Tests: an unknown user by userName, then by id, then a random one.
    for user_name in ("invalid-user-0000@atko.com", f"runscope{uuid.uuid4().hex[:8]}@atko.com"):
        none = await okta.get(
            "/scim/v2/Users", params={"filter": f'userName eq "{user_name}"'}, headers=OKTA_HEADERS
        )
        assert none.status_code == 200, none.text
        assert LIST_RESPONSE in none.json()["schemas"]
        assert none.json()["totalResults"] == 0
    assert_error(await okta.get(f"/scim/v2/Users/{uuid.uuid4()}", headers=OKTA_HEADERS), 404)

    # Required Test: Create Okta user with realistic values.
    user_name = f"runscope{uuid.uuid4().hex[:8]}@atko.com"
    created = await okta.post(
        "/scim/v2/Users", json=okta_create(user_name, "Rory", "Scope"), headers=CREATE_HEADERS
    )
    assert created.status_code == 201, created.text
    user = created.json()
    assert user["active"] is True
    assert not_empty(user["id"])
    assert user["name"]["familyName"] == "Scope"
    assert user["name"]["givenName"] == "Rory"
    assert USER in user["schemas"]
    assert user["userName"] == user_name

    # Required Test: Verify that user was created.
    again = await okta.get(f"/scim/v2/Users/{user['id']}", headers=OKTA_HEADERS)
    assert again.status_code == 200, again.text
    assert again.json()["userName"] == user_name
    assert again.json()["name"]["familyName"] == "Scope"
    assert again.json()["name"]["givenName"] == "Rory"

    # Required Test: Expect failure when recreating user with same values.
    duplicate = await okta.post(
        "/scim/v2/Users", json=okta_create(user_name, "Rory", "Scope"), headers=CREATE_HEADERS
    )
    assert duplicate.status_code == 409, duplicate.text

    # Required Test: Username Case Sensitivity Check. Okta asks only for a 200;
    # userName is unique regardless of case, so the user is found.
    caps = await okta.get(
        "/scim/v2/Users",
        params={"filter": f'userName eq "{user_name.upper()}"'},
        headers=OKTA_HEADERS,
    )
    assert caps.status_code == 200, caps.text
    assert [found["id"] for found in caps.json()["Resources"]] == [user["id"]]

    # Required Test: Check status 401, with Okta's Authorization of a bare word.
    refused = await okta.get(
        "/scim/v2/Users",
        params={"filter": f'userName eq "{user_name.upper()}"'},
        headers={**OKTA_HEADERS, "Authorization": "non-token"},
    )
    assert_error(refused, 401)

    # Required Test: Check status 404, for an id of Okta's own shape.
    assert_error(await okta.get("/scim/v2/Users/00919288221112222", headers=OKTA_HEADERS), 404)
