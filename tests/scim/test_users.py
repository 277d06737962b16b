"""SCIM 2.0 under /scim/v2: what Okta and Entra ID send, and what they get back."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from service.scim.errors import ScimError
from service.scim.users import CANONICAL, State, checked, patched
from tests.conftest import Service, client_of
from tests.scim.messages import ERROR, SCIM_JSON, USER, patch, scim_error
from tests.scim.tester import failed_checks

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def okta_user(email: str, external_id: str | None, given: str = "Ann", family: str = "Lee") -> Any:
    """A create as Okta sends it."""
    return {
        "schemas": [USER],
        "userName": email,
        "externalId": external_id,
        "name": {"givenName": given, "familyName": family},
        "emails": [{"primary": True, "value": email, "type": "work"}],
        "displayName": f"{given} {family}",
        "active": True,
    }


async def found(client: httpx.AsyncClient, filter: str) -> list[Any]:
    response = await client.get("/scim/v2/Users", params={"filter": filter})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["totalResults"] == len(body["Resources"])
    return list(body["Resources"])


async def test_okta_searches_creates_reads_replaces_deactivates_and_reactivates(
    client: httpx.AsyncClient,
) -> None:
    assert await found(client, 'userName eq "ann@example.com"') == []
    created = await client.post("/scim/v2/Users", json=okta_user("ann@example.com", "00u1"))
    assert created.status_code == 201, created.text
    assert created.headers["content-type"] == SCIM_JSON
    user = created.json()
    assert created.headers["location"] == user["meta"]["location"]
    assert created.headers["etag"] == user["meta"]["version"]
    assert user["userName"] == "ann@example.com"
    assert user["externalId"] == "00u1"
    assert user["displayName"] == user["name"]["formatted"] == "Ann Lee"
    assert user["emails"] == [{"value": "ann@example.com"}]
    assert user["active"] is True
    assert user["meta"]["resourceType"] == "User"

    read = await client.get(f"/scim/v2/Users/{user['id']}")
    assert read.json() == user
    [listed] = await found(client, 'userName eq "ANN@example.com"')
    assert listed == user

    replaced = await client.put(
        f"/scim/v2/Users/{user['id']}", json=okta_user("ann@example.com", "00u1", "Ann", "Smith")
    )
    assert replaced.json()["displayName"] == "Ann Smith"
    assert replaced.json()["meta"]["version"] != user["meta"]["version"]

    # Okta deactivates with a replace that has no path, and never deletes.
    path = f"/scim/v2/Users/{user['id']}"
    off = await client.patch(path, json=patch({"op": "replace", "value": {"active": False}}))
    assert off.json()["active"] is False
    native = await client.get("/users/ann@example.com")
    assert native.json()["status"] == "disabled"
    on = await client.patch(path, json=patch({"op": "replace", "value": {"active": True}}))
    assert on.json()["active"] is True


async def test_entra_filters_patches_soft_deletes_finds_the_disabled_user_and_deletes(
    client: httpx.AsyncClient,
) -> None:
    assert await found(client, 'externalId eq "e-42"') == []
    created = await client.post(
        "/scim/v2/Users",
        json={
            "schemas": [USER],
            "externalId": "e-42",
            "userName": "bo@contoso.com",
            "active": True,
            "displayName": "Bo",
            "emails": [{"primary": True, "type": "work", "value": "bo@contoso.com"}],
            "name": {"formatted": "Bo", "familyName": "B", "givenName": "Bo"},
        },
    )
    user = created.json()
    path = f"/scim/v2/Users/{user['id']}"
    # Entra's op names in its own letter case, and a value-filter path.
    changed = await client.patch(
        path,
        json=patch(
            {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "bo.b@contoso.com"},
            {"op": "Add", "path": "displayName", "value": "Bo B"},
            {"op": "Replace", "path": "name.givenName", "value": "Bob"},
            {"op": "Remove", "path": "externalId"},
        ),
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    # The work email is Entra's mail, kept beside userName, which it never changes.
    assert (body["userName"], body["displayName"], body.get("externalId")) == (
        "bo@contoso.com", "Bo B", None,
    )  # fmt: skip
    assert body["emails"] == [{"value": "bo.b@contoso.com"}]
    restored = await client.patch(
        path, json=patch({"op": "add", "path": "externalId", "value": "e-42"})
    )
    assert restored.json()["externalId"] == "e-42"
    # Soft delete, with the boolean as Entra sends it: a string.
    off = await client.patch(
        path, json=patch({"op": "Replace", "path": "active", "value": "False"})
    )
    assert off.json()["active"] is False
    [still] = await found(client, 'externalId eq "e-42"')
    assert still["active"] is False
    assert (await client.delete(path)).status_code == 204
    scim_error(await client.get(path), 404)
    assert await found(client, 'externalId eq "e-42"') == []


async def test_a_scim_user_is_a_user_like_any_other(client: httpx.AsyncClient) -> None:
    start = (await client.get("/users/changes", params={"after": "now"})).json()["next"]
    created = await client.post("/scim/v2/Users", json=okta_user("cy@example.com", "00u3"))
    native = await client.get("/users/cy@example.com")
    assert native.json()["id"] == created.json()["id"]
    assert native.json()["name"] == "Ann Lee"
    assert (await client.get("/users", params={"q": "cy@"})).json()[0]["email"] == "cy@example.com"
    changes = (await client.get("/users/changes", params={"after": start, "wait": 5})).json()
    assert [c["id"] for c in changes["changes"]] == [created.json()["id"]]
    # And a native user is a SCIM user.
    await client.post("/users", json={"name": "Dee", "email": "dee@example.com"})
    [dee] = await found(client, 'userName eq "dee@example.com"')
    assert (dee["displayName"], dee.get("externalId")) == ("Dee", None)


async def test_a_taken_username_or_external_id_is_409_uniqueness(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/scim/v2/Users", json=okta_user("ann@example.com", "00u1"))
    taken = await client.post("/scim/v2/Users", json=okta_user("ANN@example.com", "00u2"))
    assert "userName" in scim_error(taken, 409, "uniqueness")
    taken = await client.post("/scim/v2/Users", json=okta_user("bo@example.com", "00u1"))
    assert "externalId" in scim_error(taken, 409, "uniqueness")


@pytest.mark.parametrize(
    "filter",
    ['password eq "x"', 'userName eq "a" and', 'name.middle eq "Ann"', "active eq 1", "("],
)
async def test_a_filter_that_cannot_be_applied_is_400_invalid_filter(
    client: httpx.AsyncClient, filter: str
) -> None:
    response = await client.get("/scim/v2/Users", params={"filter": filter})
    scim_error(response, 400, "invalidFilter")


async def test_filters_combine_and_match_text_literally(client: httpx.AsyncClient) -> None:
    for n, name in enumerate(["Ann 50% off", "Ann 50x off", "Bo"]):
        user = okta_user(f"u{n}@example.com", f"x{n}")
        user["displayName"] = name
        await client.post("/scim/v2/Users", json=user)
    names = [u["displayName"] for u in await found(client, 'displayName co "50%"')]
    assert names == ["Ann 50% off"]
    either = await found(client, 'externalId eq "x0" or (displayName sw "bo" and active eq true)')
    assert [u["externalId"] for u in either] == ["x0", "x2"]
    assert len(await found(client, 'not (displayName co "ann")')) == 1
    assert len(await found(client, 'meta.created gt "2000-01-01T00:00:00Z"')) == 3


async def test_lists_page_from_a_one_based_start_index_and_sort(client: httpx.AsyncClient) -> None:
    for n in range(5):
        await client.post("/scim/v2/Users", json=okta_user(f"u{n}@example.com", f"x{n}"))
    page = (await client.get("/scim/v2/Users", params={"startIndex": 2, "count": 2})).json()
    assert (page["totalResults"], page["startIndex"], page["itemsPerPage"]) == (5, 2, 2)
    assert [u["userName"] for u in page["Resources"]] == ["u1@example.com", "u2@example.com"]
    past = (await client.get("/scim/v2/Users", params={"startIndex": 9})).json()
    assert (past["totalResults"], past["Resources"]) == (5, [])
    counted = (await client.get("/scim/v2/Users", params={"count": 0})).json()
    assert (counted["totalResults"], counted["Resources"]) == (5, [])
    params: dict[str, str | int] = {"sortBy": "externalId", "sortOrder": "descending", "count": 1}
    last = (await client.get("/scim/v2/Users", params=params)).json()["Resources"]
    assert [u["externalId"] for u in last] == ["x4"]
    search = await client.post(
        "/scim/v2/Users/.search",
        json={
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
            "filter": 'userName sw "u3"',
            "attributes": ["userName"],
        },
    )
    [only] = search.json()["Resources"]
    assert set(only) == {"schemas", "id", "userName"}


async def test_attributes_and_excluded_attributes_shape_what_is_returned(
    client: httpx.AsyncClient,
) -> None:
    user = (await client.post("/scim/v2/Users", json=okta_user("a@x.io", "1"))).json()
    path = f"/scim/v2/Users/{user['id']}"
    some = (await client.get(path, params={"attributes": "emails.type,emails.primary"})).json()
    assert some["emails"] == [{"value": "a@x.io", "type": "work", "primary": True}]
    assert set(some) == {"schemas", "id", "emails"}
    fewer = (await client.get(path, params={"excludedAttributes": "meta,name,id"})).json()
    assert "meta" not in fewer
    assert "name" not in fewer
    assert fewer["id"] == user["id"]  # always returned


async def test_if_match_guards_writes_with_412(client: httpx.AsyncClient) -> None:
    user = (await client.post("/scim/v2/Users", json=okta_user("a@x.io", "1"))).json()
    path, version = f"/scim/v2/Users/{user['id']}", user["meta"]["version"]
    off = patch({"op": "replace", "path": "active", "value": False})
    changed = await client.patch(path, json=off, headers={"If-Match": version})
    assert changed.status_code == 200
    stale = await client.patch(path, json=off, headers={"If-Match": version})
    scim_error(stale, 412)
    scim_error(await client.delete(path, headers={"If-Match": version}), 412)
    current = changed.json()["meta"]["version"]
    assert (await client.delete(path, headers={"If-Match": current})).status_code == 204


@pytest.mark.parametrize(
    ("body", "scim_type"),
    [
        (patch({"op": "jump", "path": "active", "value": True}), "invalidSyntax"),
        (patch({"op": "remove"}), "noTarget"),
        (patch({"op": "remove", "path": "userName"}), "mutability"),
        (patch({"op": "replace", "path": "id", "value": "x"}), "mutability"),
        (patch({"op": "replace", "path": "active", "value": "maybe"}), "invalidValue"),
        (patch({"op": "replace", "path": "userName", "value": "not an email"}), "invalidValue"),
        (
            patch({"op": "replace", "path": 'emails[value eq "b@x.io"].value', "value": "a@b.c"}),
            "noTarget",
        ),
        ({"Operations": "replace"}, "invalidSyntax"),
    ],
)
async def test_a_patch_that_cannot_apply_is_a_scim_400_and_changes_nothing(
    client: httpx.AsyncClient, body: Any, scim_type: str
) -> None:
    user = (await client.post("/scim/v2/Users", json=okta_user("a@x.io", "1"))).json()
    path = f"/scim/v2/Users/{user['id']}"
    # A valid operation before the bad one: the whole PATCH applies or none of it.
    if isinstance(body.get("Operations"), list):
        body["Operations"].insert(0, {"op": "replace", "path": "displayName", "value": "Changed"})
    scim_error(await client.patch(path, json=body), 400, scim_type)
    assert (await client.get(path)).json() == user


async def test_a_write_to_an_unknown_id_is_a_404_that_creates_nothing(
    client: httpx.AsyncClient,
) -> None:
    path = f"/scim/v2/Users/{uuid.uuid4()}"
    scim_error(await client.put(path, json=okta_user("ghost@example.com", "g-1")), 404)
    scim_error(
        await client.patch(path, json=patch({"op": "replace", "path": "title", "value": "x"})),
        404,
    )
    assert (await client.get(path)).status_code == 404
    listed = await client.get(
        "/scim/v2/Users", params={"filter": 'userName eq "ghost@example.com"'}
    )
    assert listed.json()["totalResults"] == 0


async def test_malformed_json_and_bad_values_are_scim_400s(client: httpx.AsyncClient) -> None:
    headers = {"content-type": SCIM_JSON}
    scim_error(
        await client.post("/scim/v2/Users", content=b"{", headers=headers), 400, "invalidSyntax"
    )
    bad = okta_user("not-an-email", "1")
    scim_error(await client.post("/scim/v2/Users", json=bad), 400, "invalidValue")
    scim_error(await client.get("/scim/v2/Users/not-a-uuid"), 404)
    scim_error(
        await client.get("/scim/v2/Users", params={"sortBy": "password"}), 400, "invalidValue"
    )


async def test_discovery_says_what_the_service_supports(client: httpx.AsyncClient) -> None:
    config = (await client.get("/scim/v2/ServiceProviderConfig")).json()
    assert config["patch"]["supported"] is True
    assert config["filter"] == {"supported": True, "maxResults": 1000}
    assert config["etag"]["supported"] is True
    assert config["bulk"]["supported"] is False
    assert config["changePassword"]["supported"] is False
    types = (await client.get("/scim/v2/ResourceTypes")).json()
    assert [t["id"] for t in types["Resources"]] == ["User", "Group"]
    schemas = (await client.get("/scim/v2/Schemas")).json()
    [schema, enterprise, _] = schemas["Resources"]
    assert [a["name"] for a in schema["attributes"]][:6] == [
        "userName", "externalId", "displayName", "name", "emails", "active",
    ]  # fmt: skip
    assert (await client.get(f"/scim/v2/Schemas/{USER}")).json() == schema
    assert enterprise["id"] == ENTERPRISE
    scim_error(await client.get("/scim/v2/ResourceTypes/Role"), 404)
    scim_error(await client.post("/scim/v2/Schemas"), 405)


async def test_scim_needs_a_token_like_every_users_path(db: asyncpg.Pool, settings: Any) -> None:
    token = "scim-token-0123456789"  # noqa: S105
    async with client_of(replace(settings, api_tokens=(token,))) as client:
        refused = await client.get("/scim/v2/Users")
        scim_error(refused, 401)
        assert refused.headers["www-authenticate"] == 'Bearer realm="users"'
        allowed = await client.get("/scim/v2/Users", headers={"Authorization": f"Bearer {token}"})
        assert allowed.status_code == 200


async def test_scim2_tester_passes_against_a_live_service(
    db: asyncpg.Pool, tmp_path: Path, database_url: str, services: list[Service]
) -> None:
    """scim2-tester's every check, for the User resource type, over HTTP."""
    failed, ran = await failed_checks(tmp_path, database_url, services, "User")
    assert failed == [], "\n".join(map(str, failed))
    assert ran >= 30


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3)
    ),
    max_leaves=10,
)
PATCH_ERRORS = {"invalidSyntax", "invalidValue", "invalidPath", "noTarget", "mutability"}
paths = st.sampled_from(
    ["userName", "displayName", "name", "name.formatted", "name.givenName", "emails",
     'emails[type eq "work"].value', "emails[primary eq true]", 'emails[value co "a"]',
     "externalId", "active", "id", "meta.created", "nickName", f"{USER}:userName", "emails[",
     'emails[type eq "home"].value', "phoneNumbers", 'phoneNumbers[type eq "mobile"].value',
     'phoneNumbers[type eq "mobile"]', "addresses", 'addresses[type eq "work"].locality',
     ENTERPRISE, f"{ENTERPRISE}:manager", f"{ENTERPRISE}:manager.value",
     f"{ENTERPRISE}:department", "urn:example:other:badge", "roles"]
) | st.text(max_size=20)  # fmt: skip
operations = st.fixed_dictionaries(
    {"op": st.sampled_from(["add", "Replace", "REMOVE", "copy"]) | st.text(max_size=8)},
    optional={"path": paths | json_values, "value": json_values},
)


