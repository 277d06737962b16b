"""The /groups endpoints and a user's groups, driven through the app with a real database."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from msgspec.structs import replace

from service.schemas import MAX_MEMBER_CHANGES
from service.settings import Settings
from tests.conftest import assert_problem, attributes_of_bytes, client_of
from tests.test_changes import pg_dump


async def create_group(client: httpx.AsyncClient, name: str, **fields: Any) -> dict[str, Any]:
    response = await client.post("/groups", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    group: dict[str, Any] = response.json()
    return group


async def seed_users(client: httpx.AsyncClient, emails: list[str]) -> None:
    response = await client.post("/users/bulk", json=[{"name": "n", "email": e} for e in emails])
    assert response.status_code == 201, response.text


async def members(client: httpx.AsyncClient, group: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(f"/groups/{group}/members", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def member_emails(client: httpx.AsyncClient, group: str) -> list[str]:
    response = await client.get(f"/groups/{group}/members", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return [user["email"] for user in response.json()]


# The group itself


async def test_create_answers_201_with_the_group_its_location_and_etag(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/groups", json={"name": "Engineering", "attributes": {"cost_center": "42"}}
    )
    assert response.status_code == 201
    group = response.json()
    assert set(group) == {"id", "name", "attributes", "created_at", "updated_at"}
    assert group["name"] == "Engineering"
    assert group["attributes"] == {"cost_center": "42"}
    assert str(uuid.UUID(group["id"])) == group["id"]
    assert response.headers["location"] == f"/groups/{group['id']}"
    assert response.headers["etag"] == f'"1-{group["id"]}"'
    fetched = await client.get(response.headers["location"])
    assert fetched.status_code == 200
    assert fetched.json() == group
    assert fetched.headers["etag"] == response.headers["etag"]


async def test_a_name_taken_in_any_letter_case_is_a_409(client: httpx.AsyncClient) -> None:
    await create_group(client, "Engineering")
    problem = assert_problem(await client.post("/groups", json={"name": "ENGINEERING"}), 409)
    assert "already exists" in problem["detail"]
    other = await create_group(client, "Sales")
    renamed = await client.patch(f"/groups/{other['id']}", json={"name": "engineering"})
    assert_problem(renamed, 409)
    assert (await client.get(f"/groups/{other['id']}")).json()["name"] == "Sales"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "$.name"),
        ({"name": "x" * 257}, "$.name"),
        ({"name": "tab\there"}, "$.name"),
        ({"name": "bidi\u202ename"}, "$.name"),
        ({"name": 5}, "$.name"),
        ({}, None),
        ({"name": "a", "members": []}, None),
        ({"name": "a", "attributes": {"Bad": "x"}}, "$.attributes.Bad"),
        ({"name": "a", "attributes": {"n": 1}}, "$.attributes.n"),
        ({"name": "a", "attributes": attributes_of_bytes(8193)}, "$.attributes"),
    ],
)
async def test_a_group_that_breaks_a_rule_is_a_422(
    client: httpx.AsyncClient, body: dict[str, Any], field: str | None
) -> None:
    problem = assert_problem(await client.post("/groups", json=body), 422)
    if field is not None:
        assert problem["field"] == field
    assert (await client.get("/groups")).json() == []


async def test_a_name_of_256_printable_characters_is_kept(client: httpx.AsyncClient) -> None:
    name = "É" + "x" * 254 + "字"
    group = await create_group(client, name)
    assert (await client.get(f"/groups/{group['id']}")).json()["name"] == name


async def test_malformed_bodies_are_4xx_problems(client: httpx.AsyncClient) -> None:
    assert_problem(await client.post("/groups", content=b"{"), 400)
    assert_problem(await client.post("/groups", content=b'{"name":"a","name":"b"}'), 422)
    assert_problem(
        await client.post("/groups", content=b"name=a", headers={"content-type": "text/plain"}),
        415,
    )
    group = await create_group(client, "a")
    assert_problem(await client.patch(f"/groups/{group['id']}", json={}), 422)
    assert_problem(await client.patch(f"/groups/{group['id']}", json={"id": "x"}), 422)
    assert_problem(await client.post(f"/groups/{group['id']}/members", content=b'{"add": ['), 400)


async def test_an_unknown_or_malformed_group_id_is_a_404(client: httpx.AsyncClient) -> None:
    missing = str(uuid.uuid4())
    for response in (
        await client.get(f"/groups/{missing}"),
        await client.patch(f"/groups/{missing}", json={"name": "x"}),
        await client.delete(f"/groups/{missing}"),
        await client.get(f"/groups/{missing}/members"),
        await client.post(f"/groups/{missing}/members", json={"add": []}),
        await client.get("/groups/not-a-uuid"),
        await client.get("/groups/not-a-uuid/members"),
    ):
        assert_problem(response, 404)


async def test_group_paths_answer_with_a_trailing_slash_too(client: httpx.AsyncClient) -> None:
    created = await client.post("/groups/", json={"name": "a"})
    assert created.status_code == 201
    group = created.json()["id"]
    assert (await client.get("/groups/")).json() == [created.json()]
    assert (await client.get(f"/groups/{group}/")).json() == created.json()
    assert (await client.get(f"/groups/{group}/members/")).json() == []


async def test_a_wrong_method_is_a_405(client: httpx.AsyncClient) -> None:
    group = await create_group(client, "a")
    assert_problem(await client.put(f"/groups/{group['id']}", json={"name": "b"}), 405)
    assert_problem(await client.delete(f"/groups/{group['id']}/members"), 405)


async def test_get_with_if_none_match_of_the_etag_is_a_304(client: httpx.AsyncClient) -> None:
    created = await client.post("/groups", json={"name": "a"})
    etag = created.headers["etag"]
    group = created.json()["id"]
    response = await client.get(f"/groups/{group}", headers={"If-None-Match": f"W/{etag}"})
    assert response.status_code == 304
    assert response.headers["etag"] == etag
    other = await client.get(f"/groups/{group}", headers={"If-None-Match": '"9-x"'})
    assert other.status_code == 200


async def test_patch_merges_attributes_renames_and_moves_the_etag(
    client: httpx.AsyncClient,
) -> None:
    group = await create_group(client, "a", attributes={"keep": "1", "drop": "2"})
    response = await client.patch(
        f"/groups/{group['id']}", json={"name": "b", "attributes": {"drop": None, "new": "3"}}
    )
    assert response.status_code == 200
    patched = response.json()
    assert patched["name"] == "b"
    assert patched["attributes"] == {"keep": "1", "new": "3"}
    assert patched["created_at"] == group["created_at"]
    assert patched["updated_at"] > group["updated_at"]
    assert response.headers["etag"] == f'"2-{group["id"]}"'
    # A patch that changes nothing keeps the version.
    same = await client.patch(f"/groups/{group['id']}", json={"name": "b"})
    assert same.headers["etag"] == response.headers["etag"]
    # A rename in letter case only is the group's own name.
    cased = await client.patch(f"/groups/{group['id']}", json={"name": "B"})
    assert cased.status_code == 200
    assert cased.json()["name"] == "B"


async def test_attributes_merged_over_their_bounds_are_a_422_changing_nothing(
    client: httpx.AsyncClient,
) -> None:
    group = await create_group(client, "a", attributes={f"a{n}": "x" for n in range(50)})
    response = await client.patch(f"/groups/{group['id']}", json={"attributes": {"b": "y"}})
    assert assert_problem(response, 422)["field"] == "$.attributes"
    assert (await client.get(f"/groups/{group['id']}")).json() == group


async def test_if_match_guards_patch_and_delete(client: httpx.AsyncClient) -> None:
    created = await client.post("/groups", json={"name": "a"})
    etag, id = created.headers["etag"], created.json()["id"]
    patched = await client.patch(f"/groups/{id}", json={"name": "b"}, headers={"If-Match": etag})
    assert patched.status_code == 200
    stale = {"If-Match": etag}
    assert_problem(await client.patch(f"/groups/{id}", json={"name": "c"}, headers=stale), 412)
    assert_problem(await client.delete(f"/groups/{id}", headers=stale), 412)
    assert_problem(await client.delete(f"/groups/{id}", headers={"If-Match": f"W/{etag}"}), 412)
    current = {"If-Match": patched.headers["etag"]}
    assert (await client.delete(f"/groups/{id}", headers=current)).status_code == 204
    assert_problem(await client.delete(f"/groups/{id}", headers=current), 404)


async def test_require_if_match_makes_it_428_to_write_a_group_without_one(
    settings: Settings, db: asyncpg.Pool
) -> None:
    async with client_of(replace(settings, require_if_match=True)) as client:
        created = await client.post("/groups", json={"name": "a"})
        id = created.json()["id"]
        assert_problem(await client.patch(f"/groups/{id}", json={"name": "b"}), 428)
        assert_problem(await client.delete(f"/groups/{id}"), 428)
        headers = {"If-Match": created.headers["etag"]}
        assert (await client.delete(f"/groups/{id}", headers=headers)).status_code == 204


async def test_an_idempotent_create_is_replayed(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "k1"}
    first = await client.post("/groups", json={"name": "a"}, headers=headers)
    again = await client.post("/groups", json={"name": "a"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert len((await client.get("/groups")).json()) == 1


# Listing


async def test_list_pages_by_name_in_any_case_with_a_next_link(client: httpx.AsyncClient) -> None:
    for name in ("delta", "Alpha", "charlie", "Bravo", "echo"):
        await create_group(client, name)
    first = await client.get("/groups", params={"limit": 2})
    assert [g["name"] for g in first.json()] == ["Alpha", "Bravo"]
    assert first.headers["link"] == '</groups?after=Bravo&limit=2>; rel="next"'
    second = await client.get("/groups?after=bravo&limit=2")
    assert [g["name"] for g in second.json()] == ["charlie", "delta"]
    third = await client.get("/groups?after=delta&limit=2")
    assert [g["name"] for g in third.json()] == ["echo"]
    assert "link" not in third.headers


async def test_q_finds_groups_by_part_of_the_name(client: httpx.AsyncClient) -> None:
    for name in ("Platform Engineering", "engineering-managers", "Sales", "100%_done"):
        await create_group(client, name)
    found = await client.get("/groups", params={"q": "ENGINEER"})
    assert [g["name"] for g in found.json()] == ["engineering-managers", "Platform Engineering"]
    limited = await client.get("/groups", params={"q": "engineer", "limit": 1})
    assert limited.headers["link"] == (
        '</groups?q=engineer&after=engineering-managers&limit=1>; rel="next"'
    )
    literal = await client.get("/groups", params={"q": "0%_"})
    assert [g["name"] for g in literal.json()] == ["100%_done"]
    assert (await client.get("/groups", params={"q": "x_x"})).json() == []


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=x",
        "q=ab",
        "q=a%00bc",
        "after=",
        "bogus=1",
        "limit=1&limit=2",
    ],
)
async def test_bad_list_parameters_are_a_422(client: httpx.AsyncClient, query: str) -> None:
    assert_problem(await client.get(f"/groups?{query}"), 422)


# Members


async def test_members_are_added_and_removed_by_email_or_id(client: httpx.AsyncClient) -> None:
    await seed_users(client, ["ann@example.com", "bo@example.com", "cy@example.com"])
    bo = (await client.get("/users/bo@example.com")).json()["id"]
    group = (await create_group(client, "team"))["id"]
    answer = await members(
        client, group, {"add": ["ANN@example.com", bo, "nobody@example.com", "not a handle"]}
    )
    assert answer == {
        "added": ["ANN@example.com", bo],
        "removed": [],
        "missing": ["nobody@example.com", "not a handle"],
    }
    assert await member_emails(client, group) == ["ann@example.com", "bo@example.com"]
    # Idempotent: adding again adds nothing, one membership each.
    again = await members(client, group, {"add": ["ann@example.com", "bo@EXAMPLE.com"]})
    assert again == {"added": [], "removed": [], "missing": []}
    assert await member_emails(client, group) == ["ann@example.com", "bo@example.com"]
    # Add and remove in one call; a user not a member is not "removed".
    both = await members(
        client, group, {"add": ["cy@example.com"], "remove": [bo, "cy@x.io", "ann@example.com"]}
    )
    assert both == {"added": ["cy@example.com"], "removed": [bo, "ann@example.com"],
                    "missing": ["cy@x.io"]}  # fmt: skip
    assert await member_emails(client, group) == ["cy@example.com"]
    # Either key may be left out, or both.
    assert await members(client, group, {"remove": ["cy@example.com"]}) == {
        "added": [], "removed": ["cy@example.com"], "missing": []
    }  # fmt: skip
    assert await members(client, group, {}) == {"added": [], "removed": [], "missing": []}


async def test_a_user_named_twice_is_added_once_under_its_first_handle(
    client: httpx.AsyncClient,
) -> None:
    await seed_users(client, ["ann@example.com"])
    ann = (await client.get("/users/ann@example.com")).json()["id"]
    group = (await create_group(client, "team"))["id"]
    answer = await members(client, group, {"add": [ann.upper(), "Ann@Example.com", ann, "x", "x"]})
    assert answer == {"added": [ann.upper()], "removed": [], "missing": ["x"]}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"add": ["a@x.io"] * (MAX_MEMBER_CHANGES + 1)}, 422),
        ({"add": ["a@x.io"] * 600, "remove": ["b@x.io"] * 401}, 422),
        ({"add": ["a@x.io"], "remove": ["a@x.io"]}, 422),
        ({"add": "a@x.io"}, 422),
        ({"add": [1]}, 422),
        ({"add": [], "replace": []}, 422),
        ([], 422),
        (None, 400),
    ],
)
async def test_bad_member_changes_are_4xx_and_change_nothing(
    client: httpx.AsyncClient, body: object, status: int
) -> None:
    await seed_users(client, ["a@x.io", "b@x.io"])
    group = (await create_group(client, "team"))["id"]
    await members(client, group, {"add": ["b@x.io"]})
    assert_problem(await client.post(f"/groups/{group}/members", json=body), status)
    assert await member_emails(client, group) == ["b@x.io"]


async def test_a_thousand_handles_are_accepted(client: httpx.AsyncClient) -> None:
    emails = [f"u{n:04}@example.com" for n in range(MAX_MEMBER_CHANGES)]
    await seed_users(client, emails)
    group = (await create_group(client, "big"))["id"]
    answer = await members(client, group, {"add": emails})
    assert len(answer["added"]) == MAX_MEMBER_CHANGES
    pages: list[str] = []
    url: str | None = f"/groups/{group}/members?limit=300"
    while url is not None:
        response = await client.get(url)
        pages += [user["email"] for user in response.json()]
        link = response.headers.get("link")
        url = link[1 : link.index(">")] if link else None
    assert pages == emails


async def test_members_are_paged_in_email_order_as_users(client: httpx.AsyncClient) -> None:
    await seed_users(client, ["Cy@example.com", "ann@example.com", "bo@example.com"])
    group = (await create_group(client, "team"))["id"]
    await members(client, group, {"add": ["cy@example.com", "ann@example.com", "bo@example.com"]})
    first = await client.get(f"/groups/{group}/members", params={"limit": 2})
    assert [u["email"] for u in first.json()] == ["ann@example.com", "bo@example.com"]
    assert set(first.json()[0]) == {
        "id", "name", "email", "status", "attributes", "created_at", "updated_at"
    }  # fmt: skip
    assert first.headers["link"] == (
        f'</groups/{group}/members?after=bo%40example.com&limit=2>; rel="next"'
    )
    rest = await client.get(f"/groups/{group}/members?after=BO@example.com&limit=2")
    assert [u["email"] for u in rest.json()] == ["Cy@example.com"]
    assert_problem(await client.get(f"/groups/{group}/members?after=nope"), 422)
    assert_problem(await client.get(f"/groups/{group}/members?q=abc"), 422)
    empty = (await create_group(client, "empty"))["id"]
    assert (await client.get(f"/groups/{empty}/members")).json() == []


async def test_the_membership_check_is_204_for_a_member_and_404_otherwise(
    client: httpx.AsyncClient,
) -> None:
    await seed_users(client, ["ann@example.com", "bo@example.com"])
    ann = (await client.get("/users/ann@example.com")).json()["id"]
    group = (await create_group(client, "team"))["id"]
    await members(client, group, {"add": ["ann@example.com"]})
    for handle in ("ann@example.com", "ANN@Example.COM", ann, ann.upper()):
        response = await client.get(f"/groups/{group}/members/{handle}")
        assert response.status_code == 204, handle
        assert response.content == b""
    not_member = assert_problem(await client.get(f"/groups/{group}/members/bo@example.com"), 404)
    assert "not a member" in not_member["detail"]
    no_user = assert_problem(await client.get(f"/groups/{group}/members/zed@example.com"), 404)
    assert "No user" in no_user["detail"]
    no_group = assert_problem(
        await client.get(f"/groups/{uuid.uuid4()}/members/ann@example.com"), 404
    )
    assert "No group" in no_group["detail"]
    assert_problem(await client.get(f"/groups/{group}/members/not-a-handle"), 404)


async def test_membership_checks_arriving_together_each_get_their_own_answer(
    client: httpx.AsyncClient,
) -> None:
    """Checks of one loop turn share a statement: each still gets its own answer,
    in any mix of groups, members, strangers, unknown users and unknown groups."""
    emails = [f"m{n}@example.com" for n in range(8)]
    await seed_users(client, emails)
    ids = [(await client.get(f"/users/{email}")).json()["id"] for email in emails]
    odd = (await create_group(client, "odd"))["id"]
    even = (await create_group(client, "even"))["id"]
    await members(client, odd, {"add": emails[1::2]})
    await members(client, even, {"add": ids[0::2]})
    checks = [
        (group, handle, 204 if (n % 2 == 1) == (group == odd) else 404)
        for group in (odd, even)
        for n, (email, user) in enumerate(zip(emails, ids, strict=True))
        for handle in (email, user)
    ]
    checks += [(odd, "nobody@example.com", 404), (str(uuid.uuid4()), emails[1], 404)]
    answers = await asyncio.gather(
        *(client.get(f"/groups/{group}/members/{handle}") for group, handle, _ in checks)
    )
    assert [answer.status_code for answer in answers] == [status for _, _, status in checks]
    assert "No user" in answers[-2].json()["detail"]
    assert "No group" in answers[-1].json()["detail"]


async def test_a_users_groups_are_paged_by_name(client: httpx.AsyncClient) -> None:
    await seed_users(client, ["ann@example.com", "bo@example.com"])
    ann = (await client.get("/users/ann@example.com")).json()["id"]
    for name in ("zeta", "Alpha", "mu"):
        group = (await create_group(client, name))["id"]
        await members(client, group, {"add": ["ann@example.com"]})
    first = await client.get("/users/ANN@example.com/groups", params={"limit": 2})
    assert [g["name"] for g in first.json()] == ["Alpha", "mu"]
    assert first.headers["link"] == ('</users/ANN@example.com/groups?after=mu&limit=2>; rel="next"')
    rest = await client.get(f"/users/{ann}/groups?after=MU")
    assert [g["name"] for g in rest.json()] == ["zeta"]
    assert (await client.get("/users/bo@example.com/groups")).json() == []
    assert_problem(await client.get("/users/zed@example.com/groups"), 404)
    assert_problem(await client.get(f"/users/{ann}/groups?limit=0"), 422)


async def test_users_are_filtered_by_group_alone_or_with_other_filters_and_counts(
    client: httpx.AsyncClient,
) -> None:
    await seed_users(client, [f"u{n}@example.com" for n in range(6)])
    await client.patch("/users/u1@example.com", json={"status": "disabled"})
    group = (await create_group(client, "team"))["id"]
    await members(client, group, {"add": ["u1@example.com", "u2@example.com", "u4@example.com"]})
    alone = await client.get("/users", params={"group": group}, headers={"Prefer": "count=exact"})
    assert [u["email"] for u in alone.json()] == [
        "u1@example.com", "u2@example.com", "u4@example.com"
    ]  # fmt: skip
    assert alone.headers["x-total-count"] == "3"
    paged = await client.get("/users", params={"group": group, "limit": 2})
    assert paged.headers["link"] == (
        f'</users?group={group}&after=u2%40example.com&limit=2>; rel="next"'
    )
    active = await client.get(
        "/users",
        params={"group": group, "status": "active", "q": "u4@"},
        headers={"Prefer": "count=estimated"},
    )
    assert [u["email"] for u in active.json()] == ["u4@example.com"]
    assert active.headers["x-total-count"] == "1"
    nobody = await client.get("/users", params={"group": str(uuid.uuid4())})
    assert nobody.json() == []
    assert_problem(await client.get("/users", params={"group": "nope"}), 422)


# Deletes


async def test_deleting_a_user_ends_its_memberships(client: httpx.AsyncClient) -> None:
    await seed_users(client, ["ann@example.com", "bo@example.com"])
    group = (await create_group(client, "team"))["id"]
    await members(client, group, {"add": ["ann@example.com", "bo@example.com"]})
    assert (await client.delete("/users/ann@example.com")).status_code == 204
    assert await member_emails(client, group) == ["bo@example.com"]
    await seed_users(client, ["ann@example.com"])  # a new user of the same email
    assert (await client.get(f"/groups/{group}/members/ann@example.com")).status_code == 404


async def test_deleting_a_group_ends_its_memberships_and_keeps_the_users(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    await seed_users(client, ["ann@example.com"])
    group = (await create_group(client, "team"))["id"]
    other = (await create_group(client, "other"))["id"]
    await members(client, group, {"add": ["ann@example.com"]})
    await members(client, other, {"add": ["ann@example.com"]})
    assert (await client.delete(f"/groups/{group}")).status_code == 204
    assert (await client.get("/users/ann@example.com")).status_code == 200
    assert [g["id"] for g in (await client.get("/users/ann@example.com/groups")).json()] == [other]
    assert await db.fetchval("SELECT count(*) FROM memberships") == 1


async def test_a_deleted_group_leaves_no_trace_in_a_dump(
    client: httpx.AsyncClient, database_url: str
) -> None:
    name, secret = "Quixotic Zebras", "tenant-7e2b9d"
    await seed_users(client, ["ann@example.com"])
    created = await client.post(
        "/groups",
        json={"name": name, "attributes": {"tenant": secret}},
        headers={"Idempotency-Key": "create-1"},
    )
    assert created.status_code == 201
    group = created.json()["id"]
    await client.patch(f"/groups/{group}", json={"attributes": {"other": secret + "-2"}})
    await members(client, group, {"add": ["ann@example.com"]})
    # A keyed create refused over the name stores a 409 that does not name it.
    refused = await client.post(
        "/groups", json={"name": name.upper()}, headers={"Idempotency-Key": "dup"}
    )
    assert_problem(refused, 409)
    await create_group(client, "Kept")
    assert (await client.delete(f"/groups/{group}")).status_code == 204
    dump = pg_dump(database_url)
    assert "Kept" in dump  # the dump holds the data
    for text in (name, secret, name.split()[1]):
        for spelt in (text, text.upper(), text.lower()):
            assert spelt not in dump
            assert spelt.encode().hex() not in dump
    # A retry of the create learns that the group is gone, and recreates nothing.
    retry = await client.post(
        "/groups",
        json={"name": name, "attributes": {"tenant": secret}},
        headers={"Idempotency-Key": "create-1"},
    )
    assert_problem(retry, 410)
    assert retry.headers["idempotent-replayed"] == "true"
    assert [g["name"] for g in (await client.get("/groups")).json()] == ["Kept"]


# Concurrency


async def test_concurrent_member_changes_to_one_group_lose_nothing_and_never_fail(
    client: httpx.AsyncClient,
) -> None:
    emails = [f"u{n:03}@example.com" for n in range(400)]
    others = [f"v{n:03}@example.com" for n in range(100)]
    await seed_users(client, emails + others)
    group = (await create_group(client, "team"))["id"]
    # Overlapping sets in opposite orders, the pattern that deadlocks row by
    # row, beside a remove of other members.
    forward, backward = emails[:300], emails[100:][::-1]
    for _ in range(5):
        await members(client, group, {"add": others})
        answers = await asyncio.gather(
            client.post(f"/groups/{group}/members", json={"add": forward}),
            client.post(f"/groups/{group}/members", json={"add": backward}),
            client.post(f"/groups/{group}/members", json={"remove": others[::2]}),
        )
        assert [answer.status_code for answer in answers] == [200, 200, 200]
        added = answers[0].json()["added"] + answers[1].json()["added"]
        assert sorted(added) == emails  # each added once, by one of them
        assert answers[2].json()["removed"] == others[::2]
        assert await member_emails(client, group) == emails + others[1::2]
        # And removes of overlapping sets in opposite orders: each member removed once.
        everyone = emails + others[1::2]
        removes = await asyncio.gather(
            client.post(f"/groups/{group}/members", json={"remove": everyone[:350]}),
            client.post(f"/groups/{group}/members", json={"remove": everyone[50:][::-1]}),
        )
        assert [answer.status_code for answer in removes] == [200, 200]
        removed = removes[0].json()["removed"] + removes[1].json()["removed"]
        assert sorted(removed) == everyone
        assert await member_emails(client, group) == []


async def test_member_adds_racing_user_and_group_deletes_never_fail(
    client: httpx.AsyncClient,
) -> None:
    emails = [f"u{n:03}@example.com" for n in range(50)]
    await seed_users(client, emails)
    group = (await create_group(client, "team"))["id"]
    answers = await asyncio.gather(
        *(client.post(f"/groups/{group}/members", json={"add": emails}) for _ in range(3)),
        *(client.delete(f"/users/{email}") for email in emails[::5]),
    )
    assert {answer.status_code for answer in answers} == {200, 204}
    survivors = [email for n, email in enumerate(emails) if n % 5]
    assert await member_emails(client, group) == survivors
    racing = await asyncio.gather(
        client.post(f"/groups/{group}/members", json={"remove": emails}),
        client.delete(f"/groups/{group}"),
    )
    assert racing[1].status_code == 204
    assert racing[0].status_code in (200, 404)
