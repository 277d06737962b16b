"""SCIM 2.0 groups under /scim/v2/Groups: Okta's Push Groups and Entra ID's group provisioning."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.scim.errors import ScimError
from service.scim.groups import patched
from tests.conftest import Service
from tests.scim.messages import SCIM_JSON, USER, patch, scim_error
from tests.scim.tester import failed_checks

GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTRA_GROUP = "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"
LIST_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:ListResponse"


async def new_users(client: httpx.AsyncClient, count: int, prefix: str = "u") -> list[str]:
    """The ids of `count` users created through SCIM."""
    ids = []
    for n in range(count):
        body = {"schemas": [USER], "userName": f"{prefix}{n}@example.com", "displayName": f"U {n}"}
        created = await client.post("/scim/v2/Users", json=body)
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
    return ids


async def member_ids(client: httpx.AsyncClient, group: str) -> set[str]:
    read = await client.get(f"/scim/v2/Groups/{group}")
    assert read.status_code == 200, read.text
    return {member["value"] for member in read.json().get("members", [])}


async def found(client: httpx.AsyncClient, **params: str) -> list[Any]:
    listed = await client.get("/scim/v2/Groups", params=params)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body["schemas"] == [LIST_RESPONSE]
    return list(body["Resources"])


async def test_okta_push_groups_sequence_replays(client: httpx.AsyncClient) -> None:
    """Okta's Push Groups, as its SCIM 2.0 guide lists the requests."""
    users = await new_users(client, 5)
    # Okta looks for the group by name, then creates it empty.
    assert await found(client, filter='displayName eq "Test SCIMv2"', startIndex="1") == []
    created = await client.post(
        "/scim/v2/Groups", json={"schemas": [GROUP], "displayName": "Test SCIMv2", "members": []}
    )
    assert created.status_code == 201, created.text
    assert created.headers["content-type"] == SCIM_JSON
    group = created.json()
    assert created.headers["location"] == f"http://test/scim/v2/Groups/{group['id']}"
    assert group["displayName"] == "Test SCIMv2"
    assert group["schemas"] == [GROUP]
    assert group["meta"]["resourceType"] == "Group"
    assert "members" not in group
    path = f"/scim/v2/Groups/{group['id']}"
    [listed] = await found(client, filter='displayName eq "test scimv2"')
    assert listed["id"] == group["id"]
    # Members pushed in batches.
    for batch in (users[:2], users[2:]):
        add = {"op": "add", "path": "members", "value": [{"value": u} for u in batch]}
        answer = await client.patch(path, json=patch(add))
        assert answer.status_code == 204, answer.text
    read = (await client.get(path)).json()
    assert {m["value"] for m in read["members"]} == set(users)
    first = next(m for m in read["members"] if m["value"] == users[0])
    assert first == {
        "value": users[0],
        "$ref": f"http://test/scim/v2/Users/{users[0]}",
        "type": "User",
    }
    # Okta removes one member by path.
    remove = {"op": "remove", "path": f'members[value eq "{users[0]}"]'}
    assert (await client.patch(path, json=patch(remove))).status_code == 204
    assert await member_ids(client, group["id"]) == set(users[1:])
    # Okta renames with a value map, the group's id in it.
    rename = {"op": "replace", "value": {"id": group["id"], "displayName": "Renamed"}}
    assert (await client.patch(path, json=patch(rename))).status_code == 204
    assert (await client.get(path)).json()["displayName"] == "Renamed"
    # A custom app's PUT: the whole group, members with it.
    put = {"schemas": [GROUP], "displayName": "Put", "members": [{"value": users[0]}]}
    replaced = await client.put(path, json=put)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["displayName"] == "Put"
    assert [m["value"] for m in replaced.json()["members"]] == [users[0]]
    assert (await client.delete(path)).status_code == 204
    scim_error(await client.get(path), 404)
    # Its users stay.
    assert (await client.get(f"/scim/v2/Users/{users[1]}")).status_code == 200


