"""SCIM filters (RFC 7644 §3.4.2.2) on the attributes the service keeps, as SQL on users."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import NamedTuple
from uuid import UUID

import msgspec

from service.group_queries import HAS_MEMBER, HAS_MEMBERS
from service.queries import HAS_ATTRIBUTES, MATCHES, encode_attributes, like_escaped
from service.schemas import TIMESTAMP_RANGE, email_key, in_utc
from service.scim.mapping import (
    BY_KEY,
    ENTERPRISE_URN,
    FORMATTED_NAME,
    KEYED,
    TABLE,
    TYPES,
    USER_URN,
    WORK_EMAIL,
    Mapped,
    key_of,
)

# How deep parentheses, not and value paths may nest: a bound on the parser's
# recursion, far above what any provider sends.
MAX_DEPTH = 32
MAX_LENGTH = 4096
COMPARISONS = {"eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"}
ORDERINGS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
# Quotes a value may be mistyped with: SCIM's strings are JSON's, in '"'.
OTHER_QUOTES = "'\u2018\u2019\u201c\u201d`"

_token = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\\x00-\x1f]|\\.)*")
      | (?P<punct>[()\[\]])
      | (?P<word>[A-Za-z0-9$_:.+-]+)
    )""",
    re.VERBOSE,
)
_decode_string = msgspec.json.Decoder(str)
_decode_instant = msgspec.json.Decoder(datetime)


class InvalidFilter(Exception):
    """A filter this service cannot apply: SCIM's 400 with scimType invalidFilter."""


class Token(NamedTuple):
    kind: str  # "string", "punct", "word" or "end"
    text: str


class Sql(NamedTuple):
    """A condition on users, its values numbered from $first."""

    text: str
    arguments: list[object]


def tokens(text: str) -> list[Token]:
    if len(text) > MAX_LENGTH:
        raise InvalidFilter(f"A filter may be at most {MAX_LENGTH} characters")
    found: list[Token] = []
    position = 0
    while position < len(text):
        if text[position:].isspace():
            break
        match = _token.match(text, position)
        if match is None:
            at = len(text) - len(text[position:].lstrip())  # past the spaces the token skips
            character = text[at]
            if character in OTHER_QUOTES:
                raise InvalidFilter(
                    f'Values are quoted with " (a straight double quote): {character!r} '
                    f"at {at + 1} is not one"
                )
            raise InvalidFilter(f"Unexpected character at {at + 1}: {character!r}")
        kind = match.lastgroup
        assert kind is not None
        found.append(Token(kind, match[kind]))
        position = match.end()
    return [*found, Token("end", "")]


class Attribute(NamedTuple):
    """A filterable attribute: how it reads in SQL and what values it compares with."""

    column: str  # the SQL of its value; folded to lower case when `folded`
    kind: str  # "text", "id", "bool", "instant", or "member" (a group's)
    # caseExact false (RFC 7643): the column's SQL folds ASCII letters, as
    # lower() does under the "C" collation, and so is the value compared.
    folded: bool = False
    # Part of the text the trigram index serves (queries.SEARCH_TEXT).
    searched: bool = False
    # The user's attribute of this name: eq is attributes @> {name: value}, which
    # the users_attributes index serves, as for GET /users?attribute.<name>=.
    contained: str | None = None
    # The user's attribute of this name holds the value when set, else the column
    # `alone` does: eq is either served by its index (the work email, name.formatted).
    kept_over: str | None = None
    alone: str = ""


def kept(mapped: Mapped) -> Attribute:
    return Attribute(f"(attributes ->> '{mapped.name}')", "text", contained=mapped.name)


def kept_over(name: str, column: str) -> Attribute:
    """A value the attribute `name` holds when it is set, else the text `column`."""
    over = f"lower(coalesce(attributes ->> '{name}', {column}))"
    return Attribute(over, "text", folded=True, kept_over=name, alone=f"lower({column})")


