"""Names, addresses and identifiers in the X12 basic character set (defined by X12.6).

The basic character set is upper-case A-Z, digits 0-9, space and ``! " & ' ( ) * + , - . / : ; ?
=``. Payers match names on it, and several of those characters are our delimiters (``*`` and
``:``; ``^`` and ``~`` are outside it), so what we send is narrower still. The exact rule of
:func:`to_basic`:

1. Unicode compatibility decomposition (NFKD), then combining marks are dropped: ``Núñez`` →
   ``Nunez``, ``ﬁ`` → ``fi``.
2. Letters with no decomposition are spelled out: ß → SS, Æ → AE, Œ → OE, Ø → O, Ł → L, Đ/Ð → D,
   Þ → TH, ı → I.
3. Upper case.
4. Apostrophes (``'``, ``’``, ``‘``, ``ʼ``, `````, ``´``) are dropped: ``O'Connor`` → ``OCONNOR``.
5. Kept: A-Z, 0-9, space and hyphen; for ``kind="text"`` (addresses, cities, organisation names)
   also ``& , . / ( )``. Every other character becomes a space.
6. Runs of spaces become one; leading and trailing spaces and hyphens are removed.
7. The result is cut to ``max_length`` when one is given (the element's maximum).

So ``O'Connor-Núñez`` → ``OCONNOR-NUNEZ``, ``Zoë  Smith_Jones`` → ``ZOE SMITH JONES``; none of
``* ^ : ~`` ever survives. A name with nothing left (``李``) is an error, not an empty element.

Identifiers (member IDs, payer IDs, NPIs, trace numbers) are never rewritten: a changed ID would
ask about someone else. :func:`check_identifier` refuses one that holds a delimiter, a character
outside printable ASCII, or too many characters.
"""

from __future__ import annotations

import unicodedata

from engine.x12.errors import X12Error
from engine.x12.segments import DEFAULT_DELIMITERS, Delimiters

__all__ = ["check_identifier", "to_basic"]

_SPELLED = str.maketrans(
    {
        "ß": "SS",
        "ẞ": "SS",
        "Æ": "AE",
        "æ": "AE",
        "Œ": "OE",
        "œ": "OE",
        "Ø": "O",
        "ø": "O",
        "Ł": "L",
        "ł": "L",
        "Đ": "D",
        "đ": "D",
        "Ð": "D",
        "ð": "D",
        "Þ": "TH",
        "þ": "TH",
        "ı": "I",
    }
)
_APOSTROPHES = frozenset("'’‘ʼ`´")
_NAME_KEEP = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -")
_TEXT_KEEP = _NAME_KEEP | frozenset("&,./()")


def to_basic(value: str, *, kind: str = "name", max_length: int | None = None) -> str:
    """``value`` transliterated to the X12 basic character set by the rule above.

    ``kind`` is ``"name"`` (person names: letters, digits, space, hyphen) or ``"text"``
    (addresses and organisation names, which also keep ``& , . / ( )``).
    """
    keep = _NAME_KEEP if kind == "name" else _TEXT_KEEP
    decomposed = unicodedata.normalize("NFKD", value.translate(_SPELLED))
    out: list[str] = []
    for ch in decomposed:
        if unicodedata.combining(ch) or ch in _APOSTROPHES:
            continue
        for up in ch.upper():  # one character may upper-case to several (ŉ → ʼN)
            if not unicodedata.combining(up) and up not in _APOSTROPHES:
                out.append(up if up in keep else " ")
    text = " ".join("".join(out).split()).strip(" -")
    if max_length is not None:
        text = text[:max_length].rstrip(" -")
    return text


def check_identifier(
    value: str,
    what: str,
    *,
    segment_id: str,
    element: int,
    max_length: int,
    min_length: int = 1,
    delimiters: Delimiters = DEFAULT_DELIMITERS,
) -> str:
    """``value`` stripped of surrounding spaces, or :class:`X12Error` naming ``what`` and the
    element when it is empty, too long or holds a delimiter or a non-ASCII character."""
    text = value.strip()
    name = f"{segment_id}{element:02d}"
    if not min_length <= len(text) <= max_length:
        raise X12Error(
            f"{what} {text!r} must be {min_length} to {max_length} characters ({name})",
            segment_id=segment_id,
            element=element,
        )
    for ch in text:
        if ch in delimiters.all() or not (" " <= ch <= "~"):
            raise X12Error(
                f"{what} {text!r} contains {ch!r}, which X12 cannot carry in {name} "
                "(a delimiter or a character outside printable ASCII)",
                segment_id=segment_id,
                element=element,
            )
    return text
