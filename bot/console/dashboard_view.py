"""The dashboard's figures as tables (what the page shows, and what each CSV export holds), the
holdout comparison with its confidence interval, and the server-rendered SVG charts.

Every figure is a :class:`Figure`: a title, column headers, rows, and maybe a chart. The page and
the CSV export are drawn from the same figures, so a download always matches the page."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

from markupsafe import Markup, escape

from storage.dashboard import Figures

Cell = str | int | float | Decimal | None

# Which role sees which section: operators the conversation figures, staff and admins all.
CONVERSATION_SECTIONS = ("learning", "understanding")
STAFF_SECTIONS = ("suggestions", "broadcasts", "value")
SECTIONS = CONVERSATION_SECTIONS + STAFF_SECTIONS
SECTION_TITLES = {
    "learning": "Learning",
    "understanding": "Understanding",
    "suggestions": "Suggestions",
    "broadcasts": "Broadcasts",
    "value": "Customer value",
}
Z95 = 1.959963984540054


@dataclass
class Figure:
    """One figure: a table (and an optional chart) with a stable id for its CSV export."""

    id: str
    section: str
    title: str
    headers: Sequence[str]
    rows: list[list[Cell]] = field(default_factory=list)
    chart: Markup | None = None
    note: str = ""
    links: list[tuple[str, str]] = field(default_factory=list)  # (label, href) under the figure


# -- statistics ----------------------------------------------------------------------------------------


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion (0, 1 when ``n`` is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(x1: int, n1: int, x2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """The difference p1 - p2 of two independent proportions and its confidence interval by
    Newcombe's hybrid score method (method 10 of Newcombe 1998), from the two Wilson intervals."""
    p1 = x1 / n1 if n1 else 0.0
    p2 = x2 / n2 if n2 else 0.0
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    diff = p1 - p2
    lower = diff - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    upper = diff + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return diff, lower, upper


# -- charts --------------------------------------------------------------------------------------------

BAR_W, ROW_H, LABEL_W = 560, 22, 190
BAR, INK = "#7aa2e8", "#4a5560"  # presentation attributes: no styles needed (the CSP allows none inline)


