"""The one table of SCIM attributes kept as a user's attributes, by path and name."""

from __future__ import annotations

from typing import NamedTuple

USER_URN = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE_URN = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
# Multi-valued attributes whose entries the table tells apart by type.
MULTI_VALUED = {"emails", "phoneNumbers", "addresses"}


class Mapped(NamedTuple):
    """A SCIM attribute kept as the user's attribute `name`: `attribute`, its `sub`
    attribute if any, of the entry of this `type` for a multi-valued one."""

    name: str
    attribute: str
    sub: str | None = None
    type: str | None = None
    schema: str = USER_URN
    description: str = ""

    @property
    def path(self) -> str:
        """The path as a provider writes it, e.g. phoneNumbers[type eq "mobile"].value."""
        found = self.attribute
        if self.type is not None:
            found += f'[type eq "{self.type}"]'
        if self.sub is not None:
            found += f".{self.sub}"
        return found if self.schema == USER_URN else f"{self.schema}:{found}"

    @property
    def key(self) -> Key:
        return key_of(self.schema, self.attribute, self.type, self.sub)


# (schema, attribute, type, sub attribute), in lower case: how a path finds its entry.
Key = tuple[str, str, str | None, str | None]


def key_of(schema: str, attribute: str, type: str | None, sub: str | None) -> Key:
    return (
        schema.lower(),
        attribute.lower(),
        None if type is None else type.lower(),
        None if sub is None else sub.lower(),
    )


def address(sub: str, name: str) -> Mapped:
    return Mapped(
        f"address.work.{name}", "addresses", sub, "work", description=f"Work address: {sub}"
    )


def enterprise(attribute: str, name: str, description: str, sub: str | None = None) -> Mapped:
    return Mapped(name, attribute, sub, schema=ENTERPRISE_URN, description=description)


# The attributes the user's own columns hold (userName its email, displayName its
# name, externalId, active its status) and those the service sets, by lower-case
# name: never kept as attributes.
COLUMNS = frozenset({"username", "displayname", "externalid", "active", "id", "meta", "schemas"})
# Attributes a column holds a part of: name.formatted is the user's name, the
# work email its email; the table keeps their other parts.
SHARED = frozenset({"name", "emails"})
# Kept apart from the user's email and name only when they differ from them.
WORK_EMAIL = "email.work"
FORMATTED_NAME = "formatted_name"
# Writes, reads, filters, /Schemas and the docs' table (checked by a test) all
# read TABLE: an attribute added here is kept, returned, filtered and advertised.
# Entra ID's default mappings for a non-gallery app, the rest of the enterprise
# extension, and Okta's SCIM template profile. userName, displayName, active
# and externalId are the user's own COLUMNS, not attributes; a work email or
# name.formatted is kept only when it differs from userName or displayName
# (Entra's mail and user principal name often do).
TABLE = [
    Mapped(FORMATTED_NAME, "name", "formatted", description="name.formatted, when not displayName"),
    Mapped("given_name", "name", "givenName", description="Given name"),
    Mapped("family_name", "name", "familyName", description="Family name"),
    Mapped("middle_name", "name", "middleName", description="Middle name"),
    Mapped("honorific_prefix", "name", "honorificPrefix", description="Honorific prefix"),
    Mapped("honorific_suffix", "name", "honorificSuffix", description="Honorific suffix"),
    Mapped("nick_name", "nickName", description="Nickname"),
    Mapped("title", "title", description="Job title"),
    Mapped("user_type", "userType", description="User type, e.g. Employee"),
    Mapped("preferred_language", "preferredLanguage", description="Preferred language, e.g. en-US"),
    Mapped("locale", "locale", description="Locale, e.g. en-US"),
    Mapped("timezone", "timezone", description="Time zone, e.g. America/Los_Angeles"),
    Mapped("profile_url", "profileUrl", description="Profile URL"),
    Mapped(WORK_EMAIL, "emails", "value", "work", description="The work email, when not userName"),
    Mapped("email.home", "emails", "value", "home", description="A second email, of type home"),
    Mapped("email.other", "emails", "value", "other", description="A second email, of type other"),
    Mapped("phone.work", "phoneNumbers", "value", "work", description="Work phone"),
    Mapped("phone.mobile", "phoneNumbers", "value", "mobile", description="Mobile phone"),
    Mapped("phone.fax", "phoneNumbers", "value", "fax", description="Fax"),
    address("formatted", "formatted"),
    address("streetAddress", "street_address"),
    address("locality", "locality"),
    address("region", "region"),
    address("postalCode", "postal_code"),
    address("country", "country"),
    enterprise("employeeNumber", "employee_number", "Employee number"),
    enterprise("costCenter", "cost_center", "Cost center"),
    enterprise("organization", "organization", "Organization"),
    enterprise("division", "division", "Division"),
    enterprise("department", "department", "Department"),
    enterprise("manager", "manager", "The manager's id, as the provider knows it", "value"),
]
BY_KEY = {mapped.key: mapped for mapped in TABLE}
# Each entry's key beside its name, made once: writes scan it for every path they
# touch, and building the keys anew was a tenth of a create's time (py-spy).
KEYED = [(mapped.key, mapped.name) for mapped in TABLE]
NAMES = frozenset(mapped.name for mapped in TABLE)
# The types each multi-valued attribute keeps, by its lower-case name.
TYPES = {
    attribute.lower(): [m.type for m in TABLE if m.attribute == attribute and m.type]
    for attribute in MULTI_VALUED
}
