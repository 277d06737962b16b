"""The Prefer request header (RFC 7240): which preferences a request states."""

from __future__ import annotations

import re

# RFC 7240 §2: preference = token [ BWS "=" BWS word ] *( OWS ";" [ OWS parameter ] ),
# word = token / quoted-string. Only the name and value are read; parameters are not.
# Possessive quantifiers (*+, ++): no backtracking, so a long header costs linear time.
_PREFERENCE = re.compile(
    r"""\s*+(?P<name>[!#$%&'*+.^_`|~0-9A-Za-z-]++)\s*+"""
    r"""(?:=\s*+(?:"(?P<quoted>(?:[^"\\]++|\\.)*+)"|(?P<token>[!#$%&'*+.^_`|~0-9A-Za-z-]*+)))?+"""
    r"""\s*+(?:;|$)"""
)
_QUOTED_PAIR = re.compile(r"\\(.)")
# One element of the comma-separated list: commas inside quoted strings are
# part of it. (urllib.request.parse_http_list drops the backslash of \".)
_ELEMENT = re.compile(r'(?:[^,"]++|"(?:[^"\\]++|\\.)*+"?+)++')


def preferences(headers: list[str]) -> dict[str, str]:
    """Each preference's value ("" for none) by its name in lower case, from every Prefer header.

    A preference stated more than once counts only the first time (§2);
    one that does not parse is ignored, as one the server does not know is.
    """
    found: dict[str, str] = {}
    for header in headers:
        for element in _ELEMENT.finditer(header):
            match = _PREFERENCE.match(element[0])
            if match is None:
                continue
            quoted = match["quoted"]
            value = _QUOTED_PAIR.sub(r"\1", quoted) if quoted is not None else match["token"]
            found.setdefault(match["name"].lower(), value or "")
    return found