@given(st.lists(operations | json_values, max_size=4))
def test_any_patch_operations_make_a_user_or_a_scim_400(ops: list[Any]) -> None:
    state = State("Ann", "ann@example.com", "active", None, {})
    refused: tuple[int, str | None] | None
    try:
        result = checked(patched(state, ops))
    except ScimError as error:
        refused = (error.status, error.scim_type)
    else:
        refused = None
        assert result.status in ("active", "disabled")
    assert refused is None or (refused[0] == 400 and refused[1] in PATCH_ERRORS)


async def test_attribute_names_are_taken_in_any_letter_case(client: httpx.AsyncClient) -> None:
    body = {"SCHEMAS": [USER], "username": "a@x.io", "DisplayName": "A", "EXTERNALID": "1"}
    created = await client.post("/scim/v2/Users", json=body)
    assert created.status_code == 201, created.text
    user = created.json()
    assert (user["userName"], user["displayName"], user["externalId"]) == ("a@x.io", "A", "1")


# Generated requests through the API, on a real database: a SCIM answer, and
# never a 5xx. The client serves every example of a test.
fuzzed = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
filter_words = st.sampled_from(
    ["userName", "emails.value", "externalId", "displayName", "active", "meta.created", "id",
     'emails[type eq "work"]', "eq", "ne", "co", "sw", "ew", "gt", "le", "pr", "and", "or",
     "not", "(", ")", "true", "null", "1", '"a@x.io"', r'"%_\\"', r'"\u0000"',
     '"2026-01-01T00:00:00Z"', '"2026-13-45T00:00:00Z"', '"0b278014-2e0f-400a-ac4e-e70fd3863a13"']
)  # fmt: skip
filters = st.lists(filter_words, max_size=8).map(" ".join) | st.text(max_size=40)


