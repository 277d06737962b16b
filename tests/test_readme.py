"""The curl examples of README.md and docs/*.md, run against a real service.

The README stays a front door of at most 300 lines, and every relative link in
README.md, docs/*.md and bench/*.md leads to a file that exists and, with a
`#fragment`, to a heading of that file, as GitHub makes its anchors.

An example is a ```sh block that calls curl on localhost:8000, followed at once
by a fenced block, not another ```sh one, showing its output. Each document's
examples run in order, in one shell (so a variable one sets is there for the
next), on an empty table, against a service started without settings beyond
DATABASE_URL, or with those the document names in comments of their own lines,
`<!-- examples run with API_CLIENTS=[...] -->` (one variable a comment). A
document naming JWT_ISSUER gets a stand-in identity provider (bench/issuer.py)
for it, whose local URL takes the named one's place in the setting and in the
commands: its token endpoint grants any client the scopes asked for.
The shown output is checked by shape:

- a response (from `curl -i`) is its status line, the headers shown (each must
  be there, among others), a blank line and the body; several may follow;
- a body, with or without a head, is compared as JSON when it is JSON (so it
  may be laid out for reading), else line by line;
- `<uuid>`, `<time>` (RFC 3339) and `<n>` (a whole number) stand for values
  that change from run to run, and `…` for any text.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from bench.issuer import Issuer
from tests.conftest import EMPTY_TABLES, ROOT, Service, connect, stop_services

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKED_DOCUMENTS = [*DOCUMENTS, *sorted((ROOT / "bench").glob("*.md"))]
README_MAX_LINES = 300

PLACEHOLDERS = {
    "<uuid>": r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    "<time>": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)",
    "<n>": r"\d+",
    "…": r".+",
}
PLACEHOLDER = re.compile("(" + "|".join(map(re.escape, PLACEHOLDERS)) + ")")
FENCE = re.compile(r"^(?P<indent> *)```(?P<info>\S*)\s*$")
HEADING = re.compile(r"^#{1,6}\s+(?P<text>.+?)\s*#*\s*$")
# [text](target "title"), images included; code spans are removed first.
INLINE_LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(?P<target>\S+)")
CODE_SPAN = re.compile(r"(`+).+?\1")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)
STATUS_LINE = re.compile(r"^HTTP/\d(?:\.\d)? \d{3}\b", re.MULTILINE)
# A setting the service a document's examples run against is started with.
SETTING = re.compile(r"^<!-- examples run with (?P<name>[A-Z_]+)=(?P<value>.*) -->$", re.MULTILINE)
# Printed after each example, to cut the shell's output into the examples'.
END = "~~ end of example ~~"


@dataclass(frozen=True)
class Block:
    info: str
    text: str
    line: int  # of the opening fence, from 1
    end: int  # of the closing fence


@dataclass(frozen=True)
class Example:
    document: Path
    command: Block
    shown: Block | None  # None: the command has no output block after it

    @property
    def name(self) -> str:
        return f"{self.document.name}:{self.command.line}"


def blocks(markdown: str) -> Iterator[Block]:
    """The fenced blocks of `markdown`, their lines without the fence's indent."""
    opening: re.Match[str] | None = None
    start, body = 0, list[str]()
    for number, line in enumerate(markdown.splitlines(), start=1):
        fence = FENCE.match(line)
        if opening is None:
            if fence:
                opening, start, body = fence, number, []
        elif fence and not fence["info"]:
            text = "".join(f"{b.removeprefix(opening['indent'])}\n" for b in body)
            yield Block(opening["info"], text, start, number)
            opening = None
        else:
            body.append(line)


def prose(markdown: str) -> Iterator[tuple[int, str]]:
    """(number, line) of each line of `markdown` outside its fenced blocks."""
    inside = False
    for number, line in enumerate(markdown.splitlines(), start=1):
        fence = FENCE.match(line)
        if fence and (not inside or not fence["info"]):
            inside = not inside
        elif not inside:
            yield number, line


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces
    to hyphens (`## Follow the changes` is `#follow-the-changes`)."""
    text = INLINE_LINK.sub(lambda link: link[0][1 : link[0].index("]")], heading)
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(document: Path) -> set[str]:
    """Every heading's anchor in `document`; a repeated one gets -1, -2, …"""
    found: set[str] = set()
    for _, line in prose(document.read_text()):
        heading = HEADING.match(line)
        if heading:
            base = anchor(heading["text"])
            name, count = base, 0
            while name in found:
                count += 1
                name = f"{base}-{count}"
            found.add(name)
    return found