def _num(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def bars_svg(
    title: str,
    items: Sequence[tuple[str, float]],
    *,
    percent: bool = False,
    empty: str = "no data in this range",
) -> Markup:
    """Horizontal bars, one per (label, value), labelled with the value; every text escaped."""
    top = max([v for _, v in items] + [1e-9])
    height = ROW_H * max(len(items), 1) + 8
    span = BAR_W - LABEL_W - 70
    parts = [
        f'<svg class="dash-chart" role="img" viewBox="0 0 {BAR_W} {height}" width="{BAR_W}" '
        f'height="{height}" xmlns="http://www.w3.org/2000/svg" font-size="11" fill="{INK}">'
        f"<title>{escape(title)}</title>"
    ]
    for i, (label, value) in enumerate(items):
        y = 4 + i * ROW_H
        width = span * value / top if top > 0 else 0
        shown = f"{value:.0%}" if percent else _num(value)
        parts.append(
            f'<text x="{LABEL_W - 6}" y="{y + 14}" text-anchor="end">{escape(label[:40])}</text>'
            f'<rect class="bar" fill="{BAR}" x="{LABEL_W}" y="{y + 3}" width="{width:.1f}" '
            f'height="{ROW_H - 8}">'
            f"<title>{escape(label)}: {escape(shown)}</title></rect>"
            f'<text x="{LABEL_W + width + 4:.1f}" y="{y + 14}">{escape(shown)}</text>'
        )
    if not items:
        parts.append(f'<text x="{LABEL_W}" y="16">{escape(empty)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def daily_svg(title: str, days: Sequence[date], values: dict[date, float]) -> Markup:
    """A column per day of a share (0-1); days without data are left empty."""
    width, height, left, bottom = 560, 150, 36, 22
    plot_h, plot_w = height - bottom - 10, width - left - 6
    step = plot_w / max(len(days), 1)
    parts = [
        f'<svg class="dash-chart" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" xmlns="http://www.w3.org/2000/svg" font-size="11" fill="{INK}">'
        f"<title>{escape(title)}</title>",
        f'<line class="axis" stroke="#9aa6b2" x1="{left}" y1="{10 + plot_h}" x2="{width - 6}" '
        f'y2="{10 + plot_h}"/>',
        f'<text x="{left - 4}" y="14" text-anchor="end">100%</text>',
        f'<text x="{left - 4}" y="{10 + plot_h}" text-anchor="end">0%</text>',
    ]
    for i, day in enumerate(days):
        if day not in values:
            continue
        h = plot_h * values[day]
        x = left + i * step
        parts.append(
            f'<rect class="bar" fill="{BAR}" x="{x + step * 0.15:.1f}" y="{10 + plot_h - h:.1f}" '
            f'width="{max(step * 0.7, 1):.1f}" height="{h:.1f}"><title>{day.isoformat()}: '
            f"{values[day]:.0%}</title></rect>"
        )
    if days:
        parts.append(f'<text x="{left}" y="{height - 6}">{days[0].isoformat()}</text>')
        parts.append(
            f'<text x="{width - 6}" y="{height - 6}" text-anchor="end">{days[-1].isoformat()}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


# -- the figures ---------------------------------------------------------------------------------------


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def learning(f: Figures) -> list[Figure]:
    customers = f.count("snap.customers")
    prefs = Figure(
        "preferences",
        "learning",
        "Preferences known, by source",
        ("question", "source", "customers", "share of customers"),
    )
    by_key: dict[str, int] = {}
    for (key, source), (n, _) in sorted(f.rows("snap.pref").items()):
        prefs.rows.append([key, source, n, _share(n, customers)])
        by_key[key] = by_key.get(key, 0) + n
    prefs.chart = bars_svg(
        "share of customers with each preference known",
        [(k, n / customers if customers else 0.0) for k, n in sorted(by_key.items())],
        percent=True,
    )
    prefs.note = f"{customers} customers (not erased) in the snapshot of {f.snapshot_day or 'no day yet'}"
    kinds = ("asked", "answered", "skipped", "misunderstood", "reconfirmed")
    keys = sorted({k for k, _ in f.rows("q")} | {k for k, _ in f.rows("snap.dropoff")})
    questions = Figure(
        "questions", "learning", "Per question", ("question", *kinds, "dropped off here", "answer rate")
    )
    for key in keys:
        counts = [f.count("q", key, kind) for kind in kinds]
        asked = counts[0]
        questions.rows.append([key, *counts, f.count("snap.dropoff", key), _share(counts[1], asked)])
    questions.chart = bars_svg(
        "customers who dropped off at each question",
        [(str(r[0]), float(r[6] or 0)) for r in questions.rows if r[6]],
        empty="nobody dropped off at a question",
    )
    questions.note = "dropped off: the question is waiting for an answer for more than 48 hours"
    stale = Figure("stale", "learning", "Facts gone stale", ("question", "stale facts"))
    stale.rows = [[key, n] for (key, _), (n, _) in sorted(f.rows("snap.stale").items())]
    return [prefs, questions, stale]


def understanding(f: Figures, review_href: str, days: Sequence[date]) -> list[Figure]:
    turns = {k: n for (k, _), (n, _) in f.rows("turn").items()}
    total = sum(turns.values())
    not_understood = turns.get("unparsed", 0)
    intents = Figure("intents", "understanding", "Turns by intent", ("intent", "turns", "share"))
    intents.rows = [
        [k, n, _share(n, total)] for k, n in sorted(turns.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    share = _share(total - not_understood, total)
    intents.note = f"{total} customer turns; understood: {'-' if share is None else f'{share:.0%}'}"
    daily = {day: f.daily["understood"].get(day, 0) / n for day, n in f.daily.get("turn", {}).items() if n}
    intents.chart = daily_svg("share of turns understood, per day", days, daily)
    phrasings = Figure(
        "phrasings", "understanding", "Most frequent phrasings not understood", ("phrasing", "times")
    )
    ranked = sorted(f.rows("phrase").items(), key=lambda kv: (-kv[1][0], kv[0]))
    phrasings.rows = [[p, n] for (p, _), (n, _) in ranked[:20]]
    phrasings.links = [("Review and teach them", review_href)]
    started, handed = f.count("conv.started"), f.count("conv.handed")
    contained = f.count("conv.contained")
    handoffs = Figure("handoffs", "understanding", "Fallbacks, handoffs and containment", ("figure", "value"))
    handoffs.rows = [
        ["fallback replies", f.count("out", "fallback")],
        ["conversations started", started],
        ["handed to a person", handed],
        ["contained (never waited for a person)", contained],
        ["containment rate", _share(contained, started)],
    ]
    return [intents, phrasings, handoffs]


def suggestions(f: Figures) -> list[Figure]:
    offered, held, skipped = f.count("sugg.offered"), f.count("sugg.held"), f.count("sugg.skipped")
    answered = f.count("turn", "suggestion_yes") + f.count("turn", "suggestion_no")
    steps = [
        ("eligible", offered + held + skipped),
        ("offered", offered),
        ("delivered", f.count("sugg.delivered")),
        ("answered", answered),
        ("accepted", f.count("sugg.accepted")),
        ("switched", f.count("sugg.switched")),
    ]
    funnel = Figure("funnel", "suggestions", "Suggestions funnel", ("step", "count", "of eligible"))
    funnel.rows = [[name, n, _share(n, steps[0][1])] for name, n in steps]
    funnel.rows.append(["declined", f.count("sugg.declined"), None])
    funnel.chart = bars_svg("suggestions funnel", [(name, float(n)) for name, n in steps])
    funnel.note = (
        "eligible: a better plan was found (offered, held out, or not contactable); "
        "switched: confirmed by the billing system"
    )
    money = Figure("money", "suggestions", "Monthly savings", ("figure", "suggestions", "monthly savings"))
    money.rows = [
        ["offered", offered, f.amount("sugg.offered")],
        ["held out (would have been offered)", held, f.amount("sugg.held")],
        ["accepted", f.count("sugg.accepted"), f.amount("sugg.accepted")],
        ["switched", f.count("sugg.switched"), f.amount("sugg.switched")],
    ]
    money.note = (
        "offered: the difference of the monthly plan prices; accepted: the saving the customer was told"
    )
    return [funnel, money, holdout(f)]


def holdout(f: Figures) -> Figure:
    """Offered versus holdout customers: rates, the difference and its 95 % interval."""
    figure = Figure(
        "holdout",
        "suggestions",
        "Offered versus holdout",
        (
            "signal",
            "offered",
            "offered rate",
            "holdout",
            "holdout rate",
            "difference",
            "95% CI low",
            "95% CI high",
        ),
    )
    n1, n2 = f.count("cohort", "offered", "customers"), f.count("cohort", "holdout", "customers")
    figure.rows.append(["customers", n1, None, n2, None, None, None, None])
    for signal in ("switched", "opted_out", "erased"):
        x1, x2 = f.count("cohort", "offered", signal), f.count("cohort", "holdout", signal)
        if n1 and n2:
            diff, lo, hi = newcombe(x1, n1, x2, n2)
            figure.rows.append([signal, x1, x1 / n1, x2, x2 / n2, diff, lo, hi])
        else:
            figure.rows.append([signal, x1, _share(x1, n1), x2, _share(x2, n2), None, None, None])
    figure.note = (
        "customers by the day of their first offer decision in the range; what they did since. "
        "The interval is Newcombe's hybrid score interval: when it excludes 0 the difference is "
        "unlikely to be chance."
    )
    return figure


REACTIONS = ("replies", "accepted", "declined", "opt_outs")


def broadcasts(f: Figures, names: dict[int, str], price_per_segment: Decimal) -> list[Figure]:
    figure = Figure(
        "broadcasts",
        "broadcasts",
        "Broadcasts",
        ("broadcast", "sent", "delivered", "failed", *REACTIONS, "cost"),
    )
    ids = sorted({int(b) for b, _ in f.rows("bc.status")} | {int(b) for b, _ in f.rows("bc.react")})
    for b in ids:
        status: dict[str, int] = {}
        for (bid, key), (n, _) in f.rows("bc.status").items():
            if bid == str(b):
                kind = key.split(":", 1)[0]
                status[kind] = status.get(kind, 0) + n
        delivered = status.get("delivered", 0)
        sent = status.get("sent", 0) + delivered
        cost = (price_per_segment * f.count("bc.segments", str(b))).quantize(Decimal("0.01"))
        reactions = [f.count("bc.react", str(b), r) for r in REACTIONS]
        figure.rows.append(
            [names.get(b, f"#{b}"), sent, delivered, status.get("failed", 0), *reactions, cost]
        )
    figure.note = (
        "replies, accepts, declines and opt-outs within a week of the broadcast; cost: SMS segments sent"
    )
    return [figure]


def value(f: Figures) -> list[Figure]:
    by_plan = Figure(
        "value",
        "value",
        "Customers by monthly spend band and plan",
        ("spend band", "plan", "customers", "monthly revenue"),
    )
    by_plan.rows = [
        [band, plan, n, amount] for (band, plan), (n, amount) in sorted(f.rows("snap.value").items())
    ]
    bands: dict[str, int] = {}
    for (band, _), (n, _) in f.rows("snap.value").items():
        bands[band] = bands.get(band, 0) + n
    by_plan.chart = bars_svg("customers per spend band", sorted((b, float(n)) for b, n in bands.items()))
    labels = Figure(
        "labels",
        "value",
        "Who to keep, grow, or leave alone",
        ("spend band", "label", "customers", "monthly revenue"),
    )
    labels.rows = [
        [band, label, n, amount] for (band, label), (n, amount) in sorted(f.rows("snap.label").items())
    ]
    labels.note = (
        "keep: offered a cheaper plan that fits; grow: offered a dearer plan that fits better; "
        "leave alone: no better plan, declined one, or no consent to offers"
    )
    moved = Figure(
        "moved",
        "value",
        "Where accepted suggestions move revenue",
        ("spend band left", "switches", "monthly revenue moved"),
    )
    moved.rows = [[band, n, -amount] for (band, _), (n, amount) in sorted(f.rows("snap.moved").items())]
    return [by_plan, labels, moved]


def default_range(today: date, days: int = 30) -> tuple[date, date]:
    """The last ``days`` days, today included."""
    return today - timedelta(days=days - 1), today


# -- CSV ------------------------------------------------------------------------------------------------


def safe_cell(value: Cell) -> str:
    """A cell as text; one starting with = + - @ (or a tab or CR) is prefixed with ' so that a
    spreadsheet never reads it as a formula (a phrasing a customer typed, a broadcast's name)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    if isinstance(value, str) and text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def to_csv(figure: Figure) -> str:
    """The figure as CSV: its headers, then its rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(figure.headers)
    for row in figure.rows:
        writer.writerow([safe_cell(cell) for cell in row])
    return buffer.getvalue()


def cell_text(value: Cell, header: str) -> str:
    """A cell as the page shows it: shares and rates as percentages, money with two decimals."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if any(w in header for w in ("share", "rate", "of eligible", "difference", "CI")):
            return f"{value:+.1%}" if ("difference" in header or "CI" in header) else f"{value:.0%}"
        return f"{value:.3g}"
    if isinstance(value, Decimal):
        return f"{value:,.2f}"
    return str(value)


def iter_cells(figure: Figure) -> Iterable[list[str]]:
    for row in figure.rows:
        yield [cell_text(c, h) for c, h in zip(row, figure.headers, strict=True)]