async def test_entra_group_sequence_replays(client: httpx.AsyncClient) -> None:
    """Entra ID's group provisioning, as its SCIM guide lists the requests."""
    users = await new_users(client, 6)
    object_id = str(uuid.uuid4())
    created = await client.post(
        "/scim/v2/Groups",
        json={
            "schemas": [GROUP, ENTRA_GROUP],
            "externalId": object_id,
            "displayName": "Sales",
            "meta": {"resourceType": "Group"},
            "members": [],
        },
    )
    assert created.status_code == 201, created.text
    group = created.json()
    assert group["externalId"] == object_id
    path = f"/scim/v2/Groups/{group['id']}"
    read = await client.get(path, params={"excludedAttributes": "members"})
    assert read.status_code == 200
    assert "members" not in read.json()
    assert read.headers["etag"] == group["meta"]["version"]
    [listed] = await found(client, excludedAttributes="members", filter='displayName eq "Sales"')
    assert listed["id"] == group["id"]
    assert "members" not in listed
    [by_external] = await found(client, filter=f'externalId eq "{object_id}"')
    assert by_external["id"] == group["id"]
    # Members added in batches, $ref null, ops capitalised.
    for batch in (users[:3], users[3:]):
        value = [{"$ref": None, "value": u} for u in batch]
        answer = await client.patch(
            path, json=patch({"op": "Add", "path": "members", "value": value})
        )
        assert answer.status_code == 204, answer.text
    assert await member_ids(client, group["id"]) == set(users)
    # Removed by a value array, and by a path.
    value = [{"$ref": None, "value": users[0]}, {"$ref": None, "value": users[1]}]
    remove = {"op": "Remove", "path": "members", "value": value}
    assert (await client.patch(path, json=patch(remove))).status_code == 204
    by_path = {"op": "Remove", "path": f'members[value eq "{users[2]}"]'}
    assert (await client.patch(path, json=patch(by_path))).status_code == 204
    assert await member_ids(client, group["id"]) == set(users[3:])
    # Renamed by path, and a new externalId.
    rename = {"op": "Replace", "path": "displayName", "value": "Sales EMEA"}
    external = {"op": "Replace", "path": "externalId", "value": "new-object-id"}
    assert (await client.patch(path, json=patch(rename, external))).status_code == 204
    renamed = (await client.get(path, params={"excludedAttributes": "members"})).json()
    assert (renamed["displayName"], renamed["externalId"]) == ("Sales EMEA", "new-object-id")
    assert (await client.delete(path)).status_code == 204
    assert await found(client, filter='displayName eq "Sales EMEA"') == []


async def create(client: httpx.AsyncClient, name: str, **more: Any) -> dict[str, Any]:
    created = await client.post(
        "/scim/v2/Groups", json={"schemas": [GROUP], "displayName": name, **more}
    )
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


async def test_a_create_with_members_shows_them(client: httpx.AsyncClient) -> None:
    users = await new_users(client, 2)
    group = await create(client, "Ops", members=[{"value": u, "type": "User"} for u in users])
    assert {m["value"] for m in group["members"]} == set(users)


async def test_a_duplicate_display_name_is_a_409_uniqueness(client: httpx.AsyncClient) -> None:
    await create(client, "Sales")
    again = await client.post("/scim/v2/Groups", json={"schemas": [GROUP], "displayName": "SALES"})
    scim_error(again, 409, "uniqueness")
    other = await create(client, "Other")
    rename = patch({"op": "replace", "path": "displayName", "value": "sales"})
    scim_error(await client.patch(f"/scim/v2/Groups/{other['id']}", json=rename), 409, "uniqueness")


async def test_a_duplicate_external_id_is_a_409_uniqueness(client: httpx.AsyncClient) -> None:
    await create(client, "A", externalId="x-1")
    again = await client.post(
        "/scim/v2/Groups", json={"schemas": [GROUP], "displayName": "B", "externalId": "x-1"}
    )
    scim_error(again, 409, "uniqueness")


