"""Text the store writes into its columns, made safe for every database it runs on.

PostgreSQL's text columns cannot hold NUL (SQLite's can): one NUL in MSH-10 or PID-3 made the
insert fail there, so the sender was told "send again" forever and nothing was stored. The raw
bytes go into a binary column and keep every byte; only the columns read from them (the header
fields we index and show, reasons, errors) are cleaned, here, where every caller passes.

Each C0 control character but tab is *replaced* by U+FFFD, not dropped: the value keeps its
length and shape, an operator sees that something was there, and two values that differed only
by a control character are less likely to become one. The dedupe key must never make two
messages one (the second would be acknowledged as a duplicate and lost), so it is escaped
injectively instead: a control character becomes U+FFFD and its two hex digits, and a literal
U+FFFD becomes U+FFFD ``fd`` (``fd`` is no control's code). A key without either is unchanged,
so resends of messages stored before this still find their original.
"""

from __future__ import annotations

__all__ = ["clean", "clean_key", "clean_lines"]

REPLACEMENT = "\ufffd"
_CONTROLS = [c for c in range(0x20) if c != 0x09]
_REPLACE = dict.fromkeys(_CONTROLS, REPLACEMENT)
_REPLACE_BUT_NEWLINE = {c: r for c, r in _REPLACE.items() if c != 0x0A}
_ESCAPE = {c: f"{REPLACEMENT}{c:02x}" for c in _CONTROLS} | {0xFFFD: f"{REPLACEMENT}fd"}


def clean(value: str | None, width: int | None = None) -> str | None:
    """``value`` with every C0 control but tab replaced by U+FFFD, cut to ``width`` characters."""
    if value is None:
        return None
    if value.isprintable():  # the usual case, and no C0 control is printable: no copy
        return value[:width]
    return value.translate(_REPLACE)[:width]


def clean_lines(value: str | None, width: int | None = None) -> str | None:
    """Like :func:`clean` but keeping newlines: for columns that hold one item per line and for
    errors quoted from elsewhere (a destination's answer)."""
    return None if value is None else value.translate(_REPLACE_BUT_NEWLINE)[:width]


def clean_key(value: str | None, width: int | None = None) -> str | None:
    """A unique key without control characters: the escaping keeps distinct keys distinct (up to
    ``width``, where the key is cut as before)."""
    if value is None:
        return None
    if value.isprintable() and REPLACEMENT not in value:
        return value[:width]
    return value.translate(_ESCAPE)[:width]