# By lower-case path. userName is the email; emails.value the work email, the
# attribute email.work when set, else the email; name.formatted likewise.
EMAIL = Attribute("lower(email)", "text", folded=True, searched=True)
NAME = Attribute('lower(name COLLATE "C")', "text", folded=True, searched=True)
WORK = kept_over(WORK_EMAIL, "email")
ATTRIBUTES = {
    "id": Attribute("public_id", "id"),
    "username": EMAIL,
    "emails": WORK,
    "emails.value": WORK,
    "externalid": Attribute("external_id", "text"),
    "displayname": NAME,
    "active": Attribute("status = 'active'", "bool"),
    "meta.created": Attribute("created_at", "instant"),
    "meta.lastmodified": Attribute("updated_at", "instant"),
    # The table's single-valued attributes, by path: title, name.givenname,
    # urn:...:enterprise:2.0:user:department, its manager and manager.value.
    **{mapped.path.lower(): kept(mapped) for mapped in TABLE if mapped.type is None},
    "name.formatted": kept_over(FORMATTED_NAME, 'name COLLATE "C"'),
    **{
        mapped.path.lower().removesuffix(".value"): kept(mapped)
        for mapped in TABLE
        if mapped.type is None and mapped.sub == "value"
    },
}
# The extension's attributes unqualified too, as Entra may send them: no core
# attribute's name clashes with one.
ATTRIBUTES.update(
    {
        path.removeprefix(ENTERPRISE_URN.lower() + ":"): attribute
        for path, attribute in ATTRIBUTES.items()
        if path.startswith(ENTERPRISE_URN.lower() + ":")
    }
)
# The service's one email is of type work, and primary: these sub-attributes
# compare with constants.
EMAIL_CONSTANTS = {"emails.type": "work", "emails.primary": True}


