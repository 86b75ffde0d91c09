"""SVG charts written without a plotting library: line charts of stacked panels (with phase
bands and per-run lanes) and bar charts.

Every chart has axes with ticks, values and units, its legend to the right of the plot area (never
over the data), and reference lines where they mean something. Long labels are shortened in legends
and kept whole in a ``<title>`` tooltip. Every text drawn (labels, legends, titles, tooltips) may
come from a run folder or a plugin: it is written through :func:`chipbench.util.text.xml_text`
(XML-escaped, control characters removed).
"""
import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

from chipbench.measure.metrics import is_number
from chipbench.util.text import VALUE_LIMIT, shorten, xml_text

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
PHASE_COLOURS = {"eval": "#f4d03f", "checkpoint": "#a9cce3", "setup": "#d5d8dc",
                 "data wait": "#f5b7b1"}
WIDTH = 720
LEFT, RIGHT, TOP, BOTTOM = 64, 220, 28, 44
PANEL_HEIGHT = 220
LEGEND_CHARS = 30
TOOLTIP_CHARS = 500
"""Characters of a ``<title>`` tooltip, which holds a label whole (labels are bounded before)."""


@dataclass
class Series:
    """One line: a name for the legend, a colour and (x, y) points."""

    name: str
    colour: str
    points: Sequence[Tuple[float, float]]
    dashed: bool = False

    def __post_init__(self) -> None:
        # only finite numbers are drawn: a run's record may hold None, text or NaN for a figure
        self.points = [(float(x), float(y)) for x, y in self.points
                       if is_number(x) and is_number(y)]


@dataclass
class Panel:
    """One plot area with its own y axis (label with unit), optional fixed range, reference
    lines ``(y, label)`` and shaded x ranges ``(x0, x1, label)``."""

    y_label: str
    series: List[Series]
    y_range: Optional[Tuple[float, float]] = None
    hlines: List[Tuple[float, str]] = field(default_factory=list)
    bands: List[Tuple[float, float, str]] = field(default_factory=list)
    lanes: List["Lane"] = field(default_factory=list)


@dataclass
class Lane:
    """One run's row of a phases panel: its name and colour (as its lines have), the time span it
    was sampled over and its shaded phases ``(x0, x1, phase)``."""

    name: str
    colour: str
    span: Tuple[float, float]
    bands: List[Tuple[float, float, str]]