def broken_links(document: Path) -> list[str]:
    """Each relative link of `document` to a missing file or heading, with its line."""
    broken = []
    for number, line in prose(document.read_text()):
        text = CODE_SPAN.sub("", line)
        targets = [m["target"] for m in INLINE_LINK.finditer(text)]
        targets += [m["target"] for m in REFERENCE_LINK.finditer(text)]
        for target in targets:
            if EXTERNAL.match(target):
                continue
            path, _, fragment = target.partition("#")
            linked = (document.parent / unquote(path)).resolve() if path else document
            if not linked.exists():
                broken.append(f"{document.name}:{number}: {target}: no such file")
            elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
                broken.append(f"{document.name}:{number}: {target}: no such heading")
    return broken


def examples(document: Path) -> list[Example]:
    markdown = document.read_text()
    lines = markdown.splitlines()
    found = list(blocks(markdown))
    result = []
    for index, block in enumerate(found):
        after = found[index + 1] if index + 1 < len(found) else None
        if block.info != "sh" or "curl" not in block.text or "localhost:8000" not in block.text:
            continue
        between = lines[block.end : after.line - 1] if after else ["(the end)"]
        adjacent = after is not None and not any(line.strip() for line in between)
        shows = adjacent and after is not None and after.info != "sh"  # not the next command
        result.append(Example(document, block, after if shows else None))
    return result


EXAMPLES = [example for document in DOCUMENTS for example in examples(document)]


def pattern(shown: str) -> re.Pattern[str]:
    parts = PLACEHOLDER.split(shown)  # odd indices are the placeholders
    regex = "".join(PLACEHOLDERS[p] if i % 2 else re.escape(p) for i, p in enumerate(parts))
    return re.compile(regex)


def responses(output: str) -> list[tuple[list[str], str]]:
    """(head lines, body) for each response in `output`: a head is its status
    line and headers, and output before any status line is a body of its own."""
    output = output.replace("\r\n", "\n")
    starts = [match.start() for match in STATUS_LINE.finditer(output)]
    if not starts or starts[0] > 0:
        starts.insert(0, 0)
    parts = []
    for start, end in zip(starts, [*starts[1:], len(output)], strict=True):
        part = output[start:end]
        if STATUS_LINE.match(part):
            head, _, body = part.partition("\n\n")
            parts.append((head.splitlines(), body))
        else:
            parts.append(([], part))
    return parts


def json_differences(shown: object, actual: object, path: str) -> list[str]:
    if isinstance(shown, dict) and isinstance(actual, dict):
        differences = []
        if shown.keys() != actual.keys():
            differences.append(f"{path}: shown keys {sorted(shown)}, got {sorted(actual)}")
        for key in shown.keys() & actual.keys():
            differences += json_differences(shown[key], actual[key], f"{path}.{key}")
        return differences
    if isinstance(shown, list) and isinstance(actual, list):
        if len(shown) != len(actual):
            return [f"{path}: shown {len(shown)} items, got {len(actual)}"]
        return [
            difference
            for index, (s, a) in enumerate(zip(shown, actual, strict=True))
            for difference in json_differences(s, a, f"{path}[{index}]")
        ]
    if isinstance(shown, str) and isinstance(actual, str):
        matched = pattern(shown).fullmatch(actual) is not None
    else:
        matched = type(shown) is type(actual) and shown == actual
    return [] if matched else [f"{path}: shown {shown!r}, got {actual!r}"]


