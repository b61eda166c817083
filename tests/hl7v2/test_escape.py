"""Escape sequences (HL7 v2.5.1 section 2.7): decoding, encoding and their round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.hl7v2.escape import escape, unescape

D = "|^~\\&"  # F C R E S
D_TRUNC = "|^~\\&#"  # with the v2.7 truncation character
D_ODD = "#$%!?"  # field '#', component '$', repetition '%', escape '!', subcomponent '?'
D_DASH = "|^~\\-"  # subcomponent '-', which can occur inside \.in-4\

SPECIALS = "|^~\\&#$%!?-.+\r\n\x0b\x1c\t \ufeffHNZXCMPEFSTR.br0123456789éß中😀"
TEXT = st.text(
    alphabet=st.one_of(st.sampled_from(SPECIALS), st.characters(exclude_categories=["Cs"])),
    max_size=40,
)


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("a\\F\\b", "a|b"),
        ("a\\S\\b", "a^b"),
        ("a\\T\\b", "a&b"),
        ("a\\R\\b", "a~b"),
        ("a\\E\\b", "a\\b"),
        ("\\F\\\\S\\\\T\\\\R\\\\E\\", "|^&~\\"),
        ("line 1\\.br\\line 2", "line 1\nline 2"),
        ("caf\\XC3A9\\", "café"),
        ("\\X0D0A\\", "\r\n"),
        ("\\Xe282ac\\", "€"),  # lower-case hex digits
        ("no escapes at all", "no escapes at all"),
    ],
)
def test_unescape_known_sequences(raw: str, text: str) -> None:
    assert unescape(raw, D) == text


def test_unescape_hex_uses_the_message_charset() -> None:
    assert unescape("Ren\\XE9\\e", D, "latin-1") == "Renée"
    assert unescape("\\XC3A9\\", D, "latin-1") == "Ã©"
    # bytes that are not valid in the charset fall back to latin-1 (documented as incomplete)
    assert unescape("\\XFF\\", D, "utf-8") == "ÿ"


@pytest.mark.parametrize(
    "kept",
    [
        "\\H\\",
        "\\N\\",
        "\\.sp\\",
        "\\.sp2\\",
        "\\.in+4\\",
        "\\.ti-2\\",
        "\\.ce\\",
        "\\Zab1\\",
        "\\C2842\\",
        "\\M2442D4\\",
    ],
)
def test_formatting_and_local_sequences_are_kept_verbatim(kept: str) -> None:
    text = f"before{kept}after"
    assert unescape(text, D) == text
    assert escape(text, D) == text


@pytest.mark.parametrize(
    "raw",
    [
        "unterminated \\F",  # escape with no closing escape character
        "\\Q\\",  # unknown code
        "\\X0\\",  # odd number of hex digits
        "\\XZZ\\",  # not hex
        "\\P\\",  # truncation escape without a declared truncation character
        "ends with \\",
        "\\",
        "\\\\",  # empty code
    ],
)
def test_malformed_escapes_read_literally(raw: str) -> None:
    assert unescape(raw, D) == raw


def test_malformed_escape_followed_by_a_good_one() -> None:
    # the unknown "\Q" is literal; the scan resumes and still decodes the \F\ after it
    assert unescape("\\Q\\F\\", D) == "\\Q|"


def test_truncation_character_escape() -> None:
    assert unescape("a\\P\\b", D_TRUNC) == "a#b"
    assert escape("a#b", D_TRUNC) == "a\\P\\b"
    assert escape("a#b", D) == "a#b"  # no truncation character declared: '#' is plain text


def test_escape_writes_every_delimiter_and_control_character() -> None:
    assert escape("|^~\\&", D) == "\\F\\\\S\\\\R\\\\E\\\\T\\"
    assert escape("a\nb", D) == "a\\.br\\b"
    assert escape("a\rb", D) == "a\\X0D\\b"
    assert escape("\x0bframe\x1c", D) == "\\X0B\\frame\\X1C\\"
    assert escape("plain text", D) == "plain text"


def test_escape_with_other_delimiters() -> None:
    assert escape("#$%!?|^~\\&", D_ODD) == "!F!!S!!R!!E!!T!|^~\\&"
    assert unescape("!F!!S!!R!!E!!T!", D_ODD) == "#$%!?"


def test_literal_br_and_hex_text_are_not_read_as_sequences_after_escaping() -> None:
    assert escape("\\.br\\", D) == "\\E\\.br\\E\\"
    assert unescape(escape("\\X41\\", D), D) == "\\X41\\"


def test_kept_sequence_holding_a_delimiter_is_escaped() -> None:
    written = escape("\\.in-4\\", D_DASH)
    assert "-" not in written
    assert unescape(written, D_DASH) == "\\.in-4\\"


@given(TEXT, st.sampled_from([D, D_TRUNC, D_ODD, D_DASH]))
def test_unescape_inverts_escape(s: str, delims: str) -> None:
    assert unescape(escape(s, delims), delims) == s


@given(TEXT, st.sampled_from([D, D_TRUNC, D_ODD, D_DASH]))
def test_escaped_text_holds_no_raw_separator(s: str, delims: str) -> None:
    written = escape(s, delims)
    forbidden = set(delims) - {delims[3]} | {"\r", "\n", "\x0b", "\x1c"}
    assert not forbidden & set(written)
