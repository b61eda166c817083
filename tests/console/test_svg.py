"""Server-side SVG charts: well-formed, escaped, no script or style attribute, figures right."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from engine.console.svg import Series, axis, bar_chart, line_chart, nice_max

NS = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


@pytest.mark.parametrize(
    ("value", "top"),
    [(0, 1), (1, 1), (3, 5), (7, 10), (10, 10), (11, 20), (0.3, 0.5), (1234, 2000)],
)
def test_nice_max(value: float, top: float) -> None:
    assert nice_max(value) == top


@pytest.mark.parametrize(
    ("value", "top", "step"),
    [
        (0, 1, 0.25),
        (1, 1, 1),
        (3, 3, 1),
        (5, 6, 2),
        (10, 10, 5),
        (11, 15, 5),
        (0.3, 0.3, 0.1),
        (1234, 1500, 500),
        (50, 60, 20),
    ],
)
def test_the_axis_rises_in_round_steps(value: float, top: float, step: float) -> None:
    assert axis(value) == (top, step)


def test_bars_are_proportional_and_carry_their_figures() -> None:
    svg = bar_chart("Charges", ["12-01", "12-02"], [Series("charges", [5, 10])], unit="$")
    root = _parse(svg)
    rects = root.findall(f"{NS}rect")
    assert [float(r.get("height", 0)) for r in rects][1] == pytest.approx(
        2 * float(rects[0].get("height", 0))
    )
    titles = [r.find(f"{NS}title").text for r in rects]  # type: ignore[union-attr]
    assert titles == ["12-01 · charges: $5", "12-02 · charges: $10"]


def test_stacked_bars_add_up_and_have_a_legend() -> None:
    svg = bar_chart(
        "Outcomes", ["Aetna", "Cigna"], [Series("eligible", [3, 1]), Series("inactive", [1, 0])]
    )
    root = _parse(svg)
    rects = [r for r in root.findall(f"{NS}rect") if r.find(f"{NS}title") is not None]
    assert len(rects) == 3  # a zero draws nothing
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert "eligible" in texts and "inactive" in texts
    # the y axis ends at the stacked total (4), in whole steps
    assert [t for t in texts if t and t.isdigit()] == ["0", "1", "2", "3", "4"]


def test_labels_and_names_are_escaped_and_nothing_runs() -> None:
    evil = '<script>alert(1)</script>"&'
    for svg in (
        bar_chart(evil, [evil], [Series(evil, [1])]),
        line_chart(evil, [evil, "b"], [Series(evil, [1, 2]), Series("other", [2, 1])]),
    ):
        assert "<script" not in svg and "style=" not in svg and "onload" not in svg
        root = _parse(svg)  # well-formed XML
        assert root.find(f"{NS}title").text == evil  # type: ignore[union-attr]


def test_a_line_breaks_where_a_value_is_missing() -> None:
    svg = line_chart(
        "No-show rate", ["a", "b", "c", "d", "e"], [Series("rate", [10, 20, None, 5, 6])], unit="%"
    )
    root = _parse(svg)
    lines = root.findall(f"{NS}polyline")
    assert [len(p.get("points", "").split()) for p in lines] == [2, 2]
    assert len(root.findall(f"{NS}circle")) == 4
    assert any(
        t.text == "rate: 20%" or (t.text or "").endswith("rate: 20%")
        for t in root.iter(f"{NS}title")
    )


def test_nothing_to_show_says_so() -> None:
    for svg in (
        bar_chart("x", [], []),
        bar_chart("x", ["a"], [Series("s", [0])]),
        line_chart("x", ["a"], [Series("s", [None])]),
    ):
        assert "no data in this range" in svg
        _parse(svg)


def test_many_labels_are_thinned_but_every_bar_is_drawn() -> None:
    labels = [f"d{i}" for i in range(366)]
    root = _parse(bar_chart("year", labels, [Series("n", [1] * 366)]))
    shown = [t.text for t in root.iter(f"{NS}text") if (t.text or "").startswith("d")]
    assert 6 <= len(shown) <= 13
    assert len([r for r in root.findall(f"{NS}rect")]) == 366