def body_differences(shown: str, actual: str) -> list[str]:
    if not shown.strip():
        return [f"body: shown none, got {actual.strip()!r}"] if actual.strip() else []
    try:
        expected = json.loads(shown)
    except ValueError:
        pass
    else:
        try:
            return json_differences(expected, json.loads(actual), "$")
        except ValueError:
            return [f"body: shown JSON, got {actual.strip()!r}"]
    shown_lines = shown.rstrip().splitlines()
    actual_lines = [line.rstrip() for line in actual.rstrip().splitlines()]
    if len(shown_lines) != len(actual_lines):
        return [f"output: shown {len(shown_lines)} lines, got {len(actual_lines)}"]
    return [
        f"line {number}: shown {s!r}, got {a!r}"
        for number, (s, a) in enumerate(zip(shown_lines, actual_lines, strict=True), start=1)
        if not pattern(s.rstrip()).fullmatch(a)
    ]


def differences(shown: str, actual: str) -> list[str]:
    """How `actual`, a command's output, differs from the output `shown` for it."""
    expected, got = responses(shown), responses(actual)
    if [bool(head) for head, _ in expected] != [bool(head) for head, _ in got]:
        return [f"shown {len(expected)} responses or bodies, got {len(got)}"]
    found = []
    for (shown_head, shown_body), (head, body) in zip(expected, got, strict=True):
        if shown_head:
            if not pattern(shown_head[0]).fullmatch(head[0]):
                found.append(f"status: shown {shown_head[0]!r}, got {head[0]!r}")
            headers = [line.partition(":")[::2] for line in head[1:]]
            for line in shown_head[1:]:
                name, _, value = line.partition(":")
                values = [v.strip() for n, v in headers if n.lower() == name.strip().lower()]
                if not any(pattern(value.strip()).fullmatch(v) for v in values):
                    found.append(f"header: shown {line!r}, got {values or 'none'}")
        found += body_differences(shown_body, body)
    return found


def run_examples(
    folder: Path, url: str, listed: list[Example], stand_ins: dict[str, str]
) -> list[str]:
    """The output of each example, run in order in one shell with the real curl;
    `stand_ins` maps URLs in the commands to those that stand in for them."""
    # No one's ~/.curlrc, a bound on each request, and a newline after each
    # response, so that one body does not run into the next response's head.
    (folder / ".curlrc").write_text('max-time = 10\nwrite-out = "\\n"\n')
    stand_ins = {"http://localhost:8000": url, "localhost:8000": url, **stand_ins}
    commands = []
    for example in listed:
        command = example.command.text
        for documented, local in stand_ins.items():
            command = command.replace(documented, local)
        commands.append(command + f"\nprintf '\\n%s\\n' '{END}'\n")
    script = "".join(commands)
    env = {"PATH": os.environ["PATH"], "CURL_HOME": str(folder), "LC_ALL": "C.UTF-8"}
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", script],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    outputs = done.stdout.split(f"\n{END}\n")
    assert len(outputs) == len(listed) + 1, done.stdout + done.stderr
    return outputs[:-1]


async def empty_tables(url: str) -> None:
    conn = await connect(url)
    try:
        await conn.execute(EMPTY_TABLES)
    finally:
        await conn.close()


def keys_fetched(service: Service) -> None:
    """Wait until the service holds its identity provider's keys, fetched after start."""
    deadline = time.monotonic() + 30
    while httpx.get(f"{service.url}/readyz").json()["signing_keys"]["state"] != "held":
        assert time.monotonic() < deadline, service.output()
        time.sleep(0.1)


