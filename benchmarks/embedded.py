"""The README's main job (`core run cases/retinanet`, the embedded default): iterations to target
and where the wall time goes.

Runs the command (or reads a finished run folder with ``--run-dir``) and splits its wall time:
start-up (command start to the first training iteration, from rank 0's log), data (train time
outside the synchronised forward + backward + step intervals), train (those intervals),
evaluation, checkpoint (each epoch's checkpoint and progress.json, from rank 0's log) and report
(the rest: result, report.md, plots, exit).

    python benchmarks/embedded.py [--set key=value ...] [--run-dir runs/<run>] [--json out.json]

Goal: the whole command in at most 180 s on a 2-core CPU, target unchanged (mAP 0.35).
"""

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"


def log_time(line: str) -> float:
    """The epoch seconds of a rank-0 log line (``2026-11-30 05:23:17,579 rank0 ...``)."""
    return datetime.datetime.strptime(line[:23], LOG_TIME).timestamp()


def first_training_line(run_dir: Path) -> Optional[float]:
    for line in (run_dir / "logs" / "rank0.log").read_text().splitlines():
        if " training retinanet:" in line:
            return log_time(line)
    return None


def checkpoint_seconds(run_dir: Path) -> float:
    """Seconds between each epoch's ``epoch N done`` and ``epoch N recorded`` lines of rank 0:
    writing the checkpoint and progress.json."""
    done: Dict[str, float] = {}
    total = 0.0
    for line in (run_dir / "logs" / "rank0.log").read_text().splitlines():
        words = line[24:].split()  # after the time stamp: rank0 epoch N done|recorded ...
        if len(words) >= 4 and words[1] == "epoch" and words[3].rstrip(":") in ("done", "recorded"):
            if words[3].startswith("done"):
                done[words[2]] = log_time(line)
            elif words[2] in done:
                total += log_time(line) - done.pop(words[2])
    return total


def split(run_dir: Path, launched: Optional[float], wall: Optional[float]) -> Dict[str, Any]:
    """The wall split of a finished run (``launched``/``wall`` from outside, when we ran it)."""
    result = json.loads((run_dir / "result.json").read_text())
    m = result["metrics"]
    if wall is None:
        wall = float(m["e2e_time"])
    if launched is None:
        started = datetime.datetime.strptime(result["started_at"], "%Y-%m-%dT%H:%M:%S%z")
        launched = started.timestamp()
    start_up = (first_training_line(run_dir) or launched) - launched
    train, core, evaluation = m["train_seconds"], m["core_seconds"], m["eval_seconds"]
    parts = {"start-up": start_up, "data": train - core, "train": core, "eval": evaluation,
             "checkpoint": checkpoint_seconds(run_dir)}
    parts["report"] = max(0.0, wall - sum(parts.values()))
    epochs: List[Dict[str, Any]] = result.get("epochs", [])
    return {"status": result["status"], "converged": m.get("converged"), "mAP": m.get("mAP"),
            "iterations": m.get("iterations"), "epochs": m.get("epochs"), "wall_s": wall,
            "e2e_time": m.get("e2e_time"), "p_core": m.get("p_core"), "p_train": m.get("p_train"),
            "split_s": parts, "mAP_per_epoch": [round(e["mAP"], 4) if "mAP" in e else None
                                               for e in epochs],  # None: not evaluated
            "fix_hp": m.get("fix_hp")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="passed to core run")
    parser.add_argument("--run-dir", help="analyse this finished run instead of running one")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.run_dir:
        figures = split(Path(args.run_dir), None, None)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            cmd = [sys.executable, "-m", "chipbench", "run", "cases/retinanet", "--output",
                   str(out)]
            for item in args.set:
                cmd += ["--set", item]
            launched = time.time()
            subprocess.run(cmd, cwd=str(ROOT), check=False, stdout=subprocess.DEVNULL)
            figures = split(out, launched, time.time() - launched)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    print("status {status}, converged {converged}, mAP {mAP:.4f} after {epochs} epochs, "
          "{iterations} iterations; p_core {p_core:.2f}, p_train {p_train:.2f} img/s".format(
              **figures))
    print("mAP per epoch: {}".format(figures["mAP_per_epoch"]))
    wall = figures["wall_s"]
    print("wall {:.1f} s: ".format(wall) + ", ".join(
        "{} {:.1f} s ({:.0%})".format(k, v, v / wall) for k, v in figures["split_s"].items()))
    print("iterations to target {}; wall {:.0f} s (goal <= 180 s on 2 cores)".format(
        figures["iterations"] if figures["converged"] else "not reached", wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
