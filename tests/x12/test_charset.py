"""Transliteration to the X12 basic character set, and identifier checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.x12.charset import check_identifier, to_basic
from engine.x12.errors import X12Error


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ("O'Connor-Núñez", "name", "OCONNOR-NUNEZ"),
        ("Zoë  Smith_Jones", "name", "ZOE SMITH JONES"),
        ("Groß", "name", "GROSS"),
        ("Søren Æbelø", "name", "SOREN AEBELO"),
        ("Łukasz Đorđević", "name", "LUKASZ DORDEVIC"),
        ("D’Angelo", "name", "DANGELO"),
        ("St. John Jr.", "name", "ST JOHN JR"),
        ("-Anne-", "name", "ANNE"),
        ("ﬁnch", "name", "FINCH"),
        ("Smith & Jones Health, Inc.", "text", "SMITH & JONES HEALTH, INC."),
        ("12 Rue de l'Église #4", "text", "12 RUE DE LEGLISE 4"),
        ("Apt 7*8 ~ Suite: 2^", "text", "APT 7 8 SUITE 2"),
        ("李", "name", ""),
    ],
)
def test_transliteration_rule(value: str, kind: str, expected: str) -> None:
    assert to_basic(value, kind=kind) == expected


def test_cut_to_the_element_maximum_without_a_trailing_space() -> None:
    assert to_basic("Bartholomew Alexander", max_length=12) == "BARTHOLOMEW"


@given(st.text())
def test_no_delimiter_or_character_outside_the_basic_set_survives(value: str) -> None:
    for kind in ("name", "text"):
        out = to_basic(value, kind=kind)
        assert not set(out) & set("*^:~'\r\n")
        assert all(ch in "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -&,./()" for ch in out)
        assert out == out.strip(" -") and "  " not in out


def test_identifiers_are_checked_never_rewritten() -> None:
    assert check_identifier(
        " W123-45 ", "member ID", segment_id="NM1", element=9, max_length=80
    ) == ("W123-45")
    with pytest.raises(X12Error, match=r"member ID 'W1\*2' contains '\*'.*NM109"):
        check_identifier("W1*2", "member ID", segment_id="NM1", element=9, max_length=80)
    with pytest.raises(X12Error, match="contains 'é'"):
        check_identifier("Wé", "member ID", segment_id="NM1", element=9, max_length=80)
    with pytest.raises(X12Error, match="must be 10 to 10 characters \\(TRN03\\)"):
        check_identifier(
            "123", "originator", segment_id="TRN", element=3, min_length=10, max_length=10
        )
