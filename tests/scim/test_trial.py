"""What a trial of SCIM as Okta and Entra ID use it found: each fault, and its fix held."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from msgspec.structs import replace

from service.settings import Settings, SettingsError
from tests.conftest import Service, client_of
from tests.scim.messages import PATCH, USER, patch, scim_error

SEARCH = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"


def new_user(email: str, name: str = "Ann Lee") -> Any:
    return {"schemas": [USER], "userName": email, "displayName": name, "active": True}


async def create(client: httpx.AsyncClient, email: str, name: str = "Ann Lee") -> Any:
    created = await client.post("/scim/v2/Users", json=new_user(email, name))
    assert created.status_code == 201, created.text
    return created.json()


async def two_users(client: httpx.AsyncClient) -> None:
    await create(client, "ann@example.com")
    await create(client, "bob@example.com", "Bob Ray")


# 1. List parameters in another letter case, or misspelt.
@pytest.mark.parametrize(
    "params",
    [
        {"Filter": 'userName eq "bob@example.com"', "COUNT": "5"},
        {"FILTER": 'userName eq "bob@example.com"', "startindex": "1", "SortBy": "userName"},
        {"filter": 'userName co "example.com"', "SORTORDER": "descending", "Count": "1"},
    ],
)
async def test_list_parameters_are_honoured_in_any_letter_case(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    await two_users(client)
    listed = await client.get("/scim/v2/Users", params=params)
    assert listed.status_code == 200, listed.text
    assert [user["userName"] for user in listed.json()["Resources"]] == ["bob@example.com"]


async def test_attributes_parameters_are_honoured_in_any_letter_case(
    client: httpx.AsyncClient,
) -> None:
    user = await create(client, "ann@example.com")
    path = f"/scim/v2/Users/{user['id']}"
    read = await client.get(path, params={"Attributes": "userName"})
    assert read.status_code == 200, read.text
    assert set(read.json()) == {"schemas", "id", "userName"}
    listed = await client.get("/scim/v2/Users", params={"EXCLUDEDattributes": "meta"})
    assert "meta" not in listed.json()["Resources"][0]


async def test_search_body_members_are_honoured_in_any_letter_case(
    client: httpx.AsyncClient,
) -> None:
    await two_users(client)
    body = {"SCHEMAS": [SEARCH], "Filter": 'userName eq "bob@example.com"', "Count": 5}
    found = await client.post("/scim/v2/Users/.search", json=body)
    assert found.status_code == 200, found.text
    assert [user["userName"] for user in found.json()["Resources"]] == ["bob@example.com"]
    few = await client.post("/scim/v2/.search", json={"schemas": [SEARCH], "COUNT": 1})
    assert few.json()["itemsPerPage"] == 1


@pytest.mark.parametrize("name", ["filtr", "limit", "attribute", "count2"])
async def test_an_unknown_list_parameter_is_a_400_naming_it(
    client: httpx.AsyncClient, name: str
) -> None:
    await two_users(client)
    listed = await client.get("/scim/v2/Users", params={name: "1"})
    assert repr(name) in scim_error(listed, 400, "invalidValue")
    body = {"schemas": [SEARCH], name: "1"}
    searched = await client.post("/scim/v2/Users/.search", json=body)
    assert repr(name) in scim_error(searched, 400, "invalidValue")


async def test_an_unknown_parameter_on_a_user_is_a_400_naming_it(
    client: httpx.AsyncClient,
) -> None:
    user = await create(client, "ann@example.com")
    read = await client.get(f"/scim/v2/Users/{user['id']}", params={"filter": "x"})
    assert "'filter'" in scim_error(read, 400, "invalidValue")


@pytest.mark.parametrize(
    "query", ["count=1&count=2", "count=1&Count=2", "filter=id%20pr&FILTER=id%20pr"]
)
async def test_a_list_parameter_given_twice_is_a_400_naming_it(
    client: httpx.AsyncClient, query: str
) -> None:
    await two_users(client)
    listed = await client.get(f"/scim/v2/Users?{query}")
    detail = scim_error(listed, 400, "invalidValue")
    assert query.split("=")[0].lower() in detail.lower()
    assert "once" in detail


async def test_a_search_body_naming_a_member_twice_is_a_400(client: httpx.AsyncClient) -> None:
    body = {"schemas": [SEARCH], "count": 1, "Count": 2}
    assert "once" in scim_error(
        await client.post("/scim/v2/.search", json=body), 400, "invalidValue"
    )


@pytest.mark.parametrize("member", ["operations", "OPERATIONS", "Operations"])
async def test_patch_operations_are_taken_in_any_letter_case(
    client: httpx.AsyncClient, member: str
) -> None:
    user = await create(client, "ann@example.com")
    body = {"schemas": [PATCH], member: [{"op": "replace", "path": "displayName", "value": "Z"}]}
    changed = await client.patch(f"/scim/v2/Users/{user['id']}", json=body)
    assert changed.status_code == 200, changed.text
    assert changed.json()["displayName"] == "Z"


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


# 3. Out-of-range dates in a filter.
@pytest.mark.parametrize(
    ("filter", "value"),
    [
        ('meta.created gt "0001-01-01T00:00:00+01:00"', "0001-01-01T00:00:00+01:00"),
        ('meta.lastModified lt "9999-12-31T23:59:59-01:00"', "9999-12-31T23:59:59-01:00"),
    ],
)
async def test_a_date_out_of_range_in_a_filter_is_an_invalid_filter_naming_it(
    client: httpx.AsyncClient, filter: str, value: str
) -> None:
    await two_users(client)
    listed = await client.get("/scim/v2/Users", params={"filter": filter})
    assert value in scim_error(listed, 400, "invalidFilter")


async def test_dates_at_the_edges_of_the_range_still_filter(client: httpx.AsyncClient) -> None:
    await two_users(client)
    for filter in (
        'meta.created gt "0001-01-01T00:00:00Z"',
        'meta.created lt "9999-12-31T23:00:00-00:59"',
    ):
        listed = await client.get("/scim/v2/Users", params={"filter": filter})
        assert listed.json()["totalResults"] == 2, listed.text


# 4. Errors an integrator can read.
async def test_a_user_name_that_is_not_an_email_says_so(client: httpx.AsyncClient) -> None:
    created = await client.post("/scim/v2/Users", json=new_user("not an email"))
    detail = scim_error(created, 400, "invalidValue")
    assert detail.startswith("userName must be an email address")
    assert "regex" not in detail
    assert "^" not in detail


@pytest.mark.parametrize(
    ("filter", "quote", "at"),
    [
        ("userName eq 'x'", "'", 13),
        ("userName eq \u201cx\u201d", "\u201c", 13),
        ("userName eq \u2018x\u2019", "\u2018", 13),
        ('displayName eq "a" or userName eq \u201dx\u201d', "\u201d", 35),
    ],
)
async def test_a_filter_value_in_other_quotes_says_values_take_double_quotes(
    client: httpx.AsyncClient, filter: str, quote: str, at: int
) -> None:
    listed = await client.get("/scim/v2/Users", params={"filter": filter})
    detail = scim_error(listed, 400, "invalidFilter")
    assert detail.startswith('Values are quoted with "')
    assert f"{quote!r} at {at} " in detail


@pytest.mark.parametrize(
    "filter", ['emails[emails[type eq "work"]]', 'emails[value[type eq "work"]]']
)
async def test_a_nested_value_filter_says_value_filters_do_not_nest(
    client: httpx.AsyncClient, filter: str
) -> None:
    listed = await client.get("/scim/v2/Users", params={"filter": filter})
    assert "do not nest" in scim_error(listed, 400, "invalidFilter")


async def test_a_value_filter_on_another_attribute_names_the_one_that_takes_one(
    client: httpx.AsyncClient,
) -> None:
    listed = await client.get("/scim/v2/Users", params={"filter": 'userName[value eq "x"]'})
    assert "only emails" in scim_error(listed, 400, "invalidFilter")


# 7. startIndex and count take ASCII digits only.
@pytest.mark.parametrize("name", ["count", "startIndex"])
@pytest.mark.parametrize("raw", ["\uff11", "+3", "1_0", " 1", "1 ", "0x1", "1e1", "", "\u0661"])
async def test_paging_numbers_take_ascii_digits_only(
    client: httpx.AsyncClient, name: str, raw: str
) -> None:
    await two_users(client)
    listed = await client.get("/scim/v2/Users", params={name: raw})
    assert name in scim_error(listed, 400, "invalidValue")
    body = {"schemas": [SEARCH], name: raw}
    assert name in scim_error(await client.post("/scim/v2/.search", json=body), 400, "invalidValue")


@pytest.mark.parametrize(
    ("params", "start", "shown"),
    [
        ({"count": "-1"}, 1, 0),
        ({"startIndex": "-5", "count": "1"}, 1, 1),
        ({"startIndex": "0", "count": "007"}, 1, 2),
        ({"startIndex": "2"}, 2, 1),
    ],
)
async def test_paging_numbers_below_their_floor_clamp_as_rfc_7644_says(
    client: httpx.AsyncClient, params: dict[str, str], start: int, shown: int
) -> None:
    await two_users(client)
    listed = (await client.get("/scim/v2/Users", params=params)).json()
    assert (listed["startIndex"], listed["itemsPerPage"], listed["totalResults"]) == (
        start,
        shown,
        2,
    )


async def test_a_search_body_takes_paging_numbers_as_json_numbers(
    client: httpx.AsyncClient,
) -> None:
    await two_users(client)
    body = {"schemas": [SEARCH], "startIndex": 2, "count": 1}
    assert (await client.post("/scim/v2/.search", json=body)).json()["startIndex"] == 2
    flag = {"schemas": [SEARCH], "count": True}
    scim_error(await client.post("/scim/v2/.search", json=flag), 400, "invalidValue")


# 8. meta.location and Location do not echo an untrusted Host.
HOSTILE = {"Host": "evil.example", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}


async def test_public_url_builds_locations_whatever_host_the_caller_sends(
    db: asyncpg.Pool, settings: Settings
) -> None:
    public = replace(settings, public_url="https://id.example.com/people")
    async with client_of(public) as client:
        created = await client.post(
            "/scim/v2/Users", json=new_user("ann@example.com"), headers=HOSTILE
        )
        assert created.status_code == 201, created.text
        user = created.json()
        location = f"https://id.example.com/people/scim/v2/Users/{user['id']}"
        assert created.headers["location"] == user["meta"]["location"] == location
        read = await client.get(f"/scim/v2/Users/{user['id']}", headers=HOSTILE)
        assert read.json()["meta"]["location"] == location
        listed = await client.get("/scim/v2/Users", headers=HOSTILE)
        assert listed.json()["Resources"][0]["meta"]["location"] == location
        types = await client.get("/scim/v2/ResourceTypes", headers=HOSTILE)
        assert "evil.example" not in types.text
        assert "https://id.example.com/people/scim/v2/ResourceTypes/User" in types.text


async def test_without_public_url_locations_follow_the_request(client: httpx.AsyncClient) -> None:
    # Starlette's base_url: the scheme uvicorn set (from X-Forwarded-Proto only for a
    # peer in --forwarded-allow-ips; here none), the Host header as sent.
    created = await client.post(
        "/scim/v2/Users", json=new_user("ann@example.com"), headers={"Host": "users.example.com"}
    )
    user = created.json()
    assert created.headers["location"] == f"http://users.example.com/scim/v2/Users/{user['id']}"


@pytest.mark.parametrize(
    "raw",
    [
        *("id.example.com", "ftp://id.example.com", "https://", "https://id.example.com:0"),
        *("https://id.example.com:99999", "https://id.example.com/?a=1"),
        *("https://id.example.com/#top", "https://user:pw@id.example.com"),
    ],
)
def test_public_url_must_be_an_absolute_http_url_without_query(raw: str) -> None:
    with pytest.raises(SettingsError, match="PUBLIC_URL"):
        Settings.from_env({"PUBLIC_URL": raw})


def test_public_url_is_read_without_a_trailing_slash() -> None:
    settings = Settings.from_env({"PUBLIC_URL": "https://id.example.com/people/"})
    assert settings.public_url == "https://id.example.com/people"


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
