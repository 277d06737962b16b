"""A user's attributes as SCIM paths and values, by the table of service/scim/mapping.py."""

from __future__ import annotations

import logging
import re
from typing import Any, NamedTuple

from service import metrics
from service.schemas import ATTRIBUTE_VALUE_RULE, EMAIL_RULE, is_attribute_value, is_email
from service.scim import filters
from service.scim.errors import ScimError
from service.scim.mapping import (
    BY_KEY,
    COLUMNS,
    ENTERPRISE_URN,
    TABLE,
    TYPES,
    USER_URN,
    Key,
    Mapped,
    key_of,
)

logger = logging.getLogger("service")

# A path after its schema's URN: an attribute, a value filter, a sub-attribute.
_path = re.compile(
    r"""(?P<attribute>[a-z][a-z0-9_$-]*)
    (?:\[(?P<filter>(?:[^\[\]"]|"(?:[^"\\]|\\.)*")+)\])?
    (?:\.(?P<sub>[a-z][a-z0-9_$-]*))?""",
    re.VERBOSE | re.DOTALL,
)
_urn = re.compile(r"urn:[a-z0-9][a-z0-9-]*:\S+")
_typed = re.compile(r'\s*type\s+eq\s+"([^"\\]*)"\s*')
# The table's single-valued attributes, as (schema, attribute) in lower case:
# a value filter on one is malformed, not unknown.
SINGLE_VALUED = {mapped.key[:2] for mapped in TABLE if mapped.type is None}
# The extension's attributes, which no core attribute's name clashes with:
# Entra may send them unqualified ("manager").
EXTENSION_ONLY = {m.key[1] for m in TABLE if m.schema == ENTERPRISE_URN} - {
    m.key[1] for m in TABLE if m.schema == USER_URN
}
# Keys of a multi-valued entry that say which entry it is, not what it holds.
ENTRY_KEYS = {"type", "primary", "display"}
# The paths that are a bare attribute name, (schema, attribute) by their lower
# case: most of what a body or a PATCH names, read without the regular
# expressions (py-spy: parse was a fifth of a create's translation).
PLAIN: dict[str, tuple[str, str | None]] = {
    ENTERPRISE_URN.lower(): (ENTERPRISE_URN, None),
    **{name: (USER_URN, name) for name in COLUMNS},
    **{m.key[1]: (m.schema if m.key[1] in EXTENSION_ONLY else USER_URN, m.key[1]) for m in TABLE},
}
ANY_TYPE = "*"  # in UNDER's keys: a path without a value filter


def entry_subs() -> dict[tuple[str, str], dict[str, Mapped]]:
    """The table's entries of each multi-valued attribute's entry of a type, by the
    lower-case (attribute, type), and then by sub-attribute."""
    found: dict[tuple[str, str], dict[str, Mapped]] = {}
    for mapped in TABLE:
        _, attribute, type, sub = mapped.key
        if type is not None and sub is not None:
            found.setdefault((attribute, type), {})[sub] = mapped
    return found


# A path into the table: the lower-case (schema, attribute or None, type of its
# value filter or ANY_TYPE, sub-attribute or None).
Under = tuple[str, str | None, str, str | None]


def names_under() -> dict[Under, tuple[str, ...]]:
    """The names at or below each path into the table."""
    found: dict[Under, tuple[str, ...]] = {}
    for mapped in TABLE:
        schema, attribute, type, sub = mapped.key
        keys: set[Under] = {(schema, None, ANY_TYPE, None)}
        for path_type in {ANY_TYPE, type or ANY_TYPE}:
            keys |= {(schema, attribute, path_type, None), (schema, attribute, path_type, sub)}
        for key in keys:
            found[key] = (*found.get(key, ()), mapped.name)
    return found


