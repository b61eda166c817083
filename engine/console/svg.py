"""Charts drawn on the server as SVG: bars (stacked or side by side) and lines.

The console serves no chart library and fetches none from a CDN, and its CSP allows no script:
a chart is an ``<svg>`` element written into the page, readable without JavaScript, printable,
and with a ``<title>`` on every bar and point for the figure under the pointer. Every text that
goes in (labels, series names, the title) is escaped here, so a payer's name that holds markup
is shown as text; numbers are formatted here. No ``style`` attribute (the CSP forbids them):
colours are presentation attributes (``fill``, ``stroke``), which it does not govern.

The y axis starts at 0 and rises in at most five steps of a round size (1, 2 or 5 times a power
of ten; whole numbers once the values reach 1) to the first step at or above the largest
value; at most about a dozen x labels are written, evenly spaced, so a year of days
stays legible (every bar keeps its ``<title>``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

__all__ = ["PALETTE", "Series", "axis", "bar_chart", "line_chart", "nice_max"]

#: colours for series in order (distinguishable for the common colour-vision deficiencies)
PALETTE = ("#1f5fa8", "#e08a00", "#067647", "#b42318", "#7a4fb5", "#5b6570", "#0e8fa3")

_WIDTH, _HEIGHT = 760, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 12, 12, 54
_MAX_X_LABELS = 12


@dataclass(frozen=True)
class Series:
    """One named row of values, one per label (None: no value that day, e.g. a rate of 0/0)."""

    name: str
    values: Sequence[float | None]


def nice_max(value: float) -> float:
    """The smallest of 1, 2, 5 × 10^k at or above ``value`` (1 for nothing to show)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def axis(value: float) -> tuple[float, float]:
    """The y axis for values up to ``value``: (top, step), at most five steps of a round size
    (1, 2 or 5 × 10^k, never below 1 for figures that are counts at heart)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0, 0.25
    raw = value / 4
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    if value >= 1:
        step = max(step, 1.0)
    return float(round(math.ceil(value / step - 1e-9) * step, 10)), float(step)


def _number(value: float, unit: str = "") -> str:
    """A figure as shown: ``1,234``, ``12.50``, ``$1,234.50``, ``12.5%``."""
    if unit == "%":
        return f"{value:.1f}%".replace(".0%", "%")
    text = f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"
    if unit == "$":
        return f"${text}"
    return f"{text} {unit}" if unit else text


def _frame(title: str, labels: Sequence[str], top: float, step: float, unit: str) -> list[str]:
    """The opening tag, title, y grid with its figures, and the x labels."""
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {_WIDTH} {_HEIGHT}"'
        f' width="100%" role="img" aria-label="{escape(title)}">',
        # the title for readers and tools; the page heads the chart with it in HTML
        f"<title>{escape(title)}</title>",
    ]
    for k in range(round(top / step) + 1):
        value = step * k
        y = _TOP + plot_h - plot_h * value / top
        parts.append(
            f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="#d6dbe0" stroke-width="1"/>'
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
            f'fill="#5b6570">{escape(_number(value, unit))}</text>'
        )
    n = len(labels)
    every = max(1, math.ceil(n / _MAX_X_LABELS))
    slot = plot_w / max(n, 1)
    for i, label in enumerate(labels):
        if i % every:
            continue
        x = _LEFT + slot * (i + 0.5)
        parts.append(
            f'<text x="{x:.1f}" y="{_TOP + plot_h + 16}" font-size="11" text-anchor="middle" '
            f'fill="#5b6570">{escape(label)}</text>'
        )
    return parts


def _legend(series: Sequence[Series]) -> list[str]:
    parts: list[str] = []
    x = _LEFT
    y = _HEIGHT - 12
    for k, s in enumerate(series):
        colour = PALETTE[k % len(PALETTE)]
        parts.append(
            f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14}" y="{y}" font-size="11" fill="#1b1f24">{escape(s.name)}</text>'
        )
        x += 24 + 7 * len(s.name)
    return parts


def _empty(parts: list[str]) -> Markup:
    parts.append(
        f'<text x="{_WIDTH / 2}" y="{_HEIGHT / 2}" font-size="13" text-anchor="middle" '
        'fill="#5b6570">no data in this range</text></svg>'
    )
    return Markup("".join(parts))


def bar_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    unit: str = "",
    stacked: bool = True,
) -> Markup:
    """Bars per label, one per series stacked (or side by side with ``stacked=False``)."""
    totals = [
        (sum(v or 0 for v in col) if stacked else max((v or 0 for v in col), default=0))
        for col in zip(*(s.values for s in series), strict=True)
    ] or [0.0]
    top, step = axis(max(totals))
    parts = _frame(title, labels, top, step, unit)
    if not labels or not any(s for s in totals):
        return _empty(parts)
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM
    slot = plot_w / len(labels)
    width = max(slot * 0.8, 1.0)
    for i, label in enumerate(labels):
        base = 0.0
        for k, s in enumerate(series):
            value = s.values[i] or 0
            if value <= 0:
                continue
            h = plot_h * value / top
            w = width if stacked else width / len(series)
            x = _LEFT + slot * i + (slot - width) / 2 + (0 if stacked else w * k)
            y = _TOP + plot_h - h - (plot_h * base / top if stacked else 0)
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[k % len(PALETTE)]}"><title>{escape(label)} · '
                f"{escape(s.name)}: {escape(_number(value, unit))}</title></rect>"
            )
            if stacked:
                base += value
    if len(series) > 1:
        parts += _legend(series)
    parts.append("</svg>")
    return Markup("".join(parts))


def line_chart(
    title: str, labels: Sequence[str], series: Sequence[Series], *, unit: str = ""
) -> Markup:
    """One line per series; a missing value (None) breaks the line there."""
    values = [v for s in series for v in s.values if v is not None]
    top, step = axis(max(values, default=0))
    parts = _frame(title, labels, top, step, unit)
    if not labels or not values:
        return _empty(parts)
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM
    slot = plot_w / len(labels)
    for k, s in enumerate(series):
        colour = PALETTE[k % len(PALETTE)]
        runs: list[list[tuple[float, float]]] = [[]]
        dots: list[str] = []
        for i, value in enumerate(s.values):
            if value is None:
                runs.append([])
                continue
            x = _LEFT + slot * (i + 0.5)
            y = _TOP + plot_h - plot_h * value / top
            runs[-1].append((x, y))
            dots.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"><title>'
                f"{escape(labels[i])} · {escape(s.name)}: {escape(_number(value, unit))}"
                "</title></circle>"
            )
        for run in runs:
            if len(run) > 1:
                points = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
                parts.append(
                    f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>'
                )
        parts += dots
    if len(series) > 1:
        parts += _legend(series)
    parts.append("</svg>")
    return Markup("".join(parts))