@given(filter=filters)
@fuzzed
async def test_any_filter_is_a_list_or_a_scim_400(client: httpx.AsyncClient, filter: str) -> None:
    response = await client.get("/scim/v2/Users", params={"filter": filter})
    if response.status_code != 200:
        scim_error(response, 400, "invalidFilter")


@given(ops=st.lists(operations | json_values, max_size=4))
@fuzzed
async def test_any_patch_is_a_user_or_a_scim_4xx(client: httpx.AsyncClient, ops: list[Any]) -> None:
    response = await client.post("/scim/v2/Users", json=okta_user(f"{uuid.uuid4()}@x.io", None))
    path = f"/scim/v2/Users/{response.json()['id']}"
    response = await client.patch(path, json=patch(*ops))
    assert response.status_code in (200, 400, 409), response.text
    if response.status_code != 200:
        scim_error(response, response.status_code, response.json().get("scimType"))
    await client.delete(path)


create_keys = st.sampled_from(
    [
        *CANONICAL,
        "phoneNumbers",
        "addresses",
        "title",
        ENTERPRISE,
        "urn:example:x",
        "name.givenName",
    ]
)


@given(body=st.dictionaries(create_keys | st.text(max_size=8), json_values))
@fuzzed
async def test_any_create_is_a_user_or_a_scim_4xx(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    response = await client.post("/scim/v2/Users", json=body)
    assert response.status_code in (201, 400, 409), response.text
    if response.status_code == 201:
        await client.delete(f"/scim/v2/Users/{response.json()['id']}")
    else:
        scim_error(response, response.status_code, response.json().get("scimType"))


@pytest.mark.parametrize(
    "filter", [r'userName eq "\u0000"', r'externalId co "a\u0000"', r'displayName sw "\u0000"']
)
async def test_a_nul_in_a_filter_value_is_a_400(client: httpx.AsyncClient, filter: str) -> None:
    response = await client.get("/scim/v2/Users", params={"filter": filter})
    scim_error(response, 400, "invalidFilter")


async def test_an_external_id_with_a_control_character_is_refused(
    client: httpx.AsyncClient,
) -> None:
    for external_id in ("a\u0000b", "tab\there", ""):
        response = await client.post("/scim/v2/Users", json=okta_user("a@x.io", external_id))
        scim_error(response, 400, "invalidValue")


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": "\xff"}',
        b'{"schemas": null, "Operations": []}',
        b'{"schemas": 5, "Operations": []}',
        b"[" * 3000 + b"]" * 3000,
        b'{"Operations": [{"op": "add", "value": ' + b"[" * 3000 + b"]" * 3000 + b"}]}",
    ],
)
async def test_a_body_that_is_no_scim_message_is_a_400_invalid_syntax(
    client: httpx.AsyncClient, body: bytes
) -> None:
    user = (await client.post("/scim/v2/Users", json=okta_user("a@x.io", "1"))).json()
    headers = {"content-type": SCIM_JSON}
    for method, path in (
        ("PATCH", f"/scim/v2/Users/{user['id']}"),
        ("POST", "/scim/v2/Users/.search"),
        ("POST", "/scim/v2/Users"),
        ("PUT", f"/scim/v2/Users/{user['id']}"),
    ):
        response = await client.request(method, path, content=body, headers=headers)
        assert response.status_code == 400, (method, path, response.text)
        assert response.json()["schemas"] == [ERROR]