def nice_ticks(low: float, high: float, count: int = 5, integer: bool = False) -> List[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten; whole numbers when ``integer``)
    covering ``low``..``high``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    if integer:
        step = max(1.0, float(math.ceil(step)))
    first = math.floor(low / step + 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-6:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def tick_text(value: float) -> str:
    """A tick label: 0.25, 12, 1.5k, 2M."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e6:
        return "{:g}M".format(round(value / 1e6, 3))
    if magnitude >= 1e4:
        return "{:g}k".format(round(value / 1e3, 3))
    return "{:g}".format(round(value, 6))


def short(label: str, limit: int = LEGEND_CHARS) -> str:
    """``label`` cut to ``limit`` characters, a bare ellipsis in the middle (the ends of run labels
    are what tells them apart; the tooltip holds the whole label)."""
    return shorten(label, limit, count=False)


def _text(x: float, y: float, text: str, anchor: str = "start", extra: str = "") -> str:
    """A ``<text>`` element: ``text`` escaped for XML, cut to
    :data:`chipbench.util.text.VALUE_LIMIT` characters."""
    return '<text x="{:.1f}" y="{:.1f}" text-anchor="{}"{}>{}</text>'.format(
        x, y, anchor, extra, xml_text(text, VALUE_LIMIT))


def _tooltip(text: str) -> str:
    """A ``<title>`` element (the tooltip): ``text`` escaped for XML."""
    return "<title>{}</title>".format(xml_text(text, TOOLTIP_CHARS))


def _y_bounds(panel: Panel) -> Tuple[float, float]:
    if panel.y_range is not None:
        return panel.y_range
    ys = [y for s in panel.series for _, y in s.points] + [y for y, _ in panel.hlines]
    if not ys:
        return 0.0, 1.0
    low, high = min(min(ys), 0.0), max(ys)
    return low, high if high > low else low + 1.0


def _lane_parts(panel: Panel, px: Callable[[float], float], top: float, bottom: float,
                legend_x: float, legend_y: float) -> Tuple[List[str], float]:
    """A phases panel: one row per run (numbered on the y axis, named in the legend), its sampled
    span as a line in the run's colour and its phases shaded; returns the parts and the next
    legend line."""
    parts: List[str] = []
    height = (bottom - top) / max(len(panel.lanes), 1)
    for index, lane in enumerate(panel.lanes):
        y0 = top + index * height
        label = "run {}".format(index + 1)
        if index:
            parts.append('<line x1="{}" y1="{:.1f}" x2="{}" y2="{:.1f}" stroke="#e5e5e5"/>'.format(
                LEFT, y0, legend_x - 8, y0))
        parts.append(_text(LEFT - 6, y0 + height / 2 + 4, label, "end", ' class="lane"'))
        for x0, x1, phase in lane.bands:
            parts.append('<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}" fill="{}" '
                         'opacity="0.45">{}</rect>'.format(
                             px(x0), y0 + 3, max(px(x1) - px(x0), 1.0), max(height - 6, 1.0),
                             PHASE_COLOURS.get(phase, "#e5e7e9"),
                             _tooltip("{}: {}".format(lane.name, phase))))
        parts.append('<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="3" fill="{}">{}'
                     '</rect>'.format(px(lane.span[0]), y0 + height / 2 - 1.5,
                                      max(px(lane.span[1]) - px(lane.span[0]), 1.0), lane.colour,
                                      _tooltip(lane.name)))
        parts.append('<rect x="{:.1f}" y="{:.1f}" width="12" height="4" fill="{}"/>'.format(
            legend_x, legend_y - 5, lane.colour))
        parts.append(_text(legend_x + 16, legend_y, "{}: {}".format(
            label, short(lane.name, LEGEND_CHARS - len(label) - 2))))
        legend_y += 15
    return parts, legend_y


def chart(title: str, x_label: str, panels: List[Panel],
          x_range: Optional[Tuple[float, float]] = None, integer_x: bool = False) -> str:
    """An SVG of ``panels`` stacked over one shared x axis (``x_label`` with its unit)."""
    last_bottom = TOP + 8 + (len(panels) - 1) * (PANEL_HEIGHT + 16) + PANEL_HEIGHT - 24
    height = last_bottom + BOTTOM
    plot_w = WIDTH - LEFT - RIGHT
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" '
             'font-family="sans-serif" font-size="11">'.format(WIDTH, height),
             '<rect width="100%" height="100%" fill="white"/>',
             _text(LEFT, 18, title, extra=' font-size="14" font-weight="bold"')]
    xs = [x for p in panels for s in p.series for x, _ in s.points]
    xs += [x for p in panels for b in p.bands for x in b[:2]]
    xs += [x for p in panels for lane in p.lanes for x in lane.span]
    if x_range is None:
        x_range = (min(xs), max(xs)) if xs else (0.0, 1.0)
    x_ticks = nice_ticks(x_range[0], x_range[1], 8, integer_x)
    x_lo, x_hi = x_ticks[0], x_ticks[-1]

    def px(x: float) -> float:
        return LEFT + (x - x_lo) / ((x_hi - x_lo) or 1.0) * plot_w

    for index, panel in enumerate(panels):
        top = TOP + 8 + index * (PANEL_HEIGHT + 16)
        bottom = top + PANEL_HEIGHT - 24
        y_ticks = [] if panel.lanes else nice_ticks(*_y_bounds(panel))
        y_lo, y_hi = (y_ticks[0], y_ticks[-1]) if y_ticks else (0.0, 1.0)

        def py(y: float, y_lo: float = y_lo, y_hi: float = y_hi, top: float = top,
               bottom: float = bottom) -> float:
            return bottom - (y - y_lo) / ((y_hi - y_lo) or 1.0) * (bottom - top)

        for x0, x1, label in panel.bands:
            parts.append('<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}" fill="{}" '
                         'opacity="0.45">{}</rect>'.format(
                             px(x0), top, max(px(x1) - px(x0), 1.0), bottom - top,
                             PHASE_COLOURS.get(label, "#e5e7e9"), _tooltip(label)))
        for y in y_ticks:
            parts.append('<line x1="{}" y1="{:.1f}" x2="{}" y2="{:.1f}" stroke="#e5e5e5"/>'.format(
                LEFT, py(y), LEFT + plot_w, py(y)))
            parts.append('<line x1="{}" y1="{:.1f}" x2="{}" y2="{:.1f}" stroke="black"/>'.format(
                LEFT - 4, py(y), LEFT, py(y)))
            parts.append(_text(LEFT - 6, py(y) + 4, tick_text(y), "end", ' class="ytick"'))
        for x in x_ticks:
            parts.append('<line x1="{:.1f}" y1="{}" x2="{:.1f}" y2="{}" stroke="black"/>'.format(
                px(x), bottom, px(x), bottom + 4))
            parts.append(_text(px(x), bottom + 15, tick_text(x), "middle", ' class="xtick"'))
        parts.append('<rect x="{}" y="{:.1f}" width="{}" height="{:.1f}" fill="none" '
                     'stroke="black"/>'.format(LEFT, top, plot_w, bottom - top))
        parts.append(_text(16, (top + bottom) / 2, panel.y_label, "middle",
                           ' transform="rotate(-90 16 {:.1f})"'.format((top + bottom) / 2)))
        lane_parts, legend_y = _lane_parts(panel, px, top, bottom, LEFT + plot_w + 8, top + 10.0)
        parts += lane_parts
        for y, label in panel.hlines:
            parts.append('<line x1="{}" y1="{:.1f}" x2="{}" y2="{:.1f}" stroke="#555" '
                         'stroke-dasharray="6,3"/>'.format(LEFT, py(y), LEFT + plot_w, py(y)))
            parts.append(_text(LEFT + plot_w + 8, legend_y, "- - " + short(label)))
            legend_y += 15
        for series in panel.series:
            if not series.points:
                continue
            coords = " ".join("{:.1f},{:.1f}".format(px(x), py(y)) for x, y in series.points)
            dash = ' stroke-dasharray="4,2"' if series.dashed else ""
            parts.append('<polyline fill="none" stroke="{}" stroke-width="2"{} points="{}">'
                         '{}</polyline>'.format(series.colour, dash, coords,
                                                _tooltip(series.name)))
            if len(series.points) == 1:
                x, y = series.points[0]
                parts.append('<circle cx="{:.1f}" cy="{:.1f}" r="3" fill="{}"/>'.format(
                    px(x), py(y), series.colour))
            parts.append('<line x1="{0}" y1="{1:.1f}" x2="{2}" y2="{1:.1f}" stroke="{3}" '
                         'stroke-width="3"{4}/>'.format(LEFT + plot_w + 8, legend_y - 3,
                                                        LEFT + plot_w + 20, series.colour, dash))
            parts.append(_text(LEFT + plot_w + 24, legend_y, short(series.name)))
            legend_y += 15
        phases = {b[2] for b in panel.bands} | {b[2] for lane in panel.lanes for b in lane.bands}
        for label in sorted(phases, key=str):  # a hand-edited phase may be a number
            parts.append('<rect x="{}" y="{:.1f}" width="12" height="10" fill="{}" '
                         'opacity="0.45"/>'.format(LEFT + plot_w + 8, legend_y - 9,
                                                   PHASE_COLOURS.get(label, "#e5e7e9")))
            parts.append(_text(LEFT + plot_w + 24, legend_y, "phase: {}".format(short(label))))
            legend_y += 15
    parts.append(_text(LEFT + plot_w / 2, last_bottom + 34, x_label, "middle"))
    parts.append("</svg>")
    return "\n".join(parts)


def bar_chart(title: str, labels: Sequence[str], values: Sequence[Optional[float]],
              x_label: str) -> str:
    """Horizontal bars, one per label (run labels read in full on the left)."""
    label_w = 260
    row_h = 26
    plot_w = WIDTH - label_w - 40
    height = TOP + 16 + row_h * max(len(labels), 1) + BOTTOM
    values = [float(v) if v is not None and is_number(v) else None for v in values]
    known = [v for v in values if v is not None]
    ticks = nice_ticks(0.0, max(known) if known else 1.0)
    hi = ticks[-1] or 1.0
    bottom = TOP + 16 + row_h * len(labels)
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" '
             'font-family="sans-serif" font-size="11">'.format(WIDTH, height),
             '<rect width="100%" height="100%" fill="white"/>',
             _text(10, 18, title, extra=' font-size="14" font-weight="bold"')]
    for x in ticks:
        xpos = label_w + x / hi * plot_w
        parts.append('<line x1="{:.1f}" y1="{}" x2="{:.1f}" y2="{}" stroke="#e5e5e5"/>'.format(
            xpos, TOP + 16, xpos, bottom))
        parts.append('<line x1="{:.1f}" y1="{}" x2="{:.1f}" y2="{}" stroke="black"/>'.format(
            xpos, bottom, xpos, bottom + 4))
        parts.append(_text(xpos, bottom + 15, tick_text(x), "middle", ' class="xtick"'))
    for row, (label, value) in enumerate(zip(labels, values)):
        y = TOP + 16 + row * row_h
        parts.append(_text(label_w - 8, y + row_h / 2 + 4, short(label, 40), "end",
                           ' class="ytick"'))
        if value is None:
            parts.append(_text(label_w + 4, y + row_h / 2 + 4, "not measured"))
            continue
        parts.append('<rect x="{}" y="{:.1f}" width="{:.1f}" height="{}" fill="{}">'
                     '{}</rect>'.format(label_w, y + 4, value / hi * plot_w, row_h - 8,
                                        COLOURS[row % len(COLOURS)], _tooltip(label)))
        parts.append(_text(label_w + value / hi * plot_w + 4, y + row_h / 2 + 4,
                           "{:.4g}".format(value)))
    parts.append('<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="black"/>'.format(
        label_w, TOP + 16, label_w, bottom))
    parts.append('<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="black"/>'.format(
        label_w, bottom, label_w + plot_w, bottom))
    parts.append(_text(label_w + plot_w / 2, height - 10, x_label, "middle"))
    parts.append("</svg>")
    return "\n".join(parts)
