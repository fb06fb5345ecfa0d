"""Monthly usage against the plan's allowance, as an inline SVG drawn on the server."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from markupsafe import Markup, escape

# A small drawing scaled to the card: its 15-unit labels show at 12 px or more from 290 px wide.
WIDTH, HEIGHT = 360, 210
_LEFT, _BOTTOM, _TOP = 44, 30, 24
METRIC_NAMES = {
    "data_gb": "Mobile data",
    "roaming_data_gb": "Roaming data",
    "minutes": "Call minutes",
    "sms": "Texts sent",
}


def metric_name(metric: str) -> str:
    """A metric as people call it: "Mobile data", not "data_gb"."""
    return METRIC_NAMES.get(metric, metric.replace("_", " ").capitalize())


@dataclass(frozen=True, slots=True)
class Series:
    """One metric's monthly usage (period yyyymm -> quantity) and its monthly allowance."""

    metric: str
    unit: str
    points: Sequence[tuple[int, Decimal]]
    allowance: Decimal | None  # None: unlimited or not part of the plan

    @property
    def title(self) -> str:
        """The chart's heading: "Mobile data (GB) per month"."""
        return f"{metric_name(self.metric)} ({self.unit}) per month"


def _fmt(value: Decimal) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".") if value % 1 else f"{value:.0f}"


def _month(period: int) -> str:
    return f"{period // 100}-{period % 100:02d}"


def usage_svg(series: Series) -> Markup:
    """A bar per month and a dashed line at the allowance; bars above it are marked "over"."""
    points = list(series.points)
    top = max([v for _, v in points] + ([series.allowance] if series.allowance else []) + [Decimal(1)])
    plot_h = HEIGHT - _BOTTOM - _TOP
    plot_w = WIDTH - _LEFT - 8
    step = plot_w / max(len(points), 1)
    bar = max(step * 0.6, 2)

    def y(value: Decimal) -> float:
        return _TOP + plot_h - float(value / top) * plot_h

    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(series.title)}</title>',
        f'<line class="axis" x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{WIDTH - 8}" y2="{_TOP + plot_h}"/>',
        f'<text class="tick" x="{_LEFT - 6}" y="{_TOP + 4}" text-anchor="end">{escape(_fmt(top))}</text>',
        f'<text class="tick" x="{_LEFT - 6}" y="{_TOP + plot_h}" text-anchor="end">0</text>',
    ]
    for i, (period, value) in enumerate(points):
        x = _LEFT + i * step + (step - bar) / 2
        over = series.allowance is not None and value > series.allowance
        cls = "bar over" if over else "bar"
        parts.append(
            f'<rect class="{cls}" x="{x:.1f}" y="{y(value):.1f}" width="{bar:.1f}" '
            f'height="{_TOP + plot_h - y(value):.1f}"><title>{escape(_month(period))}: '
            f"{escape(_fmt(value))} {escape(series.unit)}</title></rect>"
        )
        every = 1 if len(points) <= 6 else 2 if len(points) <= 12 else 3  # labels never overlap
        if (len(points) - 1 - i) % every == 0:
            parts.append(
                f'<text class="tick" x="{x + bar / 2:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
                f"{escape(_month(period)[2:])}</text>"
            )
    if series.allowance is not None:
        ay = y(series.allowance)
        parts.append(f'<line class="allowance" x1="{_LEFT}" y1="{ay:.1f}" x2="{WIDTH - 8}" y2="{ay:.1f}"/>')
        parts.append(
            f'<text class="allowance-label" x="{WIDTH - 10}" y="{max(ay - 5, 16):.1f}" text-anchor="end">'
            f"plan allows {escape(_fmt(series.allowance))} {escape(series.unit)}</text>"
        )
    parts.append("</svg>")
    # Every interpolated string above is escaped; the rest is our own markup.
    return Markup("".join(parts))


def usage_series(
    rows: Sequence[Mapping[Any, Any]], allowance: Mapping[str, object], *, months: int = 12
) -> list[Series]:
    """Series per metric from usage rows (period, metric, quantity_milli) and a plan's allowance."""
    by_metric: dict[str, dict[int, Decimal]] = {}
    for row in rows:
        period, metric, milli = row["period"], row["metric"], row["quantity_milli"]
        assert isinstance(period, int) and isinstance(metric, str) and isinstance(milli, int)
        by_metric.setdefault(metric, {})[period] = Decimal(milli) / 1000
    result = []
    for metric, values in sorted(by_metric.items()):
        limit = allowance.get(metric)
        cap = Decimal(str(limit)) if isinstance(limit, int | float | str) and limit != "unlimited" else None
        unit = {"data_gb": "GB", "roaming_data_gb": "GB", "minutes": "min", "sms": "texts"}.get(
            metric, metric.replace("_", " ")
        )
        result.append(Series(metric, unit, sorted(values.items())[-months:], cap))
    return result