async def test_a_patch_of_emails_sets_the_work_email_from_the_primary_or_work_one(
    client: httpx.AsyncClient,
) -> None:
    user = (await client.post("/scim/v2/Users", json=okta_user("a@x.io", "1"))).json()
    path = f"/scim/v2/Users/{user['id']}"
    home = [{"value": "home@x.io", "type": "home"}]
    for op in ("add", "replace"):
        added = await client.patch(path, json=patch({"op": op, "path": "emails", "value": home}))
        assert added.json()["userName"] == "a@x.io"  # a home email is a second one, kept beside
        assert added.json()["emails"] == [
            {"value": "a@x.io"}, {"type": "home", "value": "home@x.io"}
        ]  # fmt: skip
    both = [*home, {"value": "work@x.io", "type": "work"}]
    changed = await client.patch(
        path, json=patch({"op": "replace", "path": "emails", "value": both})
    )
    assert changed.json()["userName"] == "a@x.io"  # the identity: emails never change it
    assert changed.json()["emails"] == [
        {"value": "work@x.io"}, {"type": "home", "value": "home@x.io"}
    ]  # fmt: skip


async def test_a_patch_of_emails_that_are_not_objects_is_invalid_value(
    client: httpx.AsyncClient,
) -> None:
    user = (await client.post("/scim/v2/Users", json=okta_user("a@x.io", "1"))).json()
    path = f"/scim/v2/Users/{user['id']}"
    for value in ([None], [None, "x"], None):
        for op in ("add", "replace"):
            body = patch({"op": op, "path": "emails", "value": value})
            scim_error(await client.patch(path, json=body), 400, "invalidValue")
    assert (await client.get(path)).json()["emails"] == [{"value": "a@x.io"}]