def settings_of(document: Path) -> dict[str, str]:
    return dict(SETTING.findall(document.read_text()))


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[list[str]]:
    """Each example's output, each document's examples from an empty table."""
    folder = tmp_path_factory.mktemp("readme")
    # One service for the documents that need no settings, one for each that does.
    services: dict[tuple[tuple[str, str], ...], Service] = {}
    issuers: list[Issuer] = []
    try:
        found: list[str] = []
        for document in DOCUMENTS:
            listed = [example for example in EXAMPLES if example.document == document]
            if listed:
                documented = settings_of(document)
                stand_ins = {}
                if "JWT_ISSUER" in documented:
                    issuer = Issuer(audience=documented["JWT_AUDIENCE"]).start()
                    issuers.append(issuer)
                    stand_ins[documented["JWT_ISSUER"]] = issuer.url
                settings = tuple(
                    sorted(
                        (name, stand_ins.get(value, value)) for name, value in documented.items()
                    )
                )
                if settings not in services:
                    services[settings] = Service(
                        folder, {"DATABASE_URL": database_url, **dict(settings)}
                    )
                    services[settings].wait_ready()
                    if stand_ins:
                        keys_fetched(services[settings])
                asyncio.run(empty_tables(database_url))
                found += run_examples(folder, services[settings].url, listed, stand_ins)
        yield found
    finally:
        stop_services(list(services.values()))
        for issuer in issuers:
            issuer.stop()


@pytest.mark.parametrize("index", range(len(EXAMPLES)), ids=[e.name for e in EXAMPLES])
def test_example_shows_what_the_service_answers(outputs: list[str], index: int) -> None:
    example = EXAMPLES[index]
    assert example.shown is not None, f"{example.name}: no output block right after the command"
    found = differences(example.shown.text, outputs[index])
    assert not found, "\n".join([*found, "got:", outputs[index]])


def test_the_readme_has_examples_to_check() -> None:
    assert [example for example in EXAMPLES if example.document.name == "README.md"]


def test_the_readme_is_a_front_door_of_at_most_300_lines() -> None:
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move reference to docs/"


@pytest.mark.parametrize(
    "document", LINKED_DOCUMENTS, ids=[str(d.relative_to(ROOT)) for d in LINKED_DOCUMENTS]
)
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(document: Path) -> None:
    broken = broken_links(document)
    assert not broken, "\n".join(broken)


def test_a_link_to_a_missing_file_or_heading_is_reported(tmp_path: Path) -> None:
    (tmp_path / "OTHER.md").write_text("# Other\n\n## Follow the changes (SCIM 2.0)\n")
    document = tmp_path / "README.md"
    document.write_text(
        "# Title\n\n"
        "[fine](OTHER.md#follow-the-changes-scim-20), [here](#title), [web](https://x.test/#n)\n"
        "`[code](NOWHERE.md)`\n\n"
        "```sh\n[in a block](NOWHERE.md)\n```\n"
        "[gone](GONE.md) and [moved](OTHER.md#follow-the-changes)\n"
        "[here too](#nothing)\n"
    )
    assert broken_links(document) == [
        "README.md:9: GONE.md: no such file",
        "README.md:9: OTHER.md#follow-the-changes: no such heading",
        "README.md:10: #nothing: no such heading",
    ]


def test_an_etag_is_shown_as_a_version_and_a_dashed_uuid() -> None:
    etag = 'etag: "2-6cbb22b0-953d-4065-8718-b7b0ddfe7544"'
    assert not differences('etag: "<n>-<uuid>"', etag)
    assert differences('etag: "<n>-<uuid>"', 'etag: "2-6cbb22b0953d40658718b7b0ddfe7544"')


def test_a_shown_header_or_status_that_differs_is_reported() -> None:
    actual = 'HTTP/1.1 201 Created\r\netag: "1-x"\r\n\r\n{"inserted": 2}\n'
    assert not differences('HTTP/1.1 201 Created\netag: "1-…"\n\n{"inserted": 2}', actual)
    assert differences("HTTP/1.1 200 OK\n\n{}", actual) == [
        "status: shown 'HTTP/1.1 200 OK', got 'HTTP/1.1 201 Created'",
        "$: shown keys [], got ['inserted']",
    ]
    assert differences('HTTP/1.1 201 Created\nlocation: /users/x\n\n{"inserted": 2}', actual)


def test_a_json_body_is_compared_by_value_whatever_its_layout() -> None:
    actual = '{"id":"6cbb22b0-953d-4065-8718-b7b0ddfe7544","created_at":"2026-12-03T13:47:45.1Z"}'
    assert not differences('{"id": "<uuid>",\n "created_at": "<time>"}', actual)
    assert differences('{"id": "<uuid>", "created_at": "<time>", "name": "Ann"}', actual)