# Made once: a create scans them for each of its attributes (py-spy).
ENTRY_SUBS = entry_subs()
UNDER = names_under()
# The table's entries a body names in one step, made once so that a plain text
# value is set without a Path: by a bare name's lower case (title, and the
# extension's own, as PLAIN reads them); by the extension's attribute; by the
# lower-case (schema, attribute) of a complex one (name, manager), then its sub.
SIMPLE = {
    m.key[1]: m
    for m in TABLE
    if m.sub is None and m.type is None and PLAIN[m.key[1]][0] == m.schema
}
EXTENSION = {m.key[1]: m for m in TABLE if m.schema == ENTERPRISE_URN and m.sub is None}
SUBS = {
    (schema, attribute): {m.key[3] or "": m for m in TABLE if m.key[:2] == (schema, attribute)}
    for schema, attribute, type, sub in BY_KEY
    if type is None and sub is not None
}
# Skipped paths: a label each for the first MAX_SKIPPED_LABELS a worker meets,
# then "other", so that a provider sending made-up paths cannot grow the
# metrics without bound; a warning once per path, for the first
# MAX_SKIPPED_WARNINGS paths (a set of seen paths that stays bounded too).
MAX_SKIPPED_LABELS = 20
MAX_SKIPPED_WARNINGS = 1000
MAX_PATH_SHOWN = 200  # characters of a skipped path in its log line and label
_skipped_labels: set[str] = set()
_warned: set[str] = set()


class Path(NamedTuple):
    """A parsed attribute path, in lower case but `text`, which is as given."""

    schema: str  # USER_URN, ENTERPRISE_URN, or another schema's URN
    attribute: str | None  # None: the whole of an extension
    filter: str | None
    sub: str | None
    text: str

    def key(self, type: str | None) -> Key:
        assert self.attribute is not None
        return key_of(self.schema, self.attribute, type, self.sub)


def parse(text: str) -> Path:
    """The path, or invalidPath when it is malformed (an unknown one is not)."""
    plain = PLAIN.get(text.lower())
    if plain is not None:
        return Path(*plain, None, None, text)
    lowered = text.strip().lower()
    schema, rest = USER_URN, lowered
    if lowered == ENTERPRISE_URN.lower():
        return Path(ENTERPRISE_URN, None, None, None, text)
    for urn in (USER_URN, ENTERPRISE_URN):
        if lowered.startswith(urn.lower() + ":"):
            schema, rest = urn, lowered[len(urn) + 1 :]
            break
    else:
        if lowered.startswith("urn:"):
            if not _urn.fullmatch(lowered):
                raise ScimError(400, f"{text!r} is not an attribute path", "invalidPath")
            return Path(lowered, None, None, None, text)  # another schema's: unknown
    match = _path.fullmatch(rest)
    if match is None:
        raise ScimError(400, f"{text!r} is not an attribute path", "invalidPath")
    attribute = match["attribute"]
    if rest == lowered and attribute in EXTENSION_ONLY:
        schema = ENTERPRISE_URN  # Entra's unqualified manager, department, ...
    found = Path(schema, attribute, match["filter"], match["sub"], text)
    if found.filter is not None and (schema.lower(), attribute) in SINGLE_VALUED:
        detail = f"path {text!r}: {attribute} is not multi-valued, and takes no [filter]"
        raise ScimError(400, detail, "invalidPath")
    if found.filter is not None and typed(found) is None:
        try:
            filters.check(found.filter, attribute)
        except filters.InvalidFilter as exc:
            raise ScimError(400, f"path {text!r}: {exc}", "invalidPath") from None
    return found


def typed(path: Path) -> str | None:
    """The type a value filter `[type eq "..."]` names; None for another filter."""
    match = None if path.filter is None else _typed.fullmatch(path.filter)
    return None if match is None else match[1]


def skip(path: str) -> None:
    """An attribute outside the published schema, left aside: logged once, counted."""
    path = path[:MAX_PATH_SHOWN]
    if path not in _warned and len(_warned) < MAX_SKIPPED_WARNINGS:
        _warned.add(path)
        logger.warning("SCIM attribute %r is not kept: skipped", path)
    if path not in _skipped_labels and len(_skipped_labels) < MAX_SKIPPED_LABELS:
        _skipped_labels.add(path)
    metrics.SCIM_SKIPPED.labels(path if path in _skipped_labels else "other").inc()


