"""Entra ID's default mappings and Okta's template profile, replayed as each provider sends them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.scim.messages import USER, patch

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"

# Entra ID's default user mappings for a non-gallery app ("Tutorial: Develop and
# plan provisioning for a SCIM endpoint") beyond userName, active, displayName,
# the work email and externalId: each SCIM path, a value, and the attribute it
# is kept as.
ENTRA_DEFAULTS = [
    ("title", "Analyst", "title"),
    ("preferredLanguage", "en-GB", "preferred_language"),
    ("name.givenName", "Ada", "given_name"),
    ("name.familyName", "Lovelace", "family_name"),
    ('addresses[type eq "work"].formatted', "1 Way, London N1, GB", "address.work.formatted"),
    ('addresses[type eq "work"].streetAddress', "1 Way", "address.work.street_address"),
    ('addresses[type eq "work"].locality', "London", "address.work.locality"),
    ('addresses[type eq "work"].region', "Greater London", "address.work.region"),
    ('addresses[type eq "work"].postalCode', "N1", "address.work.postal_code"),
    ('addresses[type eq "work"].country', "GB", "address.work.country"),
    ('phoneNumbers[type eq "work"].value', "+44 20 7946 0000", "phone.work"),
    ('phoneNumbers[type eq "mobile"].value', "+44 7700 900000", "phone.mobile"),
    ('phoneNumbers[type eq "fax"].value', "+44 20 7946 0001", "phone.fax"),
    (f"{ENTERPRISE}:employeeNumber", "701984", "employee_number"),
    (f"{ENTERPRISE}:department", "Sales", "department"),
    (f"{ENTERPRISE}:manager", "26118915-6090-4610-87e4-49d8ca9f808d", "manager"),
]


def entra_user(email: str) -> dict[str, Any]:
    """A create as Entra ID sends it, with every default mapping given a value."""
    return {
        "schemas": [USER, ENTERPRISE],
        "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
        "userName": email,
        "active": True,
        "displayName": "Ada Lovelace",
        "title": "Analyst",
        "preferredLanguage": "en-GB",
        "emails": [{"primary": True, "type": "work", "value": email}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": "Ada Lovelace", "familyName": "Lovelace", "givenName": "Ada"},
        "addresses": [
            {
                "type": "work",
                "formatted": "1 Way, London N1, GB",
                "streetAddress": "1 Way",
                "locality": "London",
                "region": "Greater London",
                "postalCode": "N1",
                "country": "GB",
                "primary": False,
            }
        ],
        "phoneNumbers": [
            {"type": "work", "value": "+44 20 7946 0000", "primary": True},
            {"type": "mobile", "value": "+44 7700 900000"},
            {"type": "fax", "value": "+44 20 7946 0001"},
        ],
        ENTERPRISE: {
            "employeeNumber": "701984",
            "department": "Sales",
            "manager": {"value": "26118915-6090-4610-87e4-49d8ca9f808d"},
        },
        "roles": [],
    }


def at(user: dict[str, Any], path: str) -> Any:
    """The value of a user's SCIM JSON at a path of ENTRA_DEFAULTS's kinds."""
    holder, rest = user, path
    if path.startswith(ENTERPRISE + ":"):
        holder, rest = user.get(ENTERPRISE, {}), path[len(ENTERPRISE) + 1 :]
    if "[" in rest:
        attribute, _, tail = rest.partition("[")
        kind, _, sub = tail.partition("].")
        kind = kind.removeprefix('type eq "').removesuffix('"')
        entries: list[dict[str, Any]] = holder.get(attribute, [])
        entry = next((e for e in entries if e.get("type") == kind), {})
        return entry.get(sub)
    attribute, _, sub = rest.partition(".")
    found = holder.get(attribute)
    if attribute == "manager" and found is not None:
        return found["value"]
    return found.get(sub) if sub and found is not None else found


async def native_attributes(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    response = await client.get(f"/users/{email}")
    assert response.status_code == 200, response.text
    attributes: dict[str, str] = response.json()["attributes"]
    return attributes


async def test_entra_default_mappings_are_kept_returned_and_searchable(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post("/scim/v2/Users", json=entra_user("ada@contoso.com"))
    assert created.status_code == 201, created.text
    user = created.json()
    assert user["schemas"] == [USER, ENTERPRISE]
    read = (await client.get(f"/scim/v2/Users/{user['id']}")).json()
    assert read == user
    # The six defaults that are the user's own fields.
    assert (read["userName"], read["active"], read["displayName"]) == (
        "ada@contoso.com", True, "Ada Lovelace",
    )  # fmt: skip
    assert read["emails"] == [{"value": "ada@contoso.com"}]
    assert read["externalId"] == "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef"
    assert read["name"]["formatted"] == "Ada Lovelace"
    attributes = await native_attributes(client, "ada@contoso.com")
    for path, value, name in ENTRA_DEFAULTS:
        assert at(read, path) == value, path
        assert attributes[name] == value, name
    assert read["phoneNumbers"] == [
        {"type": "work", "value": "+44 20 7946 0000"},
        {"type": "mobile", "value": "+44 7700 900000"},
        {"type": "fax", "value": "+44 20 7946 0001"},
    ]
    assert read[ENTERPRISE]["manager"] == {"value": "26118915-6090-4610-87e4-49d8ca9f808d"}
    found = await client.get("/users", params={"attribute.department": "Sales"})
    assert [u["email"] for u in found.json()] == ["ada@contoso.com"]
    listed = await client.get(
        "/scim/v2/Users", params={"filter": f'{ENTERPRISE}:department eq "Sales"'}
    )
    assert listed.json()["Resources"] == [user]
    searched = await client.post(
        "/scim/v2/Users/.search",
        json={"filter": 'phoneNumbers[type eq "mobile"].value eq "+44 7700 900000"'},
    )
    assert searched.json()["Resources"] == [user]


async def test_every_patch_form_entra_sends_is_applied_and_read_back(
    client: httpx.AsyncClient,
) -> None:
    user = (await client.post("/scim/v2/Users", json=entra_user("ada@contoso.com"))).json()
    path = f"/scim/v2/Users/{user['id']}"

    async def patched(*operations: Any) -> dict[str, Any]:
        response = await client.patch(path, json=patch(*operations))
        assert response.status_code == 200, response.text
        read: dict[str, Any] = (await client.get(path)).json()
        assert read == response.json()
        return read

    # A path: simple, dotted, value-filtered and URN-qualified, ops in Entra's case.
    read = await patched(
        {"op": "Replace", "path": "title", "value": "Lead"},
        {"op": "Replace", "path": "name.familyName", "value": "King"},
        {"op": "Replace", "path": 'phoneNumbers[type eq "mobile"].value', "value": "+44 7700 1"},
        {"op": "Replace", "path": 'addresses[type eq "work"].locality', "value": "Leeds"},
        {"op": "Replace", "path": f"{ENTERPRISE}:department", "value": "Research"},
        {"op": "Replace", "path": f"{ENTERPRISE}:manager", "value": "m-2"},  # a bare id
        {"op": "Replace", "path": "displayName", "value": "Ada King"},
    )
    assert (read["title"], read["name"]["familyName"], read["displayName"]) == (
        "Lead", "King", "Ada King",
    )  # fmt: skip
    assert at(read, 'phoneNumbers[type eq "mobile"].value') == "+44 7700 1"
    assert at(read, 'addresses[type eq "work"].locality') == "Leeds"
    assert read[ENTERPRISE]["department"] == "Research"
    assert read[ENTERPRISE]["manager"] == {"value": "m-2"}
    read = await patched(
        {"op": "Add", "path": f"{ENTERPRISE}:manager", "value": {"value": "m-3"}},
        {"op": "ADD", "path": f"{ENTERPRISE}:employeeNumber", "value": "42"},
    )
    assert read[ENTERPRISE]["manager"] == {"value": "m-3"}
    assert read[ENTERPRISE]["employeeNumber"] == "42"
    # Without a path: plain, dotted and URN-qualified keys, and the extension as an object.
    read = await patched(
        {
            "op": "replace",
            "value": {
                "title": "CTO",
                "name.givenName": "Augusta",
                f"{ENTERPRISE}:employeeNumber": "43",
                "active": "False",
            },
        },
        {"op": "add", "value": {ENTERPRISE: {"costCenter": "CC-1", "division": "EMEA"}}},
        {"op": "add", "path": ENTERPRISE, "value": {"organization": "Contoso"}},
    )
    assert (read["title"], read["name"]["givenName"], read["active"]) == ("CTO", "Augusta", False)
    assert read[ENTERPRISE] == {
        "employeeNumber": "43", "costCenter": "CC-1", "organization": "Contoso",
        "division": "EMEA", "department": "Research", "manager": {"value": "m-3"},
    }  # fmt: skip
    # Remove, with a path of each kind; the extension goes from schemas with its last value.
    read = await patched(
        {"op": "Remove", "path": "title"},
        {"op": "Remove", "path": "name.givenName"},
        {"op": "Remove", "path": 'phoneNumbers[type eq "fax"].value'},
        {"op": "Remove", "path": 'addresses[type eq "work"]'},
        {"op": "Remove", "path": f"{ENTERPRISE}:manager"},
    )
    assert "title" not in read
    assert "givenName" not in read["name"]
    assert [e["type"] for e in read["phoneNumbers"]] == ["work", "mobile"]
    assert "addresses" not in read
    assert "manager" not in read[ENTERPRISE]
    read = await patched({"op": "remove", "path": ENTERPRISE})
    assert ENTERPRISE not in read
    assert read["schemas"] == [USER]
    attributes = await native_attributes(client, "ada@contoso.com")
    assert "department" not in attributes
    assert attributes["family_name"] == "King"


OKTA_PROFILE = {
    "name.givenName": ("Kai", "given_name"),
    "name.familyName": ("Moreau", "family_name"),
    "name.middleName": ("Jun", "middle_name"),
    "name.honorificPrefix": ("Dr.", "honorific_prefix"),
    "name.honorificSuffix": ("PhD", "honorific_suffix"),
    "nickName": ("KJ", "nick_name"),
    "title": ("Engineer", "title"),
    "userType": ("Employee", "user_type"),
    "preferredLanguage": ("fr-FR", "preferred_language"),
    "locale": ("fr_FR", "locale"),
    "timezone": ("Europe/Paris", "timezone"),
    "profileUrl": ("https://example.com/kai", "profile_url"),
    "secondEmail": ("kai@home.example", "email.home"),
    'phoneNumbers[type eq "work"].value': ("+33 1 00", "phone.work"),
    'phoneNumbers[type eq "mobile"].value': ("+33 6 00", "phone.mobile"),
    'addresses[type eq "work"].streetAddress': ("1 rue A", "address.work.street_address"),
    'addresses[type eq "work"].locality': ("Paris", "address.work.locality"),
    'addresses[type eq "work"].region': ("IDF", "address.work.region"),
    'addresses[type eq "work"].postalCode': ("75001", "address.work.postal_code"),
    'addresses[type eq "work"].country': ("FR", "address.work.country"),
    f"{ENTERPRISE}:employeeNumber": ("E-7", "employee_number"),
    f"{ENTERPRISE}:costCenter": ("CC-9", "cost_center"),
    f"{ENTERPRISE}:organization": ("Example", "organization"),
    f"{ENTERPRISE}:division": ("R&D", "division"),
    f"{ENTERPRISE}:department": ("Platform", "department"),
}


def okta_user(email: str, **changed: str) -> dict[str, Any]:
    """A create or PUT as Okta's SCIM 2.0 template sends it: the profile in full,
    its second email of type home, and "" for an empty field."""
    value = {path: changed.get(path, v) for path, (v, _) in OKTA_PROFILE.items()}
    return {
        "schemas": [USER, ENTERPRISE],
        "userName": email,
        "name": {
            "givenName": value["name.givenName"],
            "familyName": value["name.familyName"],
            "middleName": value["name.middleName"],
            "honorificPrefix": value["name.honorificPrefix"],
            "honorificSuffix": value["name.honorificSuffix"],
        },
        "emails": [
            {"primary": True, "value": email, "type": "work"},
            {"primary": False, "value": value["secondEmail"], "type": "home"},
        ],
        "displayName": f"{value['name.givenName']} {value['name.familyName']}",
        "nickName": value["nickName"],
        "title": value["title"],
        "userType": value["userType"],
        "preferredLanguage": value["preferredLanguage"],
        "locale": value["locale"],
        "timezone": value["timezone"],
        "profileUrl": value["profileUrl"],
        "phoneNumbers": [
            {"primary": True, "value": value['phoneNumbers[type eq "work"].value'], "type": "work"},
            {"value": value['phoneNumbers[type eq "mobile"].value'], "type": "mobile"},
        ],
        "addresses": [
            {
                "primary": True,
                "type": "work",
                "streetAddress": value['addresses[type eq "work"].streetAddress'],
                "locality": value['addresses[type eq "work"].locality'],
                "region": value['addresses[type eq "work"].region'],
                "postalCode": value['addresses[type eq "work"].postalCode'],
                "country": value['addresses[type eq "work"].country'],
            }
        ],
        ENTERPRISE: {
            "employeeNumber": value[f"{ENTERPRISE}:employeeNumber"],
            "costCenter": value[f"{ENTERPRISE}:costCenter"],
            "organization": value[f"{ENTERPRISE}:organization"],
            "division": value[f"{ENTERPRISE}:division"],
            "department": value[f"{ENTERPRISE}:department"],
        },
        "active": True,
        "groups": [],
    }


def okta_at(user: dict[str, Any], path: str) -> Any:
    if path == "secondEmail":
        return next((e["value"] for e in user["emails"] if e.get("type") == "home"), None)
    return at(user, path)


async def test_okta_template_profile_round_trips_through_create_and_put(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post("/scim/v2/Users", json=okta_user("kai@example.com"))
    assert created.status_code == 201, created.text
    path = f"/scim/v2/Users/{created.json()['id']}"
    changed = {p: f"{v} 2" for p, (v, _) in OKTA_PROFILE.items()}
    changed["secondEmail"] = "kai2@home.example"
    replaced = await client.put(path, json=okta_user("kai@example.com", **changed))
    assert replaced.status_code == 200, replaced.text
    read = (await client.get(path)).json()
    assert read == replaced.json()
    attributes = await native_attributes(client, "kai@example.com")
    for scim_path, (_, name) in OKTA_PROFILE.items():
        assert okta_at(read, scim_path) == changed[scim_path], scim_path
        assert attributes[name] == changed[scim_path], name
    # Okta sends "" for a field emptied in its profile: the attribute goes.
    emptied = okta_user("kai@example.com", **{**changed, "nickName": "", "secondEmail": ""})
    read = (await client.put(path, json=emptied)).json()
    assert "nickName" not in read
    assert read["emails"] == [{"value": "kai@example.com"}]
    attributes = await native_attributes(client, "kai@example.com")
    assert "nick_name" not in attributes
    assert "email.home" not in attributes


# Entra's SCIM Validator's user checks: each default attribute added, replaced
# and removed by PATCH, the user read after each.
@pytest.mark.parametrize(("path", "value", "name"), ENTRA_DEFAULTS)
async def test_entra_validator_adds_replaces_and_removes_each_default_attribute(
    client: httpx.AsyncClient, path: str, value: str, name: str
) -> None:
    body = entra_user("ada@contoso.com")
    created = await client.post("/scim/v2/Users", json=body)
    user = created.json()
    assert at(user, path) == value
    found = await client.get("/scim/v2/Users", params={"filter": f'{path} eq "{value}"'})
    assert [u["id"] for u in found.json()["Resources"]] == [user["id"]], found.text
    location = f"/scim/v2/Users/{user['id']}"
    for op, given in (("Remove", None), ("Add", f"{value} A"), ("Replace", f"{value} R")):
        operation = {"op": op, "path": path} | ({} if given is None else {"value": given})
        response = await client.patch(location, json=patch(operation))
        assert response.status_code == 200, response.text
        read = (await client.get(location)).json()
        assert at(read, path) == given, (op, path)
        assert (await native_attributes(client, "ada@contoso.com")).get(name) == given


async def test_entra_validator_creates_filters_refuses_a_duplicate_and_deletes(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post("/scim/v2/Users", json=entra_user("ada@contoso.com"))
    user = created.json()
    for matching in (
        'userName eq "ada@contoso.com"',
        'externalId eq "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef"',
        'emails[type eq "work"].value eq "ada@contoso.com"',
        'displayName eq "Ada Lovelace"',
    ):
        found = await client.get("/scim/v2/Users", params={"filter": matching})
        assert found.json()["Resources"] == [user], matching
    duplicate = await client.post("/scim/v2/Users", json=entra_user("ADA@contoso.com"))
    assert duplicate.status_code == 409
    assert duplicate.json()["scimType"] == "uniqueness"
    location = f"/scim/v2/Users/{user['id']}"
    assert (await client.delete(location)).status_code == 204
    assert (await client.get(location)).status_code == 404
