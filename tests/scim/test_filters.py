"""SCIM filters as SQL: the grammar, the attributes kept, and what is refused."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.scim.filters import MAX_DEPTH, InvalidFilter, Sql, to_sql


def test_username_eq_compares_emails_in_any_letter_case_through_the_email_index() -> None:
    assert to_sql('userName eq "Ann@Example.COM"') == Sql(
        "(lower(email) = $1)", ["ann@example.com"]
    )


def test_keywords_operators_and_attribute_names_take_any_letter_case() -> None:
    assert to_sql('USERNAME EQ "a@x.io" AND Active Eq TRUE') == to_sql(
        'userName eq "a@x.io" and active eq true'
    )


def test_the_full_urn_names_the_same_attribute() -> None:
    urn = "urn:ietf:params:scim:schemas:core:2.0:User:userName"
    assert to_sql(f'{urn} eq "a@x.io"') == to_sql('userName eq "a@x.io"')


def test_and_binds_tighter_than_or_and_parentheses_and_not_group() -> None:
    text, _ = to_sql('externalId eq "a" or externalId eq "b" and active eq true')
    assert text == "((external_id = $1) OR ((external_id = $2) AND ((status = 'active') = true)))"
    text, _ = to_sql('not (externalId eq "a" or displayName co "b")')
    assert text.startswith("NOT coalesce((")


def test_externalid_is_case_exact_and_displayname_is_not() -> None:
    assert to_sql('externalId eq "AbC"').arguments == ["AbC"]
    assert to_sql('displayName eq "Ann B"') == Sql('(lower(name COLLATE "C") = $1)', ["ann b"])


def test_co_sw_ew_match_their_text_literally_and_use_the_trigram_index() -> None:
    text, arguments = to_sql(r'userName co "50%_off\\"')
    assert arguments == [r"%50\%\_off\\%", r"%50\%\_off\\%"]
    assert "LIKE $1" in text
    assert "LIKE $2" in text
    assert to_sql('displayName sw "an"').arguments[0] == "an%"
    assert to_sql('displayName ew "an"').arguments[0] == "%an"
    assert to_sql('externalId co "x"') == Sql("(external_id LIKE $1)", ["%x%"])


def test_value_paths_and_sub_attributes_of_the_one_work_email() -> None:
    assert to_sql('emails[type eq "work"]').text == "true"
    assert to_sql('emails[type eq "work" and value co "x"]').arguments == ["%x%"]
    assert to_sql('emails[type eq "other"]').text == "(attributes ?| $1::text[])"
    assert to_sql("emails[primary eq true]").text == "true"
    # The work email: the email where no email.work is kept, or email.work.
    assert to_sql('emails.value eq "A@x.io"').arguments[:2] == ["a@x.io", '{"email.work":"A@x.io"}']
    assert to_sql('emails.value eq "A@x.io"') == to_sql('emails[type eq "work"].value eq "A@x.io"')


def test_pr_ne_and_null() -> None:
    assert to_sql("externalId pr").text == "(external_id IS NOT NULL)"
    assert to_sql('externalId ne "a"').text == "(external_id IS DISTINCT FROM $1)"
    assert to_sql("externalId eq null").text == "(external_id IS NULL)"


def test_dates_compare_as_instants_with_an_offset() -> None:
    text, arguments = to_sql('meta.lastModified gt "2026-11-01T00:00:00Z"')
    assert text == "(updated_at > $1)"
    assert arguments == [datetime(2026, 11, 1, tzinfo=UTC)]


def test_an_id_that_is_no_uuid_matches_no_user() -> None:
    assert to_sql('id eq "nope"').text == "false"
    user = "0b278014-2e0f-400a-ac4e-e70fd3863a13"
    assert to_sql(f'id eq "{user}"') == Sql("(public_id = $1)", [UUID(user)])


def test_values_are_numbered_from_the_first_given() -> None:
    assert to_sql('userName eq "a@x.io"', first=4).text == "(lower(email) = $4)"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "userName",
        "userName eq",
        'userName eq "a" and',
        'password eq "x"',  # an attribute the service does not keep
        'name.middle eq "Ann"',
        'userName xx "a"',
        'userName eq "a" extra',
        '(userName eq "a"',
        'emails[type eq "work"',
        'displayName[value eq "a"]',
        "active eq 1",
        "active gt true",
        'meta.created gt "yesterday"',
        'meta.created gt "2026-11-01T00:00:00"',
        'meta.created co "2026"',
        'id gt "a"',
        'userName eq "unterminated',
        "userName eq 'single'",
        "userName gt null",
        "not userName pr",
        'userName eq "a" # comment',
        "(" * (MAX_DEPTH + 1) + "userName pr" + ")" * (MAX_DEPTH + 1),
        'userName eq "' + "a" * 5000 + '"',
    ],
)
def test_a_filter_that_cannot_be_applied_is_refused(text: str) -> None:
    with pytest.raises(InvalidFilter):
        to_sql(text)


@given(st.text(max_size=200))
def test_any_text_is_a_condition_or_refused_never_an_error(text: str) -> None:
    try:
        sql = to_sql(text)
    except InvalidFilter:
        return
    # Each value it holds is a numbered argument, and it names no other.
    named = {int(number) for number in re.findall(r"\$(\d+)", sql.text)}
    assert named == set(range(1, len(sql.arguments) + 1))
