"""The attributes SCIM keeps in a user's attributes: bounds, skips, PUT, selection, filters."""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

from service.scim import filters
from service.scim.mapping import TABLE
from tests.conftest import ROOT, Service
from tests.scim.messages import USER, patch
from tests.scim.test_providers import ENTERPRISE, entra_user, native_attributes


async def create(client: httpx.AsyncClient, body: dict[str, Any] | None = None) -> str:
    response = await client.post("/scim/v2/Users", json=body or entra_user("ada@contoso.com"))
    assert response.status_code == 201, response.text
    return f"/scim/v2/Users/{response.json()['id']}"


def skipped_count(path: str) -> float:
    return REGISTRY.get_sample_value("scim_attributes_skipped_total", {"path": path}) or 0.0


async def test_a_patch_skips_an_unknown_path_applies_the_others_and_says_so_once(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    location = await create(client)
    unknown = f"urn:example:custom:{uuid.uuid4().hex}:badge"
    before = skipped_count(unknown)
    operations = [
        {"op": "replace", "path": "title", "value": "Lead"},
        {"op": "replace", "path": unknown, "value": "gold"},
        {"op": "add", "path": 'phoneNumbers[type eq "home"].value', "value": "+1 555"},
        {"op": "add", "path": "x509Certificates", "value": [{"value": "MII"}]},
        {"op": "replace", "path": "displayName", "value": "Ada L"},
    ]
    with caplog.at_level(logging.WARNING, logger="service"):
        for _ in range(2):
            response = await client.patch(location, json=patch(*operations))
            assert response.status_code == 200, response.text
    user = response.json()
    assert (user["title"], user["displayName"]) == ("Lead", "Ada L")
    assert [e["type"] for e in user["phoneNumbers"]] == ["work", "mobile", "fax"]
    warned = [r.getMessage() for r in caplog.records if unknown in r.getMessage()]
    assert len(warned) == 1  # once per path per worker
    assert any('phoneNumbers[type eq "home"].value' in r.getMessage() for r in caplog.records)
    assert skipped_count(unknown) - before in (2.0, 0.0)  # its own label, or "other"


async def test_the_skipped_paths_counter_has_a_bounded_set_of_labels(
    client: httpx.AsyncClient,
) -> None:
    location = await create(client)
    before = skipped_count("other")
    for n in range(30):
        body = patch({"op": "add", "path": f"madeUp{uuid.uuid4().hex}{n}", "value": "x"})
        assert (await client.patch(location, json=body)).status_code == 200
    labels = {
        sample.labels["path"]
        for metric in REGISTRY.collect()
        if metric.name == "scim_attributes_skipped"
        for sample in metric.samples
    }
    assert len(labels) <= 21  # 20 paths and "other"
    assert skipped_count("other") - before >= 10


async def test_a_create_or_put_ignores_unknown_attributes(client: httpx.AsyncClient) -> None:
    body = entra_user("ada@contoso.com") | {
        "photos": [{"value": "https://x/p.png"}],
        "urn:example:custom:2.0:User": {"badge": "gold"},
        "weird key": "x",
    }
    location = await create(client, body)
    assert (await client.put(location, json=body)).status_code == 200
    attributes = await native_attributes(client, "ada@contoso.com")
    assert "badge" not in attributes
    assert attributes["department"] == "Sales"


@pytest.mark.parametrize(
    "path", ["name..givenName", 'phoneNumbers[type eq "mobile"', "a b", "phoneNumbers[type eq 'x']"]
)
async def test_a_malformed_path_is_a_400_invalid_path_and_nothing_changes(
    client: httpx.AsyncClient, path: str
) -> None:
    location = await create(client)
    before = (await client.get(location)).json()
    body = patch(
        {"op": "replace", "path": "title", "value": "Lead"},
        {"op": "replace", "path": path, "value": "x"},
    )
    response = await client.patch(location, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["scimType"] == "invalidPath"
    assert (await client.get(location)).json() == before


async def test_a_write_past_the_attribute_bounds_is_a_400_naming_them_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    location = await create(client)
    # The native API's attributes beside SCIM's: 16 kept by SCIM, 34 of the caller's.
    own = {f"own{n:02}": "x" for n in range(34)}
    native = await client.patch("/users/ada@contoso.com", json={"attributes": own})
    assert native.status_code == 200, native.text
    before = (await client.get(location)).json()
    one_more = patch({"op": "add", "path": "nickName", "value": "Ada"})
    response = await client.patch(location, json=one_more)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["scimType"] == "invalidValue"
    assert "51 names" in error["detail"]
    assert "50 names and 8,192 bytes" in error["detail"]
    too_long = patch(
        {"op": "remove", "path": "title"},
        *(
            {"op": "replace", "path": f"{ENTERPRISE}:{name}", "value": "é" * 1000}
            for name in ("employeeNumber", "costCenter", "organization", "division", "department")
        ),
    )
    response = await client.patch(location, json=too_long)
    assert response.status_code == 400, response.text
    assert "bytes" in response.json()["detail"]
    assert (await client.get(location)).json() == before


@pytest.mark.parametrize("value", ["a\u0007b", "x" * 1001, "\u202eevil"])
async def test_a_value_the_attribute_rule_refuses_is_a_400_invalid_value(
    client: httpx.AsyncClient, value: str
) -> None:
    location = await create(client)
    body = patch({"op": "replace", "path": "title", "value": value})
    response = await client.patch(location, json=body)
    assert response.status_code == 400
    assert response.json()["scimType"] == "invalidValue"
    assert "title" in response.json()["detail"]
    created = await client.post(
        "/scim/v2/Users", json=entra_user("bo@contoso.com") | {"title": value, "externalId": "b"}
    )
    assert created.status_code == 400


async def test_a_put_without_active_keeps_a_disabled_user_disabled(
    client: httpx.AsyncClient,
) -> None:
    location = await create(client)
    off = await client.patch(
        location, json=patch({"op": "replace", "path": "active", "value": False})
    )
    assert off.json()["active"] is False
    body = entra_user("ada@contoso.com")
    del body["active"]
    replaced = await client.put(location, json=body)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["active"] is False
    assert (await client.get("/users/ada@contoso.com")).json()["status"] == "disabled"


async def test_a_put_removes_the_kept_attributes_it_leaves_out_and_keeps_the_callers_own(
    client: httpx.AsyncClient,
) -> None:
    location = await create(client)
    native = await client.patch("/users/ada@contoso.com", json={"attributes": {"tenant": "acme"}})
    assert native.status_code == 200
    body = entra_user("ada@contoso.com")
    del body["title"], body["phoneNumbers"], body[ENTERPRISE]["manager"]
    replaced = (await client.put(location, json=body)).json()
    assert "title" not in replaced
    assert "phoneNumbers" not in replaced
    assert "manager" not in replaced[ENTERPRISE]
    attributes = await native_attributes(client, "ada@contoso.com")
    assert attributes["tenant"] == "acme"
    assert not {"title", "phone.work", "phone.mobile", "manager"} & set(attributes)
    assert attributes["department"] == "Sales"
    # A PATCH never touches them either.
    await client.patch(location, json=patch({"op": "remove", "path": ENTERPRISE}))
    assert (await native_attributes(client, "ada@contoso.com"))["tenant"] == "acme"


async def test_attributes_and_excluded_attributes_take_sub_attributes_and_the_extension(
    client: httpx.AsyncClient,
) -> None:
    location = await create(client)
    without = (await client.get(location, params={"excludedAttributes": "name.formatted"})).json()
    assert without["name"] == {"givenName": "Ada", "familyName": "Lovelace"}
    department = f"{ENTERPRISE}:department"
    only = (
        await client.get(location, params={"attributes": f"{department},name.givenName"})
    ).json()
    assert only == {
        "schemas": [USER, ENTERPRISE],
        "id": only["id"],
        "name": {"givenName": "Ada"},
        ENTERPRISE: {"department": "Sales"},
    }
    phones = (await client.get(location, params={"attributes": "phoneNumbers.value"})).json()
    assert [p["type"] for p in phones["phoneNumbers"]] == ["work", "mobile", "fax"]
    no_extension = (await client.get(location, params={"excludedAttributes": ENTERPRISE})).json()
    assert ENTERPRISE not in no_extension
    assert no_extension["schemas"] == [USER]
    no_manager = (
        await client.get(location, params={"excludedAttributes": f"{ENTERPRISE}:manager.value"})
    ).json()
    assert "manager" not in no_manager[ENTERPRISE]
    listed = await client.get(
        "/scim/v2/Users", params={"attributes": department, "filter": 'title eq "Analyst"'}
    )
    [resource] = listed.json()["Resources"]
    assert resource[ENTERPRISE] == {"department": "Sales"}
    searched = await client.post(
        "/scim/v2/Users/.search", json={"excludedAttributes": ["addresses", "name.familyName"]}
    )
    [resource] = searched.json()["Resources"]
    assert "addresses" not in resource
    assert resource["name"] == {"formatted": "Ada Lovelace", "givenName": "Ada"}


# Each kept single-valued attribute, by its path: filtered with eq.
SINGLE_VALUED = [
    ("title", "Analyst"),
    ("preferredLanguage", "en-GB"),
    ("name.givenName", "Ada"),
    ("name.familyName", "Lovelace"),
    (f"{ENTERPRISE}:employeeNumber", "701984"),
    (f"{ENTERPRISE}:department", "Sales"),
    (f"{ENTERPRISE}:manager", "26118915-6090-4610-87e4-49d8ca9f808d"),
    (f"{ENTERPRISE}:manager.value", "26118915-6090-4610-87e4-49d8ca9f808d"),
    ('emails[type eq "work"].value', "ada@contoso.com"),
    ("externalId", "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef"),
    (f"{USER}:title", "Analyst"),
]


@pytest.mark.parametrize(("path", "value"), SINGLE_VALUED)
async def test_eq_finds_a_user_by_each_kept_attribute(
    client: httpx.AsyncClient, path: str, value: str
) -> None:
    await create(client)
    await create(client, entra_user("bo@contoso.com") | {
        "externalId": "other", "title": "Other", "preferredLanguage": "de",
        "name": {"givenName": "Bo", "familyName": "B"},
        ENTERPRISE: {"employeeNumber": "1", "department": "Ops", "manager": "m"},
    })  # fmt: skip
    found = await client.get("/scim/v2/Users", params={"filter": f'{path} eq "{value}"'})
    assert found.status_code == 200, found.text
    assert [u["userName"] for u in found.json()["Resources"]] == ["ada@contoso.com"]
    nobody = await client.get("/scim/v2/Users", params={"filter": f'{path} eq "{value}x"'})
    assert nobody.json()["totalResults"] == 0


async def test_eq_on_a_kept_attribute_is_served_by_the_attributes_index(db: asyncpg.Pool) -> None:
    where, arguments = filters.to_sql(f'{ENTERPRISE}:department eq "Sales"')
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        rows = await conn.fetch(f"EXPLAIN SELECT FROM users WHERE {where}", *arguments)
    plan = "\n".join(row[0] for row in rows)
    assert "users_attributes" in plan, plan


async def test_the_change_feed_carries_what_scim_writes(client: httpx.AsyncClient) -> None:
    start = (await client.get("/users/changes", params={"after": "now"})).json()["next"]
    location = await create(client)
    await client.patch(location, json=patch({"op": "replace", "path": "title", "value": "Lead"}))
    changes: list[dict[str, Any]] = []
    for _ in range(10):  # a long poll: the feed serves a change once older transactions end
        page = await client.get("/users/changes", params={"after": start, "wait": 5})
        changes += page.json()["changes"]
        start = page.json()["next"]
        if len(changes) >= 2:
            break
    assert [c["type"] for c in changes] == ["created", "updated"]
    assert changes[-1]["user"]["attributes"]["title"] == "Lead"
    assert changes[-1]["user"]["attributes"]["department"] == "Sales"


async def test_discovery_advertises_exactly_what_is_kept(client: httpx.AsyncClient) -> None:
    types = (await client.get("/scim/v2/ResourceTypes/User")).json()
    assert types["schemaExtensions"] == [{"schema": ENTERPRISE, "required": False}]
    enterprise = (await client.get(f"/scim/v2/Schemas/{ENTERPRISE}")).json()
    assert [a["name"] for a in enterprise["attributes"]] == [
        "employeeNumber", "costCenter", "organization", "division", "department", "manager",
    ]  # fmt: skip
    [manager] = [a for a in enterprise["attributes"] if a["name"] == "manager"]
    assert [s["name"] for s in manager["subAttributes"]] == ["value"]
    core = (await client.get(f"/scim/v2/Schemas/{USER}")).json()
    by_name = {a["name"]: a for a in core["attributes"]}
    assert [s["name"] for s in by_name["name"]["subAttributes"]] == [
        "formatted", "givenName", "familyName", "middleName", "honorificPrefix", "honorificSuffix",
    ]  # fmt: skip
    [phone_type] = [s for s in by_name["phoneNumbers"]["subAttributes"] if s["name"] == "type"]
    assert phone_type["canonicalValues"] == ["work", "mobile", "fax"]
    assert {"nickName", "title", "userType", "preferredLanguage", "locale", "timezone",
            "profileUrl", "addresses"} <= set(by_name)  # fmt: skip
    assert "password" not in by_name
    assert "x509Certificates" not in by_name


async def test_excluded_attributes_drops_a_sub_attribute_and_what_it_leaves_empty(
    client: httpx.AsyncClient,
) -> None:
    body = {"schemas": [USER], "userName": "hal@example.com", "displayName": "Hal"}
    location = await create(client, body)
    user = (await client.get(location, params={"excludedAttributes": "name.formatted"})).json()
    assert "name" not in user
    assert user["displayName"] == "Hal"
    user = (await client.get(location, params={"excludedAttributes": "emails.value"})).json()
    assert "emails" not in user


def test_the_docs_table_is_the_mapping_table() -> None:
    """The docs' table of SCIM paths and attribute names says what the code keeps."""
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n".join(document.read_text() for document in documents)
    _, _, after = text.partition("| SCIM path | attribute |")
    table = after.partition("\n\n")[0]
    rows = re.findall(r"^\| `([^`]+)` \| `([a-z][a-z0-9_.-]*)` \|", table, re.MULTILINE)
    shown = [(path.replace("urn:…:enterprise:2.0:User", ENTERPRISE), name) for path, name in rows]
    assert shown == [(mapped.path, mapped.name) for mapped in TABLE]


async def test_skips_are_logged_once_a_worker_and_counted_across_workers(
    db: asyncpg.Pool, tmp_path: Path, database_url: str, services: list[Service]
) -> None:
    service = Service(tmp_path, {"DATABASE_URL": database_url, "WEB_CONCURRENCY": "2"})
    services.append(service)
    service.wait_ready()
    unknown = "urn:example:custom:2.0:User:badge"
    async with httpx.AsyncClient(base_url=service.url) as client:
        location = await create(client)
        body = patch({"op": "add", "path": unknown, "value": "gold"})
        for _ in range(12):  # over new connections: both workers answer some
            async with httpx.AsyncClient(base_url=service.url) as one:
                assert (await one.patch(location, json=body)).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert f'scim_attributes_skipped_total{{path="{unknown}"}} 12.0' in metrics
    warnings = [line for line in service.output().splitlines() if unknown in line]
    assert 1 <= len(warnings) <= 2, warnings  # once a worker, whichever answered


async def test_a_bad_value_in_an_entry_is_named_by_its_typed_path(
    client: httpx.AsyncClient,
) -> None:
    body = entra_user("ada@contoso.com") | {"phoneNumbers": [{"type": "Mobile", "value": 5}]}
    response = await client.post("/scim/v2/Users", json=body)
    assert response.status_code == 400
    assert 'phoneNumbers[type eq "mobile"].value takes a string' in response.json()["detail"]


async def found_names(client: httpx.AsyncClient, filter: str) -> list[str]:
    response = await client.get("/scim/v2/Users", params={"filter": filter})
    assert response.status_code == 200, response.text
    return [user["userName"] for user in response.json()["Resources"]]


async def test_entras_mail_is_the_work_email_and_never_changes_user_name(
    client: httpx.AsyncClient,
) -> None:
    upn, mail = "ada@contoso.onmicrosoft.com", "ada.lovelace@contoso.com"
    body = entra_user(upn) | {"emails": [{"primary": True, "type": "work", "value": mail}]}
    location = await create(client, body)
    user = (await client.get(location)).json()
    assert (user["userName"], user["emails"][0]) == (upn, {"value": mail})
    for filter in (f'emails[type eq "work"].value eq "{mail}"', f'emails.value eq "{mail}"',
                   f'userName eq "{upn}"', f'emails[value eq "{mail}"]'):  # fmt: skip
        assert await found_names(client, filter) == [upn], filter
    assert await found_names(client, f'userName eq "{mail}"') == []
    assert await found_names(client, f'emails.value eq "{upn}"') == []
    # Entra's PATCH of mail: userName stays, so its next match by userName finds the user.
    new_mail = "ada.l@contoso.com"
    for operation in (
        {"op": "Replace", "path": 'emails[type eq "work"].value', "value": new_mail},
        {"op": "Replace", "path": "emails.value", "value": new_mail},
        {"op": "Replace", "path": "emails", "value": [{"primary": True, "value": new_mail}]},
        {"op": "Replace", "value": {'emails[type eq "work"].value': new_mail}},
    ):
        changed = await client.patch(location, json=patch(operation))
        assert changed.status_code == 200, changed.text
        assert (changed.json()["userName"], changed.json()["emails"][0]["value"]) == (
            upn, new_mail,
        )  # fmt: skip
        assert await found_names(client, f'userName eq "{upn}"') == [upn]
        assert await found_names(client, f'emails[type eq "work"].value eq "{new_mail}"') == [upn]
    assert (await native_attributes(client, upn))["email.work"] == new_mail
    # Set equal to userName (in another case), or removed: no longer kept apart.
    for operation in (
        {"op": "Replace", "path": 'emails[type eq "work"].value', "value": upn.upper()},
        {"op": "Remove", "path": 'emails[type eq "work"].value'},
    ):
        await client.patch(location, json=patch({"op": "Replace", "path": "emails.value",
                                                 "value": mail}))  # fmt: skip
        changed = (await client.patch(location, json=patch(operation))).json()
        assert (changed["userName"], changed["emails"][0]["value"]) == (upn, upn)
        assert "email.work" not in await native_attributes(client, upn)
        assert await found_names(client, f'emails.value eq "{upn}"') == [upn]


async def test_a_work_email_equal_to_user_name_is_not_kept_apart(
    client: httpx.AsyncClient,
) -> None:
    body = entra_user("ada@contoso.com") | {
        "emails": [{"primary": True, "type": "work", "value": "Ada@Contoso.com"}]
    }
    await create(client, body)
    assert "email.work" not in await native_attributes(client, "ada@contoso.com")


async def test_name_formatted_that_differs_from_display_name_is_kept_apart(
    client: httpx.AsyncClient,
) -> None:
    body = entra_user("ada@contoso.com") | {
        "displayName": "Ada Lovelace (Contractor)",
        "name": {"formatted": "Ada Lovelace", "givenName": "Ada", "familyName": "Lovelace"},
    }
    location = await create(client, body)
    user = (await client.get(location)).json()
    assert (user["displayName"], user["name"]["formatted"]) == (
        "Ada Lovelace (Contractor)", "Ada Lovelace",
    )  # fmt: skip
    assert await found_names(client, 'name.formatted eq "Ada Lovelace"') == ["ada@contoso.com"]
    changed = await client.patch(
        location, json=patch({"op": "Replace", "path": "name.formatted", "value": "Ada L"})
    )
    assert (changed.json()["displayName"], changed.json()["name"]["formatted"]) == (
        "Ada Lovelace (Contractor)", "Ada L",
    )  # fmt: skip
    same = {"op": "Replace", "path": "name.formatted", "value": "Ada Lovelace (Contractor)"}
    changed = await client.patch(location, json=patch(same))
    assert changed.json()["name"]["formatted"] == "Ada Lovelace (Contractor)"
    assert "formatted_name" not in await native_attributes(client, "ada@contoso.com")


@pytest.mark.parametrize(
    "filter", ['emails.value eq "ada@contoso.com"', 'emails[type eq "work"].value eq "a@x.io"']
)
async def test_eq_on_the_work_email_is_served_by_both_indexes(
    db: asyncpg.Pool, filter: str
) -> None:
    where, arguments = filters.to_sql(filter)
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        rows = await conn.fetch(f"EXPLAIN SELECT FROM users WHERE {where}", *arguments)
    plan = "\n".join(row[0] for row in rows)
    assert "users_email_lower_key" in plan, plan
    assert "users_attributes" in plan, plan


async def test_a_second_or_work_email_that_is_not_an_email_is_a_400(
    client: httpx.AsyncClient,
) -> None:
    location = await create(client)
    for path in ('emails[type eq "home"].value', 'emails[type eq "work"].value'):
        bad = patch({"op": "add", "path": path, "value": "not-an-email"})
        response = await client.patch(location, json=bad)
        assert (response.status_code, response.json()["scimType"]) == (400, "invalidValue")
    assert not {"email.home", "email.work"} & set(
        await native_attributes(client, "ada@contoso.com")
    )


@pytest.mark.parametrize(
    "path",
    ["phoneNumbers[value eq]", "phoneNumbers[))]", "phoneNumbers[type eq]",
     'addresses[value eq "a" or]', "emails[value eq]", 'x509Certificates[value eq "a" and]'],
)  # fmt: skip
async def test_a_malformed_value_filter_in_a_patch_path_is_a_400_and_changes_nothing(
    client: httpx.AsyncClient, path: str
) -> None:
    location = await create(client)
    before = (await client.get(location)).json()
    body = patch(
        {"op": "replace", "path": "displayName", "value": "Changed"},
        {"op": "replace", "path": path, "value": "x"},
    )
    response = await client.patch(location, json=body)
    assert (response.status_code, response.json()["scimType"]) == (400, "invalidPath")
    assert (await client.get(location)).json() == before


async def test_a_well_formed_value_filter_on_an_unknown_entry_is_still_skipped(
    client: httpx.AsyncClient,
) -> None:
    location = await create(client)
    body = patch(
        {"op": "replace", "path": 'phoneNumbers[value eq "+1 555"].value', "value": "x"},
        {"op": "replace", "path": "title", "value": "Lead"},
    )
    response = await client.patch(location, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["title"] == "Lead"


@pytest.mark.parametrize(
    "path",
    ['title[value eq "nomatch"]', f'{ENTERPRISE}:manager[value eq "zzz"].value',
     'name[givenName eq "zzz"].familyName', f'{USER}:title[value eq "a"]'],
)  # fmt: skip
async def test_a_value_filter_on_a_single_valued_attribute_is_a_400_invalid_path(
    client: httpx.AsyncClient, path: str
) -> None:
    location = await create(client)
    before = (await client.get(location)).json()
    response = await client.patch(
        location, json=patch({"op": "replace", "path": path, "value": "X"})
    )
    assert (response.status_code, response.json()["scimType"]) == (400, "invalidPath")
    assert "not multi-valued" in response.json()["detail"]
    assert (await client.get(location)).json() == before


async def test_an_unqualified_enterprise_attribute_is_the_extensions(
    client: httpx.AsyncClient,
) -> None:
    location = await create(client)
    manager = {"op": "Add", "path": "manager", "value": [{"$ref": None, "value": "mgr-3"}]}
    department = {"op": "Replace", "path": "department", "value": "Research"}
    response = await client.patch(location, json=patch(manager, department))
    assert response.status_code == 200, response.text
    extension = (await client.get(location)).json()[ENTERPRISE]
    assert (extension["manager"], extension["department"]) == ({"value": "mgr-3"}, "Research")
    found = await found_names(client, 'manager eq "mgr-3" and department eq "Research"')
    assert found == ["ada@contoso.com"]
    removed = await client.patch(location, json=patch({"op": "Remove", "path": "manager"}))
    assert "manager" not in removed.json()[ENTERPRISE]
