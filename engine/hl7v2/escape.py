"""Escape sequences in ER7 text data (HL7 v2.5.1 chapter 2, section 2.7).

Decoding (``unescape``) turns the sequences into text:

* ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` become the field, component, subcomponent, repetition and escape
  characters; ``\\P\\`` (v2.7) becomes the truncation character when the message declares one.
* ``\\Xhh..\\`` becomes the characters those bytes spell in the message's character set.
* ``\\.br\\`` (formatted text line break, 2.7.6) becomes ``"\\n"``.

Every other well-formed sequence is *kept verbatim* in the decoded text: formatting commands
(``\\.sp\\``, ``\\.in+4\\``, ``\\.ce\\`` ...), highlighting ``\\H\\`` / ``\\N\\``, locally defined
``\\Zxx\\`` and character-set switches ``\\Cxxyy\\`` / ``\\Mxxyyzz\\``. Encoding (``escape``) writes
exactly that same set back verbatim, so a formatted text survives a read and a write unchanged, and
``unescape(escape(s)) == s`` for every string ``s``.

Encoding escapes the five delimiters (and the v2.7 truncation character as ``\\P\\``), writes
``"\\n"`` as ``\\.br\\`` and ``"\\r"`` as ``\\X0D\\`` (a carriage return in data would end the
segment), and the MLLP block bytes 0x0B and 0x1C as ``\\X0B\\`` / ``\\X1C\\`` (the MLLP transport,
v2.5.1 appendix C, forbids them inside a message, and a framing layer would strip them). A kept
sequence whose content contains one of the message's delimiters (possible only with unusual
delimiters such as ``-`` or ``.``) is escaped character by character instead of being kept.

A malformed sequence (an escape character with no closing one, or an unknown code such as
``\\Q\\``) is read as literal text, as chapter 2.7 asks of receivers that do not recognise it.

Incomplete: ``\\C`` / ``\\M`` switches are not interpreted (the text between them is decoded in the
message charset); a ``\\Xhh..\\`` whose bytes are not valid in that charset (or a multi-byte
character split over two ``\\X`` sequences) is decoded as latin-1; a literal text that happens to
look like ``\\H\\`` is written as highlighting.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["escape", "unescape"]

# Sequences kept verbatim by both directions. Content is restricted to letters, digits, '.', '+' and
# '-'; ``escape`` does not keep one whose content holds a delimiter of the message.
_KEPT = r"H|N|\.(?!br\\)[a-z]{2}[+-]?[0-9]*|Z[A-Za-z0-9]*|C[0-9A-Fa-f]{4}|M[0-9A-Fa-f]{6}"
_KEPT_RE = re.compile(rf"^(?:{_KEPT})$")
_HEX_RE = re.compile(r"^X((?:[0-9A-Fa-f]{2})+)$")


@lru_cache(maxsize=64)
def _escape_table(delims: str) -> tuple[re.Pattern[str], dict[str, str]]:
    """Regex and replacement table for one delimiter set ``F C R E S [T]``."""
    f, c, r, e, s = delims[0], delims[1], delims[2], delims[3], delims[4]
    t = delims[5] if len(delims) > 5 else ""
    table = {f: f"{e}F{e}", c: f"{e}S{e}", s: f"{e}T{e}", r: f"{e}R{e}", "\n": f"{e}.br{e}"}
    table["\r"] = f"{e}X0D{e}"
    table["\x0b"] = f"{e}X0B{e}"
    table["\x1c"] = f"{e}X1C{e}"
    if t:
        table[t] = f"{e}P{e}"
    ee = re.escape(e)
    # an escape char that opens a kept sequence is copied with it; any other is written as \E\
    kept = rf"{ee}(?:{_KEPT}){ee}"
    chars = "".join(re.escape(ch) for ch in table)
    pattern = re.compile(rf"{kept}|{ee}|[{chars}]")
    return pattern, table


def escape(value: str, delims: str) -> str:
    """Escape ``value`` for ER7 data (HL7 v2.5.1 section 2.7) with delimiters ``delims``.

    ``delims`` is the field separator followed by the MSH-2 encoding characters in the order
    F C R E S [T], e.g. ``"|^~\\&"`` (or ``"|^~\\&#"`` with the v2.7 truncation character).
    """
    pattern, table = _escape_table(delims)
    e = delims[3]
    if not pattern.search(value):
        return value

    def repl(m: re.Match[str]) -> str:
        tok = m.group(0)
        if len(tok) > 1:  # a kept sequence, unless a delimiter inside it would split it
            if not any(ch in delims for ch in tok[1:-1]):
                return tok
            return f"{e}E{e}" + escape(tok[1:], delims)
        if tok == e:
            return f"{e}E{e}"
        return table[tok]

    return pattern.sub(repl, value)


def unescape(value: str, delims: str, charset: str = "utf-8") -> str:
    """Decode the escape sequences in ``value`` (one raw ER7 leaf) with delimiters ``delims``.

    ``charset`` (a Python codec name) decodes the bytes of ``\\Xhh..\\`` (section 2.7.3).
    """
    e = delims[3]
    if e not in value:
        return value
    f, c, r, s = delims[0], delims[1], delims[2], delims[4]
    t = delims[5] if len(delims) > 5 else ""
    simple = {"F": f, "S": c, "T": s, "R": r, "E": e, ".br": "\n"}
    if t:
        simple["P"] = t
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        j = value.find(e, i)
        if j < 0:
            out.append(value[i:])
            break
        out.append(value[i:j])
        k = value.find(e, j + 1)
        if k < 0:  # unterminated: literal
            out.append(value[j:])
            break
        code = value[j + 1 : k]
        rep = simple.get(code)
        if rep is not None:
            out.append(rep)
            i = k + 1
            continue
        hexm = _HEX_RE.match(code)
        if hexm:
            raw = bytes.fromhex(hexm.group(1))
            try:
                out.append(raw.decode(charset))
            except (UnicodeDecodeError, LookupError):
                out.append(raw.decode("latin-1"))
            i = k + 1
            continue
        if _KEPT_RE.match(code):
            out.append(value[j : k + 1])
            i = k + 1
            continue
        # unknown or malformed: the escape character is literal text
        out.append(e)
        i = j + 1
    return "".join(out)