class Parser:
    """Recursive descent over the grammar of RFC 7644 §3.4.2.2: or binds
    loosest, then and, then not; attribute names and keywords in any case."""

    def __init__(
        self,
        text: str,
        first: int,
        *,
        any_attribute: bool = False,
        attributes: dict[str, Attribute] | None = None,
        known: str | None = None,
    ) -> None:
        self.tokens = tokens(text)
        # The attributes filters take, by lower-case path, and the words that list
        # them: a user's by default, a group's for /Groups.
        self.attributes = ATTRIBUTES if attributes is None else attributes
        self.known = KNOWN if known is None else known
        # Check the syntax alone: an attribute the service does not keep is no error.
        self.any_attribute = any_attribute
        self.at = 0
        self.arguments: list[object] = []
        self.first = first
        self.depth = 0

    def parse(self) -> Sql:
        condition = self.disjunction(prefix="")
        if self.peek().kind != "end":
            raise InvalidFilter(f"Unexpected {self.peek().text!r}")
        return Sql(condition, self.arguments)

    def peek(self) -> Token:
        return self.tokens[self.at]

    def take(self) -> Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def keyword(self, *words: str) -> str | None:
        token = self.peek()
        if token.kind == "word" and token.text.lower() in words:
            self.at += 1
            return token.text.lower()
        return None

    def expect(self, punct: str) -> None:
        token = self.take()
        if token != Token("punct", punct):
            raise InvalidFilter(f"Expected {punct!r}, found {token.text or 'the end'!r}")

    def nested(self, parse: Callable[[], str]) -> str:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise InvalidFilter(f"A filter may nest at most {MAX_DEPTH} deep")
        try:
            return parse()
        finally:
            self.depth -= 1

    def disjunction(self, prefix: str) -> str:
        terms = [self.conjunction(prefix)]
        while self.keyword("or"):
            terms.append(self.conjunction(prefix))
        return terms[0] if len(terms) == 1 else "(" + " OR ".join(terms) + ")"

    def conjunction(self, prefix: str) -> str:
        terms = [self.negation(prefix)]
        while self.keyword("and"):
            terms.append(self.negation(prefix))
        return terms[0] if len(terms) == 1 else "(" + " AND ".join(terms) + ")"

    def negation(self, prefix: str) -> str:
        if self.keyword("not"):
            self.expect("(")
            inner = self.nested(lambda: self.disjunction(prefix))
            self.expect(")")
            return f"NOT coalesce({inner}, false)"
        if self.peek() == Token("punct", "("):
            self.take()
            inner = self.nested(lambda: self.disjunction(prefix))
            self.expect(")")
            return inner
        return self.comparison(prefix)

    def comparison(self, prefix: str) -> str:
        token = self.take()
        if token.kind != "word" or token.text.lower() in ("and", "or", "not"):
            raise InvalidFilter(f"Expected an attribute, found {token.text or 'the end'!r}")
        path = token.text.lower()
        if path.startswith(USER_URN.lower() + ":"):
            path = path[len(USER_URN) + 1 :]
        path = prefix + path
        if self.peek() == Token("punct", "["):
            # A value path: emails[type eq "work" and value co "x"], and the
            # table's typed entries: phoneNumbers[type eq "mobile"].value eq "x".
            if prefix:
                raise InvalidFilter(
                    f"{token.text!r}[…] inside emails[…]: value filters do not nest"
                )
            if self.attributes is not ATTRIBUTES:
                if path != "members" or prefix:
                    raise InvalidFilter(
                        f"{token.text!r} takes no [filter]: filters take {self.known}"
                    )
                self.take()  # members[value eq "<id>"]: as members.value eq "<id>"
                inner = self.nested(lambda: self.disjunction("members."))
                self.expect("]")
                return inner
            if path not in TYPES:
                raise InvalidFilter(
                    f"{token.text!r} takes no [filter]: only emails, phoneNumbers and "
                    "addresses do, as the multi-valued attributes here"
                )
            self.take()
            entry = self.entry_type(path)
            if entry is not None:
                if not (self.peek().kind == "word" and self.peek().text.startswith(".")):
                    if (path, entry) == ("emails", "work"):
                        return "true"  # every user has a work email
                    # emails[type eq "home"]: the user has such an entry.
                    names = [name for key, name in KEYED if key[1:3] == (path, entry)]
                    return f"(attributes ?| {self.argument(names)}::text[])"
                sub = self.sub_attribute(token.text)
                mapped = BY_KEY.get(key_of(USER_URN, path, entry, sub))
                if mapped is None:
                    raise InvalidFilter(f"Unknown attribute {token.text}[...].{sub}")
                if mapped.name == WORK_EMAIL:
                    return self.operation(mapped.path, WORK)
                return self.operation(mapped.path, kept(mapped))
            if path != "emails":
                raise InvalidFilter(
                    f'{token.text!r} takes [type eq "..."], of {", ".join(TYPES[path])}'
                )
            inner = self.nested(lambda: self.disjunction("emails."))
            self.expect("]")
            if self.peek().kind == "word" and self.peek().text.startswith("."):
                sub = self.sub_attribute(token.text)
                return f"({inner} AND {self.operation(token.text, f'emails.{sub}')})"
            return inner
        return self.operation(token.text, path)

    def entry_type(self, path: str) -> str | None:
        """The type of `[type eq "mobile"]`, taken, when it names an entry the table
        keeps; else None, and nothing taken."""
        ahead = self.tokens[self.at : self.at + 4]
        if len(ahead) < 4 or [t.kind for t in ahead] != ["word", "word", "string", "punct"]:
            return None
        if ahead[0].text.lower() != "type" or ahead[1].text.lower() != "eq" or ahead[3].text != "]":
            return None
        try:
            entry = _decode_string.decode(ahead[2].text).lower()
        except msgspec.DecodeError:
            return None
        if entry not in TYPES[path]:
            return None
        self.at += 4
        return entry

    def sub_attribute(self, name: str) -> str:
        token = self.take()
        if token.kind != "word" or not token.text.startswith(".") or len(token.text) < 2:
            raise InvalidFilter(f"Expected .value or another sub-attribute after {name}[...]")
        return token.text[1:].lower()

    def operation(self, name: str, path: str | Attribute) -> str:
        """The operator and value after an attribute: `path` by name, or the attribute."""
        token = Token("word", name)
        operator = self.take()
        name = operator.text.lower()
        if operator.kind != "word" or (name not in COMPARISONS and name != "pr"):
            raise InvalidFilter(f"Expected an operator after {token.text!r}")
        if isinstance(path, Attribute):
            attribute: Attribute | None = path
        elif path in EMAIL_CONSTANTS and self.attributes is ATTRIBUTES:
            return self.constant(token.text, name, EMAIL_CONSTANTS[path])
        else:
            attribute = self.attributes.get(path)
        if attribute is None and self.any_attribute:
            if name != "pr":
                self.value()
            return "true"
        if attribute is None:
            raise InvalidFilter(f"Unknown attribute {token.text!r}: filters take " + self.known)
        if attribute.kind == "member":
            return self.member(token.text, name)
        if name == "pr":
            # Every user has each of them but externalId, which may be null.
            return f"({attribute.column} IS NOT NULL)"
        return self.compare(token.text, attribute, name, self.value())

    def member(self, name: str, operator: str) -> str:
        """A group's members: pr, or eq a user's id, as Entra asks whether a user is
        still a member (id eq "<group>" and members eq "<user>"). One probe of the
        memberships' primary key."""
        if operator == "pr":
            return HAS_MEMBERS
        value = self.value()
        if operator != "eq" or not isinstance(value, str):
            raise InvalidFilter(f'{name} takes eq "<a user\'s id>", or pr')
        try:
            user = UUID(value)
        except ValueError:
            return "false"  # no user has that id
        return HAS_MEMBER.format(self.argument(user))

    def value(self) -> object:
        token = self.take()
        if token.kind == "string":
            try:
                text = _decode_string.decode(token.text)
            except msgspec.DecodeError:
                raise InvalidFilter(f"A malformed string: {token.text}") from None
            if "\x00" in text:  # no stored text holds one: PostgreSQL's text cannot
                raise InvalidFilter("A value may not hold the NUL character")
            return text
        text = token.text.lower()
        if token.kind == "word" and text in ("true", "false"):
            return text == "true"
        if token.kind == "word" and text == "null":
            return None
        if token.kind == "word" and re.fullmatch(r"-?\d+(\.\d+)?([eE][-+]?\d+)?", text):
            return float(text)
        raise InvalidFilter(f"Expected a value, found {token.text or 'the end'!r}")

    def argument(self, value: object) -> str:
        self.arguments.append(value)
        return f"${self.first + len(self.arguments) - 1}"

    def constant(self, name: str, operator: str, held: object) -> str:
        """A comparison with a value every user holds: true or false for all."""
        if operator == "pr":
            return "true"
        value = self.value()
        if operator not in ("eq", "ne") or type(value) is not type(held):
            raise InvalidFilter(f"{name} takes eq or ne with {msgspec.json.encode(held).decode()}")
        if isinstance(value, str) and isinstance(held, str):
            value, held = value.lower(), held.lower()
        return "true" if (value == held) == (operator == "eq") else "false"

    def compare(self, name: str, attribute: Attribute, operator: str, value: object) -> str:
        column = attribute.column
        if value is None:
            if operator not in ("eq", "ne"):
                raise InvalidFilter(f"null compares only with eq and ne, not {operator}")
            return f"({column} IS {'' if operator == 'eq' else 'NOT '}NULL)"
        if attribute.kind == "bool":
            if not isinstance(value, bool) or operator not in ("eq", "ne"):
                raise InvalidFilter(f"{name} takes eq or ne with true or false")
            return f"(({column}) = {'true' if (value == (operator == 'eq')) else 'false'})"
        if not isinstance(value, str):
            raise InvalidFilter(f"{name} compares with a string")
        if attribute.kept_over is not None and operator == "eq":
            # Either index finds the user: the column's where the attribute is not set.
            alone = f"{attribute.alone} = {self.argument(email_key(value))}"
            held = self.argument(encode_attributes({attribute.kept_over: value}))
            over = self.argument(attribute.kept_over)
            has = HAS_ATTRIBUTES.format(held.removeprefix("$"))
            return f"(({alone} AND NOT attributes ? {over}) OR ({has}))"
        if attribute.contained is not None and operator == "eq":
            found = self.argument(encode_attributes({attribute.contained: value}))
            return "(" + HAS_ATTRIBUTES.format(found.removeprefix("$")) + ")"
        if attribute.kind == "id":
            if operator not in ("eq", "ne"):
                raise InvalidFilter(f"{name} takes eq or ne")
            try:
                user_id = UUID(value)
            except ValueError:
                return "false" if operator == "eq" else "true"  # no user has that id
            return f"({column} {'=' if operator == 'eq' else '<>'} {self.argument(user_id)})"
        if attribute.kind == "instant":
            if operator in ("co", "sw", "ew"):
                raise InvalidFilter(f"{name} takes eq, ne, gt, ge, lt or le")
            try:
                instant = _decode_instant.decode(msgspec.json.encode(value))
            except msgspec.ValidationError:
                raise InvalidFilter(f"{name} compares with an RFC 3339 date-time") from None
            if instant.tzinfo is None:
                raise InvalidFilter(f"{name} compares with a date-time that has an offset")
            if in_utc(instant) is None:
                raise InvalidFilter(
                    f"{name} compares with an instant {TIMESTAMP_RANGE}; "
                    f"{msgspec.json.encode(value).decode()} is not"
                )
            sql = {"eq": "=", "ne": "<>", **ORDERINGS}[operator]
            return f"({column} {sql} {self.argument(instant)})"
        return self.compare_text(attribute, operator, value)

    def compare_text(self, attribute: Attribute, operator: str, value: str) -> str:
        column = attribute.column
        if attribute.folded:
            value = email_key(value)
        if operator in ("co", "sw", "ew"):
            literal = like_escaped(value)
            pattern = {"co": f"%{literal}%", "sw": f"{literal}%", "ew": f"%{literal}"}[operator]
            found = f"({column} LIKE {self.argument(pattern)})"
            if attribute.searched:
                # The same text anywhere in the indexed email-and-name: what lets
                # the trigram index find the few users to check.
                found = f"({MATCHES.format(self.first + len(self.arguments))} AND {found})"
                self.arguments.append(f"%{literal}%")
            return found
        if operator == "ne":
            # ne holds for a user without the attribute too (externalId).
            return f"({column} IS DISTINCT FROM {self.argument(value)})"
        sql = {"eq": "=", **ORDERINGS}[operator]
        return f"({column} {sql} {self.argument(value)})"


