"""Mutations of seed inputs, driven by bytes hypothesis draws (a "program").

Each input is a seed and a short program: every op reads its choices from the program (what to
do, where, with what), so hypothesis explores the choices and a crashing input is saved as the
bytes it produced. Two kinds:

* :func:`mutate_bytes`: byte-level edits that keep close to the format (insert a delimiter or a
  token of the format's dictionary, delete or duplicate a span, repeat or swap lines, splice in
  another seed, truncate);
* :func:`mutate_tree`: edits of a parsed YAML document (a value replaced by an odd one, a key
  dropped or renamed, an item repeated), written back as YAML, so most inputs get past the YAML
  parser and reach the models, checks and compilers behind it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import yaml

__all__ = ["MAX_INPUT", "Program", "mutate_bytes", "mutate_tree"]

#: the largest input a mutation makes (the largest seeds are cut to this size as well): big
#: enough for any message a practice sends, small enough that an input's time is its own
MAX_INPUT = 64 * 1024

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class Program:
    """The choices of one mutation; reads 0 once exhausted."""

    __slots__ = ("data", "i")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.i = 0

    def byte(self) -> int:
        i = self.i
        self.i = i + 1
        return self.data[i] if i < len(self.data) else 0

    def below(self, n: int) -> int:
        """A number in ``range(n)`` (0 when ``n`` is 0)."""
        if n <= 1:
            return 0
        v = self.byte()
        if n > 256:
            v = (v << 16) | (self.byte() << 8) | self.byte()
        return v % n

    def pick(self, items: Sequence[Any]) -> Any:
        return items[self.below(len(items))]

    @property
    def done(self) -> bool:
        return self.i >= len(self.data)


def _lines(data: bytes) -> list[bytes]:
    return data.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")


def mutate_bytes(
    seed: bytes, prog: Program, tokens: Sequence[bytes], others: Sequence[bytes] = ()
) -> bytes:
    """Apply up to 8 edits of ``seed`` as ``prog`` chooses; ``tokens`` is the format's
    dictionary (delimiters, segment IDs, escapes), ``others`` seeds to splice from."""
    data = bytearray(seed)
    for _ in range(1 + prog.below(8)):
        if prog.done:
            break
        op = prog.below(12)
        n = len(data)
        pos = prog.below(n + 1)
        if op == 0:  # overwrite one byte
            if n:
                data[min(pos, n - 1)] = prog.byte()
        elif op in (1, 2):  # insert a token of the format
            data[pos:pos] = prog.pick(tokens)
        elif op == 3:  # delete a span
            del data[pos : pos + 1 + prog.below(64)]
        elif op == 4:  # copy a span elsewhere
            span = bytes(data[pos : pos + 1 + prog.below(256)])
            at = prog.below(len(data) + 1)
            data[at:at] = span
        elif op == 5:  # truncate
            del data[pos:]
        elif op == 6:  # a long run of one byte or token (long fields, big counts)
            unit = prog.pick(tokens) if prog.byte() & 1 else bytes([prog.byte()])
            data[pos:pos] = unit * (1 + prog.below(4096) // max(1, len(unit)))
        elif op == 7:  # repeat a line (segment) many times
            lines = _lines(bytes(data))
            k = prog.below(len(lines))
            lines[k:k] = [lines[k]] * (1 + prog.below(300))
            data = bytearray(b"\r".join(lines))
        elif op == 8:  # swap two lines
            lines = _lines(bytes(data))
            a, b = prog.below(len(lines)), prog.below(len(lines))
            lines[a], lines[b] = lines[b], lines[a]
            data = bytearray(b"\r".join(lines))
        elif op == 9:  # drop a line
            lines = _lines(bytes(data))
            del lines[prog.below(len(lines))]
            data = bytearray(b"\r".join(lines))
        elif op == 10 and others:  # splice in a part of another seed
            other = prog.pick(others)
            start = prog.below(len(other) + 1)
            data[pos:] = other[start : start + 1 + prog.below(2048)]
        else:  # an ASCII digit run or sign in place of a byte (counts, dates, amounts)
            data[pos:pos] = prog.pick((b"-", b"0", b"9" * 20, b"99999999999", b".", b"E9"))
    return bytes(data[:MAX_INPUT])


#: odd values a YAML document may be given in place of one of its own
ODD_VALUES: tuple[Any, ...] = (
    None,
    "",
    " ",
    0,
    -1,
    2**63,
    1.5,
    float("inf"),
    float("nan"),
    True,
    False,
    [],
    {},
    [None],
    {"": None},
    "x" * 5000,
    "PID-3[2].4.1",
    "PID-0",
    "PID-99999",
    "ZZZ-1.2.3.4.5",
    "Patient.name[0].given",
    "Patient.",
    ".",
    "..",
    "a..b",
    "[0]",
    "Patient.name[-1]",
    "Patient.name[99999999999999999999]",
    "'",
    '"',
    "\\",
    "{{",
    "}",
    "%s",
    "{0}",
    "\x00",
    "\n",
    "é",
    "\U0001f600",
    "lambda: 1",
    "__import__('os')",
    "1e999",
    "2026-13-45",
    "P1D",
    "*",
    "^~\\&",
    "|",
)


def _paths(node: Any, at: tuple[Any, ...], out: list[tuple[Any, ...]]) -> None:
    out.append(at)
    if isinstance(node, dict):
        for k, v in node.items():
            _paths(v, (*at, k), out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _paths(v, (*at, i), out)


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def mutate_tree(text: bytes, prog: Program) -> bytes:
    """Parse ``text`` as YAML and apply up to 6 edits to the document as ``prog`` chooses; the
    result written back as YAML (``text`` unchanged when it does not parse)."""
    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 - the safe loader, libyaml's
    except yaml.YAMLError:
        return text
    for _ in range(1 + prog.below(6)):
        if prog.done:
            break
        paths: list[tuple[Any, ...]] = []
        _paths(doc, (), paths)
        path = prog.pick(paths)
        op = prog.below(6)
        if not path:
            if op == 0:
                doc = copy.deepcopy(prog.pick(ODD_VALUES))
            continue
        parent = _get(doc, path[:-1])
        key = path[-1]
        if op in (0, 1):  # an odd value
            parent[key] = copy.deepcopy(prog.pick(ODD_VALUES))  # never the shared one
        elif op == 2:  # another value of the document
            parent[key] = copy.deepcopy(_get(doc, prog.pick(paths)))
        elif op == 3:  # dropped
            del parent[key]
        elif op == 4 and isinstance(parent, list):  # an item repeated
            parent[key:key] = [parent[key]] * (1 + prog.below(40))
        elif op == 4 and isinstance(parent, dict):  # a key renamed to another key of the file
            keys = [p[-1] for p in paths if p and isinstance(p[-1], str)]
            new = prog.pick(keys) if keys else "x"
            parent[new] = parent.pop(key)
        else:  # a value wrapped in a list or a mapping
            parent[key] = [parent[key]] if prog.byte() & 1 else {"value": parent[key]}
    try:
        out: str = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
        return out.encode("utf-8")[:MAX_INPUT]
    except (yaml.YAMLError, RecursionError, ValueError):
        return text
