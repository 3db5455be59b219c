"""The series a PromQL expression reads, as Prometheus itself parses it.

A real Prometheus server (Debian's `prometheus`, 2.42 here) parses every expression through its HTTP
API (`/api/v1/format_query`, Prometheus >= 2.38): an expression it rejects fails the check, and the
canonical text it returns (its parser's own rendering of the syntax tree) is what the selectors are
read from. Prometheus 2.42 has no endpoint that returns the tree itself (`/api/v1/parse_query` is
newer), but in the canonical text every `{` opens a selector's matchers, strings are double-quoted,
grouping labels follow `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` in parentheses, and
`or` has the lowest precedence of all binary operators, so one pass over its tokens finds every
selector and which side of each `or` it is on.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_TOKEN = re.compile(
    r"""\s*(?:
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    |(?P<range>\[[^\]]*\])
    |(?P<number>(?:0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)(?:[smhdwy]|ms)?(?:[0-9]+(?:[smhdwy]|ms))*)
    |(?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    |(?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>(){},=@])
    )""",
    re.VERBOSE,
)
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "unless", "bool", "offset", "atan2", "start", "end"}


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # =, !=, =~, !~
    value: str

    def matches(self, value: str) -> bool:
        """Prometheus's semantics: regexes are anchored at both ends; a missing label is ''."""
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        found = re.fullmatch(self.value, value) is not None
        return found if self.op == "=~" else not found


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[Matcher, ...]

    def __str__(self) -> str:
        inner = ", ".join(f'{m.label}{m.op}"{m.value}"' for m in self.matchers)
        return f"{self.metric}{{{inner}}}" if inner else self.metric


@dataclass(frozen=True)
class Reads:
    """What an expression reads: every selector it needs, except that either side of an `or` will do.
    `alternatives` holds, for each `or` in the expression, the selectors of each of its sides."""

    selectors: tuple[Selector, ...]
    alternatives: tuple[tuple[Reads, ...], ...]

    def is_empty(self) -> bool:
        """Reads no series (`vector(0)`, `time()`): a default, not a source."""
        return not self.all_selectors()

    def all_selectors(self) -> list[Selector]:
        return [*self.selectors, *(s for sides in self.alternatives for side in sides for s in side.all_selectors())]


def _unquote(token: str) -> str:
    if token[0] == "`":
        return token[1:-1]
    return json.loads('"' + token[1:-1].replace('\\"', '"').replace('"', '\\"') + '"')


class _Scanner:
    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        position = 0
        while position < len(text.rstrip()):
            match = _TOKEN.match(text, position)
            if match is None or match.lastgroup is None:
                raise ValueError(f"cannot read {text[position:]!r} in {text!r}")
            self.tokens.append((match.lastgroup, match.group(match.lastgroup)))
            position = match.end()
        self.index = 0

    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        at = self.index + offset
        return self.tokens[at] if at < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def expect(self, value: str) -> None:
        kind, got = self.take()
        if got != value:
            raise ValueError(f"expected {value!r}, got {got!r} ({kind})")

    def skip_group(self) -> None:
        """A parenthesised label list after `by`, `on`, ...: labels, not series."""
        self.expect("(")
        while self.take()[1] != ")":
            pass

    def matchers(self) -> tuple[Matcher, ...]:
        self.expect("{")
        found: list[Matcher] = []
        while (token := self.take())[1] != "}":
            if token[1] == ",":
                continue
            label = _unquote(token[1]) if token[0] == "string" else token[1]
            op = self.take()[1]
            found.append(Matcher(label, op, _unquote(self.take()[1])))
        return tuple(found)

    def expression(self, closing: str | None) -> Reads:
        """Tokens up to `closing` (or the end): split at `or` (the loosest binary operator)."""
        sides: list[tuple[list[Selector], list[tuple[Reads, ...]]]] = [([], [])]
        while (token := self.peek()) is not None and token[1] != closing:
            kind, value = token
            selectors, alternatives = sides[-1]
            if kind == "ident" and value == "or":
                self.take()
                sides.append(([], []))
            elif kind == "ident" and value in _GROUPING:
                self.take()
                self.skip_group()
            elif kind == "ident" and value in _KEYWORDS:
                self.take()
            elif kind == "ident" and (nxt := self.peek(1)) is not None and (nxt[1] == "(" or nxt[1] in _GROUPING):
                # A function or an aggregation: its arguments are expressions (an aggregation's
                # `by (...)` may stand before or after them).
                self.take()
                if (after := self.peek()) is not None and after[1] in _GROUPING:
                    self.take()
                    self.skip_group()
                self._arguments(selectors, alternatives)
            elif kind == "ident":
                self.take()
                matchers = self.matchers() if (nxt := self.peek()) is not None and nxt[1] == "{" else ()
                selectors.append(Selector(value, matchers))
            elif value == "{":
                matchers = self.matchers()
                name = next((m.value for m in matchers if m.label == "__name__" and m.op == "="), "")
                selectors.append(Selector(name, tuple(m for m in matchers if m.label != "__name__")))
            elif value == "(":
                self._arguments(selectors, alternatives)
            else:
                self.take()
        if len(sides) == 1:
            return Reads(tuple(sides[0][0]), tuple(sides[0][1]))
        return Reads((), (tuple(Reads(tuple(s), tuple(a)) for s, a in sides),))

    def _arguments(self, selectors: list[Selector], alternatives: list[tuple[Reads, ...]]) -> None:
        self.expect("(")
        while True:
            inner = self.expression_until_comma()
            selectors.extend(inner.selectors)
            alternatives.extend(inner.alternatives)
            if self.take()[1] == ")":
                return

    def expression_until_comma(self) -> Reads:
        """One argument: up to the `,` or `)` at this depth."""
        start = self.index
        depth = 0
        while (token := self.peek()) is not None:
            if token[1] in "({" and token[0] == "op":
                depth += 1
            elif token[1] in ")}" and token[0] == "op":
                if depth == 0:
                    break
                depth -= 1
            elif token[1] == "," and depth == 0:
                break
            self.index += 1
        end = self.index
        sub = _Scanner.__new__(_Scanner)
        sub.tokens, sub.index = self.tokens[start:end], 0
        return sub.expression(None)


def reads(canonical: str) -> Reads:
    """The selectors in Prometheus's canonical rendering of an expression."""
    return _Scanner(canonical).expression(None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PromQL:
    """A running Prometheus that parses expressions for us."""

    def __init__(self, base: str) -> None:
        self.base = base

    def canonical(self, expression: str) -> str:
        """Prometheus's own rendering of the expression; ValueError with its message if it is not PromQL."""
        url = f"{self.base}/api/v1/format_query?" + urllib.parse.urlencode({"query": expression})
        try:
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (our own loopback server)
                return str(json.load(response)["data"])
        except urllib.error.HTTPError as error:
            raise ValueError(f"Prometheus rejects {expression!r}: {json.load(error)['error']}") from error

    def reads(self, expression: str) -> Reads:
        return reads(self.canonical(expression))


@contextmanager
def prometheus_parser(folder: Path) -> Iterator[PromQL]:
    """A Prometheus server on loopback with an empty configuration, only for its parser."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise FileNotFoundError("prometheus (Debian package `prometheus`, installed by scripts/test.py)")
    config = folder / "prometheus.yml"
    config.write_text("global: {}\n")
    port = _free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    parser = PromQL(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                parser.canonical("up")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("Prometheus did not start") from None
                time.sleep(0.2)
        yield parser
    finally:
        process.terminate()
        process.wait(timeout=30)