KNOWN = (
    "id, userName, externalId, displayName, name.formatted, emails (value, type, primary), "
    "active, meta.created, meta.lastModified, and the other attributes /Schemas lists "
    '(a typed entry as phoneNumbers[type eq "mobile"].value)'
)


def check(text: str, attribute: str) -> None:
    """InvalidFilter unless `text` is a well-formed value filter of `attribute`, as
    inside attribute[...]; its attributes may be any, kept or not."""
    parser = Parser(text, 1, any_attribute=True)
    parser.disjunction(prefix=f"{attribute}.")
    if parser.peek().kind != "end":
        raise InvalidFilter(f"Unexpected {parser.peek().text!r}")


def to_sql(text: str, first: int = 1) -> Sql:
    """The condition a filter names, its values numbered from $first; InvalidFilter when
    it is malformed or names an attribute the service does not keep."""
    return Parser(text, first).parse()


# A group's attributes, by lower-case path, as SQL on groups: displayName is
# its name, unique regardless of letter case, which groups_name_lower_key serves.
GROUP_ATTRIBUTES = {
    "id": Attribute("public_id", "id"),
    "displayname": Attribute("lower(name)", "text", folded=True),
    "externalid": Attribute("external_id", "text"),
    "meta.created": Attribute("created_at", "instant"),
    "meta.lastmodified": Attribute("updated_at", "instant"),
    "members": Attribute("", "member"),
    "members.value": Attribute("", "member"),
}
GROUP_KNOWN = (
    'id, displayName, externalId, meta.created, meta.lastModified, and members eq "<user id>" '
    '(or members.value, members[value eq "<user id>"])'
)


def group_sql(text: str, first: int = 1) -> Sql:
    """The condition on groups a filter names, as to_sql's on users."""
    return Parser(text, first, attributes=GROUP_ATTRIBUTES, known=GROUP_KNOWN).parse()