async def test_members_naming_no_user_are_a_400_and_change_nothing(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    [user] = await new_users(client, 1)
    ghost = str(uuid.uuid4())
    refused = await client.post(
        "/scim/v2/Groups",
        json={"displayName": "G", "members": [{"value": user}, {"value": ghost}]},
    )
    assert ghost in scim_error(refused, 400, "invalidValue")
    assert await db.fetchval("SELECT count(*) FROM groups") == 0
    group = await create(client, "G")
    path = f"/scim/v2/Groups/{group['id']}"
    both = patch(
        {"op": "replace", "path": "displayName", "value": "H"},
        {"op": "add", "path": "members", "value": [{"value": user}, {"value": ghost}]},
    )
    scim_error(await client.patch(path, json=both), 400, "invalidValue")
    unchanged = (await client.get(path)).json()
    assert unchanged["displayName"] == "G"
    assert "members" not in unchanged
    not_an_id = patch({"op": "add", "path": "members", "value": [{"value": "bob"}]})
    scim_error(await client.patch(path, json=not_an_id), 400, "invalidValue")


async def test_a_remove_by_a_path_naming_no_member_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    users = await new_users(client, 2)
    group = await create(client, "G", members=[{"value": u} for u in users])
    path = f"/scim/v2/Groups/{group['id']}"
    for named in (str(uuid.uuid4()), "not-an-id"):
        remove = {"op": "remove", "path": f'members[value eq "{named}"]'}
        assert (await client.patch(path, json=patch(remove))).status_code == 204
    assert await member_ids(client, group["id"]) == set(users)


async def test_adding_a_member_twice_keeps_one_membership(client: httpx.AsyncClient) -> None:
    [user] = await new_users(client, 1)
    group = await create(client, "G")
    path = f"/scim/v2/Groups/{group['id']}"
    add = {"op": "add", "path": "members", "value": [{"value": user}, {"value": user.upper()}]}
    for _ in range(2):
        assert (await client.patch(path, json=patch(add))).status_code == 204
    assert len((await client.get(path)).json()["members"]) == 1


async def test_a_replace_of_members_sets_them_all(client: httpx.AsyncClient) -> None:
    users = await new_users(client, 4)
    group = await create(client, "G", members=[{"value": u} for u in users[:3]])
    path = f"/scim/v2/Groups/{group['id']}"
    replace = {
        "op": "replace",
        "path": "members",
        "value": [{"value": users[2]}, {"value": users[3]}],
    }
    assert (await client.patch(path, json=patch(replace))).status_code == 204
    assert await member_ids(client, group["id"]) == set(users[2:])
    everyone = {"op": "remove", "path": "members"}
    assert (await client.patch(path, json=patch(everyone))).status_code == 204
    assert await member_ids(client, group["id"]) == set()


async def test_a_patch_asked_for_attributes_answers_200_with_the_group(
    client: httpx.AsyncClient,
) -> None:
    [user] = await new_users(client, 1)
    group = await create(client, "G")
    path = f"/scim/v2/Groups/{group['id']}"
    add = patch({"op": "add", "path": "members", "value": [{"value": user}]})
    answer = await client.patch(path, json=add, params={"excludedAttributes": "members"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["displayName"] == "G"
    assert "members" not in answer.json()
    asked = await client.patch(path, json=add, params={"attributes": "members"})
    assert asked.json() == {
        "schemas": [GROUP],
        "id": group["id"],
        "members": [{"value": user, "$ref": f"http://test/scim/v2/Users/{user}", "type": "User"}],
    }


@pytest.mark.parametrize(
    ("operation", "scim_type"),
    [
        ({"op": "remove", "path": "displayName"}, "mutability"),
        ({"op": "replace", "path": "id", "value": "x"}, "mutability"),
        ({"op": "replace", "path": "meta.created", "value": "x"}, "mutability"),
        ({"op": "add", "path": "owners", "value": "x"}, "invalidPath"),
        ({"op": "add", "path": 'members[value eq "x"]', "value": []}, "invalidPath"),
        ({"op": "copy", "path": "members"}, "invalidSyntax"),
        ({"op": "remove"}, "noTarget"),
        ({"op": "replace", "path": "displayName", "value": ""}, "invalidValue"),
        (
            {"op": "add", "path": "members", "value": [{"value": "x", "type": "Group"}]},
            "invalidValue",
        ),
    ],
)
async def test_a_patch_the_service_cannot_apply_is_a_400_naming_why(
    client: httpx.AsyncClient, operation: dict[str, Any], scim_type: str
) -> None:
    group = await create(client, "G")
    answer = await client.patch(f"/scim/v2/Groups/{group['id']}", json=patch(operation))
    scim_error(answer, 400, scim_type)


async def test_a_write_naming_more_than_10000_members_is_a_400(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    group = await create(client, "G")
    many = [{"value": str(uuid.uuid4())} for _ in range(10_001)]
    add = patch({"op": "add", "path": "members", "value": many})
    detail = scim_error(
        await client.patch(f"/scim/v2/Groups/{group['id']}", json=add), 400, "invalidValue"
    )
    assert "10,000" in detail
    put = {"displayName": "G", "members": many}
    scim_error(await client.put(f"/scim/v2/Groups/{group['id']}", json=put), 400, "invalidValue")


async def test_a_write_to_no_group_is_a_404(client: httpx.AsyncClient) -> None:
    missing = f"/scim/v2/Groups/{uuid.uuid4()}"
    scim_error(await client.get(missing), 404)
    scim_error(await client.get("/scim/v2/Groups/not-an-id"), 404)
    scim_error(await client.patch(missing, json=patch({"op": "remove", "path": "members"})), 404)
    scim_error(await client.put(missing, json={"displayName": "G"}), 404)
    scim_error(await client.delete(missing), 404)


async def test_a_stale_if_match_is_a_412(client: httpx.AsyncClient) -> None:
    group = await create(client, "G")
    path = f"/scim/v2/Groups/{group['id']}"
    etag = group["meta"]["version"]
    rename = patch({"op": "replace", "path": "displayName", "value": "H"})
    assert (await client.patch(path, json=rename, headers={"If-Match": etag})).status_code == 204
    scim_error(await client.patch(path, json=rename, headers={"If-Match": etag}), 412)
    scim_error(await client.delete(path, headers={"If-Match": etag}), 412)


async def test_lists_page_filter_and_select_attributes(client: httpx.AsyncClient) -> None:
    for name in ("b", "a", "c"):
        await create(client, name)
    page = await client.get("/scim/v2/Groups", params={"startIndex": "2", "count": "1"})
    body = page.json()
    assert (body["totalResults"], body["startIndex"], body["itemsPerPage"]) == (3, 2, 1)
    assert [g["displayName"] for g in body["Resources"]] == ["b"]
    picked = await found(client, attributes="displayName", sortOrder="descending")
    assert [set(g) for g in picked] == [{"schemas", "id", "displayName"}] * 3
    assert [g["displayName"] for g in picked] == ["c", "b", "a"]
    scim_error(
        await client.get("/scim/v2/Groups", params={"filter": 'title eq "x"'}), 400, "invalidFilter"
    )
    scim_error(
        await client.get("/scim/v2/Groups", params={"filter": "displayName eq"}),
        400,
        "invalidFilter",
    )


async def test_a_body_that_is_no_group_is_a_400(client: httpx.AsyncClient) -> None:
    scim_error(await client.post("/scim/v2/Groups", json={"schemas": [GROUP]}), 400, "invalidValue")
    scim_error(
        await client.post("/scim/v2/Groups", json={"schemas": [USER], "displayName": "G"}),
        400,
        "invalidSyntax",
    )
    scim_error(await client.post("/scim/v2/Groups", content=b"{"), 400, "invalidSyntax")
    scim_error(
        await client.post("/scim/v2/Groups", json={"displayName": "G", "members": "x"}),
        400,
        "invalidValue",
    )


async def test_scim2_tester_passes_for_groups_against_a_live_service(
    db: asyncpg.Pool, tmp_path: Path, database_url: str, services: list[Service]
) -> None:
    """scim2-tester's every check, for the Group resource type, over HTTP."""
    failed, ran = await failed_checks(tmp_path, database_url, services, "Group")
    assert failed == [], "\n".join(map(str, failed))
    assert ran >= 20


async def test_discovery_lists_group_and_the_users_groups(client: httpx.AsyncClient) -> None:
    types = (await client.get("/scim/v2/ResourceTypes")).json()
    group_type = (await client.get("/scim/v2/ResourceTypes/Group")).json()
    assert group_type in types["Resources"]
    assert (group_type["endpoint"], group_type["schema"]) == ("/Groups", GROUP)
    schema = (await client.get(f"/scim/v2/Schemas/{GROUP}")).json()
    attributes = {a["name"]: a for a in schema["attributes"]}
    assert list(attributes) == ["displayName", "externalId", "members"]
    assert attributes["displayName"]["uniqueness"] == "server"
    members = attributes["members"]
    assert [a["name"] for a in members["subAttributes"]] == ["value", "$ref", "type"]
    user = (await client.get(f"/scim/v2/Schemas/{USER}")).json()
    [groups] = [a for a in user["attributes"] if a["name"] == "groups"]
    assert groups["mutability"] == "readOnly"
    assert [a["name"] for a in groups["subAttributes"]] == ["value", "$ref", "display"]
    config = (await client.get("/scim/v2/ServiceProviderConfig")).json()
    assert config["filter"] == {"supported": True, "maxResults": 1000}


async def test_a_user_shows_its_groups_read_only(client: httpx.AsyncClient) -> None:
    [user] = await new_users(client, 1)
    sales = await create(client, "Sales", members=[{"value": user}])
    admins = await create(client, "admins", members=[{"value": user}])
    path = f"/scim/v2/Users/{user}"
    read = (await client.get(path)).json()
    assert read["groups"] == [
        {"value": g["id"], "$ref": f"http://test/scim/v2/Groups/{g['id']}", "display": name}
        for g, name in ((admins, "admins"), (sales, "Sales"))
    ]
    assert "groups" not in (await client.get(path, params={"excludedAttributes": "groups"})).json()
    only = (await client.get(path, params={"attributes": "groups.display"})).json()
    assert only == {
        "schemas": [USER],
        "id": user,
        "groups": [
            {"value": admins["id"], "display": "admins"},
            {"value": sales["id"], "display": "Sales"},
        ],
    }
    [listed] = (await client.get("/scim/v2/Users", params={"filter": f'id eq "{user}"'})).json()[
        "Resources"
    ]
    assert listed["groups"] == read["groups"]
    # Never written through the user: a PATCH is a 400, a PUT leaves them be.
    for operation in (
        {"op": "add", "path": "groups", "value": [{"value": sales["id"]}]},
        {"op": "replace", "value": {"groups": []}},
        {"op": "remove", "path": f'groups[value eq "{sales["id"]}"]'},
    ):
        scim_error(await client.patch(path, json=patch(operation)), 400, "mutability")
    put = {"schemas": [USER], "userName": "u0@example.com", "groups": []}
    assert (await client.put(path, json=put)).status_code == 200
    assert len((await client.get(path)).json()["groups"]) == 2


async def test_a_search_from_the_root_finds_users_then_groups(client: httpx.AsyncClient) -> None:
    await new_users(client, 2)
    await create(client, "U group")
    body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"]}
    everything = (await client.post("/scim/v2/.search", json=body)).json()
    assert everything["totalResults"] == 3
    kinds = [r["meta"]["resourceType"] for r in everything["Resources"]]
    assert kinds == ["User", "User", "Group"]
    second = (await client.post("/scim/v2/.search", json={**body, "startIndex": 3})).json()
    assert [r["displayName"] for r in second["Resources"]] == ["U group"]
    named = {**body, "filter": 'displayName sw "U"'}
    assert (await client.post("/scim/v2/.search", json=named)).json()["totalResults"] == 3
    users_only = {**body, "filter": 'userName eq "u0@example.com"'}
    assert (await client.post("/scim/v2/.search", json=users_only)).json()["totalResults"] == 1
    groups = await client.post("/scim/v2/Groups/.search", json=named)
    assert [r["displayName"] for r in groups.json()["Resources"]] == ["U group"]


async def test_a_filter_on_a_member_tells_whether_a_user_is_in_the_group(
    client: httpx.AsyncClient,
) -> None:
    """As Entra asks before it deletes a group whose last member it removed."""
    member, other = await new_users(client, 2)
    group = await create(client, "G", members=[{"value": member}])
    await create(client, "H")
    for form in ('members eq "{}"', 'members.value eq "{}"', 'members[value eq "{}"]'):
        asked = f'id eq "{group["id"]}" and ' + form
        [found] = await found_groups(client, asked.format(member))
        assert found == {"schemas": [GROUP], "id": group["id"]}
        assert await found_groups(client, asked.format(other)) == []
        assert await found_groups(client, asked.format("not-an-id")) == []
    [with_members] = await found_groups(client, "members pr")
    assert with_members["id"] == group["id"]
    for malformed in ('members co "x"', 'members[display eq "x"]', 'displayName[value eq "x"]'):
        answer = await client.get("/scim/v2/Groups", params={"filter": malformed})
        scim_error(answer, 400, "invalidFilter")


async def found_groups(client: httpx.AsyncClient, filter: str) -> list[Any]:
    return await found(client, filter=filter, attributes="id")


async def test_concurrent_member_patches_of_one_group_all_land(client: httpx.AsyncClient) -> None:
    users = await new_users(client, 12)
    group = await create(client, "G")
    path = f"/scim/v2/Groups/{group['id']}"
    answers = await asyncio.gather(
        *(
            client.patch(
                path, json=patch({"op": "add", "path": "members", "value": [{"value": u}]})
            )
            for u in users
        )
    )
    assert [answer.status_code for answer in answers] == [204] * len(users)
    assert await member_ids(client, group["id"]) == set(users)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
GROUP_ID = str(uuid.uuid4())
PATCH_ERRORS = {"invalidSyntax", "invalidValue", "invalidPath", "noTarget", "mutability"}
operations = st.fixed_dictionaries(
    {"op": st.sampled_from(["add", "Replace", "REMOVE", "copy"]) | st.text(max_size=6)},
    optional={
        "path": st.sampled_from(
            ["members", 'members[value eq "x"]', f'members[value eq "{GROUP_ID}"]',
             "displayName", "externalId", "id", "meta.version", "schemas", "members.value",
             "members[", "owners", f"{GROUP}:displayName"]
        ) | json_values,
        "value": json_values
        | st.lists(st.fixed_dictionaries({"value": st.uuids().map(str) | st.text(max_size=5)})),
    },
)  # fmt: skip


@given(st.lists(operations | json_values, max_size=4))
def test_any_patch_operations_make_a_write_or_a_scim_400(ops: list[Any]) -> None:
    refused: tuple[int, str | None] | None = None
    try:
        write = patched(GROUP_ID, ops)
    except ScimError as error:
        refused = (error.status, error.scim_type)
    else:
        assert write.name is None or 1 <= len(write.name) <= 256
        assert not set(write.add) & set(write.remove)
    assert refused is None or (refused[0] == 400 and refused[1] in PATCH_ERRORS)


# Generated requests through the API, on a real database: a SCIM answer, and
# never a 5xx. The client serves every example of a test.
fuzzed = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
filter_words = st.sampled_from(
    ["displayName", "externalId", "id", "members", "members.value", "members[value", "]",
     "meta.created", "eq", "ne", "co", "sw", "pr", "gt", "and", "or", "not", "(", ")", "true",
     "null", '"Sales"', r'"%_\\"', r'"\u0000"', '"2026-01-01T00:00:00Z"',
     '"0b278014-2e0f-400a-ac4e-e70fd3863a13"']
)  # fmt: skip


@given(filter=st.lists(filter_words, max_size=8).map(" ".join) | st.text(max_size=40))
@fuzzed
async def test_any_group_filter_is_a_list_or_a_scim_400(
    client: httpx.AsyncClient, filter: str
) -> None:
    response = await client.get("/scim/v2/Groups", params={"filter": filter})
    if response.status_code != 200:
        scim_error(response, 400, "invalidFilter")


body_keys = st.sampled_from(
    ["schemas", "displayName", "DISPLAYNAME", "externalId", "members", "id"]
)


@given(body=st.dictionaries(body_keys | st.text(max_size=8), json_values))
@fuzzed
async def test_any_group_create_is_a_group_or_a_scim_4xx(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    response = await client.post("/scim/v2/Groups", json=body)
    assert response.status_code in (201, 400, 409), response.text
    if response.status_code == 201:
        await client.delete(f"/scim/v2/Groups/{response.json()['id']}")
    else:
        scim_error(response, response.status_code, response.json().get("scimType"))


@given(ops=st.lists(operations | json_values, max_size=4))
@fuzzed
async def test_any_group_patch_is_a_scim_answer(client: httpx.AsyncClient, ops: list[Any]) -> None:
    group = await create(client, f"g-{uuid.uuid4()}")
    path = f"/scim/v2/Groups/{group['id']}"
    response = await client.patch(path, json=patch(*ops))
    assert response.status_code in (204, 400, 409), response.text
    if response.status_code != 204:
        scim_error(response, response.status_code, response.json().get("scimType"))
    await client.delete(path)