async def test_require_if_match_holds_for_scim_writes(db: asyncpg.Pool, settings: Any) -> None:
    async with client_of(replace(settings, require_if_match=True)) as client:
        user = (await client.post("/scim/v2/Users", json=okta_user("a@x.io", "1"))).json()
        path = f"/scim/v2/Users/{user['id']}"
        off = patch({"op": "replace", "path": "active", "value": False})
        scim_error(await client.patch(path, json=off), 428)
        scim_error(await client.delete(path), 428)
        version = {"If-Match": user["meta"]["version"]}
        assert (await client.patch(path, json=off, headers=version)).status_code == 200


@pytest.mark.parametrize(
    ("params", "scim_type"),
    [
        ({"filter": r'userName eq "\q"'}, "invalidFilter"),
        ({"startIndex": str(10**20)}, "invalidValue"),
        ({"count": "many"}, "invalidValue"),
    ],
)
async def test_a_list_that_cannot_be_read_is_a_scim_400(
    client: httpx.AsyncClient, params: dict[str, str], scim_type: str
) -> None:
    scim_error(await client.get("/scim/v2/Users", params=params), 400, scim_type)


@pytest.mark.parametrize("path", ["emails[", 'emails[type eq "work"]value', "a b", "name..x"])
async def test_a_malformed_patch_path_is_a_400_invalid_path(
    client: httpx.AsyncClient, path: str
) -> None:
    user = (await client.post("/scim/v2/Users", json=okta_user("a@x.io", "1"))).json()
    body = patch({"op": "replace", "path": path, "value": "x"})
    scim_error(await client.patch(f"/scim/v2/Users/{user['id']}", json=body), 400, "invalidPath")


async def test_a_create_takes_active_as_entra_sends_it(client: httpx.AsyncClient) -> None:
    body = {**okta_user("a@x.io", "1"), "active": "False"}
    assert (await client.post("/scim/v2/Users", json=body)).json()["active"] is False