def text_of(path: str, value: Any) -> str | None:
    """A kept attribute's value: a string, or None to remove it. A one-item list
    and {"value": ...} stand for their value; null and "" are no value."""
    if type(value) is str and value:  # most values: four isinstance tests fewer
        if not is_attribute_value(value):
            raise ScimError(400, f"{path} takes {ATTRIBUTE_VALUE_RULE}", "invalidValue")
        return value
    if isinstance(value, list) and len(value) <= 1:
        value = value[0] if value else None
    if isinstance(value, dict) and "value" in value:
        value = value["value"]
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ScimError(400, f"{path} takes a string", "invalidValue")
    if not is_attribute_value(value):
        raise ScimError(400, f"{path} takes {ATTRIBUTE_VALUE_RULE}", "invalidValue")
    return value


def under(path: Path) -> tuple[str, ...]:
    """The names of the table's attributes at or below a path."""
    type = ANY_TYPE if path.filter is None else typed(path)
    if type is None:
        return ()  # a filter other than on type: no entry the table keeps
    return UNDER.get((path.schema.lower(), path.attribute, type, path.sub), ())


class Changes:
    """What a write does to the kept attributes: names cleared, then names set
    (to a value) or removed (None)."""

    def __init__(self, skipped: list[str]) -> None:
        self.cleared: set[str] = set()
        self.given: dict[str, str | None] = {}
        self.skipped = skipped

    def applied(self, attributes: dict[str, str]) -> dict[str, str]:
        found = dict(attributes)
        self.apply(found)
        return found

    def apply(self, attributes: dict[str, str]) -> None:
        """Make the changes to `attributes`, in place."""
        for name in self.cleared:
            attributes.pop(name, None)
        for name, value in self.given.items():
            if value is None:
                attributes.pop(name, None)
            else:
                attributes[name] = value

    def assign(self, path: Path, value: Any, replace: bool) -> None:
        """Set what `value` gives at `path`, as add or replace (RFC 7644 §3.5.2):
        replacing a multi-valued attribute replaces every entry."""
        attribute = path.attribute
        if attribute is None:
            if path.schema != ENTERPRISE_URN:
                self.skip(path.text, value)
            elif not isinstance(value, dict):
                raise ScimError(400, f"{path.text} takes an object", "invalidValue")
            else:
                for key, item in value.items():
                    if self.set_text(EXTENSION.get(key.lower()), item):
                        continue
                    inner = Path(ENTERPRISE_URN, key.lower(), None, None, f"{path.text}:{key}")
                    self.assign(inner, item, replace)
            return
        if attribute in TYPES and path.schema == USER_URN:
            self.assign_entries(path, value, replace)
            return
        mapped = BY_KEY.get(path.key(None))
        if mapped is not None:
            self.given[mapped.name] = text_of(path.text, value)
            return
        if path.sub is None and under(path):  # a complex attribute: name, manager
            if isinstance(value, dict):
                subs = SUBS.get((path.schema.lower(), attribute), {})
                for key, item in value.items():
                    if self.set_text(subs.get(key.lower()), item):
                        continue
                    sub = Path(path.schema, attribute, None, key.lower(), f"{path.text}.{key}")
                    self.assign(sub, item, replace)
                return
            manager = BY_KEY.get(key_of(path.schema, attribute, None, "value"))
            if manager is not None:  # a bare id for manager.value
                self.given[manager.name] = text_of(path.text, value)
                return
            raise ScimError(400, f"{path.text} takes an object", "invalidValue")
        self.skip(path.text, value)

    def assign_entries(self, path: Path, value: Any, replace: bool) -> None:
        """emails, phoneNumbers or addresses: entries told apart by their type."""
        assert path.attribute is not None
        if path.filter is None and path.sub is not None:
            self.skip(path.text, value)  # phoneNumbers.value: which entry is not said
            return
        if path.filter is not None:
            type = typed(path)
            if type is None or type not in TYPES[path.attribute]:
                self.skip(path.text, value)
            elif path.sub is not None:
                mapped = ENTRY_SUBS[path.attribute, type].get(path.sub)
                self.set_entry_value(path.text, mapped, value)
            else:
                self.set_entry(path.text, path.attribute, type, value)
            return
        entries = value if isinstance(value, list) else [value]
        if replace:
            self.cleared.update(under(path))
        for entry in entries:
            if not isinstance(entry, dict):
                raise ScimError(400, f"{path.text} takes objects", "invalidValue")
            given = entry.get("type")
            type = given.lower() if isinstance(given, str) else ""
            # The entry as a path names it: phoneNumbers[type eq "mobile"].
            text = f'{path.text}[type eq "{type}"]'
            if type in TYPES[path.attribute]:
                self.set_entry(text, path.attribute, type, entry)
            else:
                self.skip(text, entry)

    def set_entry(self, text: str, attribute: str, type: str, entry: Any) -> None:
        """The entry of `attribute` of this `type`, which `text` names."""
        if isinstance(entry, list) and len(entry) == 1:
            entry = entry[0]
        if not isinstance(entry, dict):
            raise ScimError(400, f"{text} takes an object", "invalidValue")
        subs = ENTRY_SUBS[attribute, type]
        for key, item in entry.items():
            sub = key.lower()
            mapped = subs.get(sub)
            if sub not in ENTRY_KEYS and not self.set_text(mapped, item):
                self.set_entry_value(f"{text}.{key}", mapped, item)

    def set_text(self, mapped: Mapped | None, value: Any) -> bool:
        """Set a kept attribute to a value of plain text, as most are; else set
        nothing and False: the caller takes the general way, which spells the
        path for its messages (that spelling was a third of a create's
        translation, timeit)."""
        if mapped is None or not isinstance(value, str) or not value:
            return False
        if not is_attribute_value(value) or (mapped.attribute == "emails" and not is_email(value)):
            return False
        self.given[mapped.name] = value
        return True

    def set_entry_value(self, text: str, mapped: Mapped | None, value: Any) -> None:
        """The value of an entry's sub-attribute, which `text` names; skipped when
        the table does not keep it (`mapped` is None)."""
        if mapped is None:
            self.skip(text, value)
        else:
            found = text_of(text, value)
            if found is not None and mapped.attribute == "emails" and not is_email(found):
                raise ScimError(400, f"{text} must be {EMAIL_RULE}", "invalidValue")
            self.given[mapped.name] = found

    def remove(self, path: Path) -> None:
        names = under(path)
        if names:
            self.given.update(dict.fromkeys(names))
        else:
            self.skipped.append(path.text)

    def skip(self, path: str, value: Any) -> None:
        if value not in (None, "", [], {}):  # nothing lost in skipping no value
            self.skipped.append(path)


# Where scim_values puts each of the table's attributes, made once: (name, the
# extension's URN or None, attribute, sub-attribute, type). Reading Mapped's
# fields and scanning a list for the entry of a type were four fifths of a
# response's build (cProfile).
PLACES = [
    (m.name, None if m.schema == USER_URN else m.schema, m.attribute, m.sub, m.type) for m in TABLE
]


def scim_values(attributes: dict[str, str]) -> dict[str, Any]:
    """The kept attributes in SCIM's shapes: by attribute name, the extension
    under its URN; empty when the user has none."""
    found: dict[str, Any] = {}
    entries: dict[tuple[str, str], dict[str, str]] = {}  # by attribute and type
    for name, schema, attribute, sub, type in PLACES:
        value = attributes.get(name)
        if value is None:
            continue
        holder = found if schema is None else found.setdefault(schema, {})
        if type is not None:
            entry = entries.get((attribute, type))
            if entry is None:
                entry = entries[attribute, type] = {"type": type}
                holder.setdefault(attribute, []).append(entry)
            entry[sub or "value"] = value
        elif sub is not None:
            holder.setdefault(attribute, {})[sub] = value
        else:
            holder[attribute] = value
    return found
