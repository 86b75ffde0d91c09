"""Small SVG line charts of a run (no plotting library needed): per-epoch loss and mAP, and the
device memory the monitor sampled. Written by the report plugin into ``plots/``."""

import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple
from xml.sax.saxutils import escape

WIDTH, HEIGHT, PAD = 480, 240, 40


def line_chart(title: str, series: Sequence[Tuple[str, str, Sequence[Tuple[float, float]]]],
               x_label: str) -> str:
    """An SVG chart; ``series`` holds (name, colour, points), each scaled to its own maximum."""
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" '
             'font-family="sans-serif" font-size="11">'.format(WIDTH, HEIGHT),
             '<rect width="100%" height="100%" fill="white"/>',
             '<text x="{}" y="16" font-size="13">{}</text>'.format(PAD, escape(title)),
             '<line x1="{p}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/>'.format(
                 p=PAD, b=HEIGHT - PAD, r=WIDTH - PAD),
             '<line x1="{p}" y1="{t}" x2="{p}" y2="{b}" stroke="black"/>'.format(
                 p=PAD, t=PAD, b=HEIGHT - PAD),
             '<text x="{}" y="{}">{}</text>'.format(WIDTH // 2, HEIGHT - 8, escape(x_label))]
    xs = [x for _, _, points in series for x, _ in points]
    x_min, x_max = (min(xs), max(xs)) if xs else (0.0, 1.0)
    for row, (name, colour, points) in enumerate(series):
        if not points:
            continue
        top = max(y for _, y in points) or 1.0
        coords = " ".join("{:.1f},{:.1f}".format(
            PAD + (x - x_min) / ((x_max - x_min) or 1.0) * (WIDTH - 2 * PAD),
            HEIGHT - PAD - y / top * (HEIGHT - 2 * PAD)) for x, y in points)
        parts.append('<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>'.format(
            colour, coords))
        parts.append('<text x="{}" y="{}" fill="{}">{} (max {:.4g})</text>'.format(
            WIDTH - PAD - 150, PAD + 14 * row, colour, escape(name), top))
    parts.append("</svg>")
    return "\n".join(parts)


def _monitor_points(path: Path) -> List[Tuple[float, float]]:
    points: List[Tuple[float, float]] = []
    start: Optional[float] = None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "mem_used_bytes" not in record:
            continue
        start = record["time"] if start is None else start
        points.append((record["time"] - start, record["mem_used_bytes"] / 2**30))
    return points


def write_plots(run_dir: Path, epochs: List[dict]) -> List[Path]:
    """Write ``plots/epochs.svg`` and ``plots/memory.svg``; returns the files written."""
    folder = Path(run_dir) / "plots"
    folder.mkdir(exist_ok=True)
    written = []
    if epochs:
        chart = line_chart("loss and mAP per epoch", [
            ("loss", "#c0392b", [(e["epoch"], e.get("loss", 0.0)) for e in epochs]),
            ("mAP", "#2471a3", [(e["epoch"], e["mAP"]) for e in epochs
                                if e.get("mAP") is not None])], "epoch")
        (folder / "epochs.svg").write_text(chart)
        written.append(folder / "epochs.svg")
    monitor = sorted((Path(run_dir) / "monitor").glob("rank*.jsonl"))
    if monitor:
        colours = ("#117a65", "#af601a", "#6c3483", "#2e4053")
        series = [("{} GiB".format(p.stem), colours[i % len(colours)], _monitor_points(p))
                  for i, p in enumerate(monitor)]
        (folder / "memory.svg").write_text(line_chart("device memory used", series, "seconds"))
        written.append(folder / "memory.svg")
    return written
