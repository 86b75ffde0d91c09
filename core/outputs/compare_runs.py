"""Loading the run folders of ``core compare``: each one's ``result.json`` read into its record
(refused in one line where ``core run`` did not write it as it stands) and labelled so that every
row and legend can be told apart."""

from dataclasses import replace
from pathlib import Path
from typing import List, Sequence

from chipbench.errors import UserError
from chipbench.measure.flops import checked_mfu
from chipbench.run.jsonrecord import FIX_RESULT
from chipbench.run.resultrecord import Metrics, RunResult
from chipbench.util import safeio
from chipbench.util.text import shorten

LABEL_LIMIT = 100
"""Characters of a run's label (its row_label, or its folder's name) in rows and warnings."""
FIX_FOLDER = "give run folders written by `core run` (copy the whole folder)"


def metric_of(result: RunResult) -> str:
    """The case's target metric ("mAP", "accuracy", ...)."""
    return result.metric_name


def label_of(result: RunResult, path: Path) -> str:
    """A run's label as read: its row_label, or its folder's name; long ones cut in the middle
    (text from the file: each output escapes it for where it goes)."""
    return shorten(result.row_label or path.name, LABEL_LIMIT)


class RunFolder:
    """One run folder's result, with the label it gets in the comparison."""

    def __init__(self, path: Path, result: RunResult) -> None:
        self.path = path
        self.result = result
        self.label = label_of(result, path)
        self.folder_name = path.name
        """As much of the folder's path as tells it apart from the other runs' (label_runs)."""

    @property
    def chart_label(self) -> str:
        """Short and distinct for chart legends: folder, hardware, topology, precision."""
        topology = self.result.topology or {}
        return "{}: {} {}x{} {}".format(
            self.folder_name, *(shorten(part, 40) for part in (
                (self.result.hardware or {}).get("label", "?"),
                topology.get("nnodes", "?"), topology.get("nproc_per_node", "?"),
                self.result.precision or "?")))

    @property
    def metrics(self) -> Metrics:
        return self.result.metrics


def load_run(path: str) -> RunFolder:
    """Read and check ``result.json`` of a run folder (or the file itself). Only a regular file
    is read, at most :data:`chipbench.util.safeio.RUN_JSON_LIMIT` bytes, and a ``result.json`` in a
    folder not through a link: a FIFO, a device or a link is refused in one line, never
    waited on or read without end."""
    folder = Path(path)
    kind = safeio.kind_of(folder)
    if kind is None:
        raise UserError("{} does not exist".format(path), FIX_FOLDER)
    in_folder = kind == "a folder"
    file = folder / "result.json" if in_folder else folder
    try:
        data = safeio.read_json(file, safeio.RUN_JSON_LIMIT, follow=not in_folder,
                                what="result file", fix=FIX_RESULT)
    except FileNotFoundError:
        raise UserError("{} holds no result.json".format(path), FIX_FOLDER) from None
    except OSError as exc:
        raise UserError("cannot read {} ({})".format(file, exc.strerror or exc),
                        "give run folders written by `core run` you can read") from None
    except (ValueError, RecursionError) as exc:
        raise UserError("{} is not valid JSON ({})".format(file, exc),
                        "give run folders written by `core run`") from None
    result = RunResult.from_json(data, file)
    # the MFU rule of every output (a figure above 100 % written before it, or by hand, is flagged)
    metrics = Metrics.from_json(checked_mfu(result.metrics.to_json()), file)
    return RunFolder(file.parent, replace(result, metrics=metrics))


def label_runs(runs: List[RunFolder]) -> None:
    """Runs that share a row label get their folder added (as much of its path as tells them
    apart), so every row can be told apart; chart legends name each folder the same way."""
    def base(run: RunFolder) -> str:
        return label_of(run.result, run.path)

    for run in runs:
        same = [r for r in runs if base(r) == base(run)]
        if len(same) < 2:
            continue
        run.label = "{} [{}]".format(base(run), _tail(run.path, _telling_depth(same)))
    depth = _telling_depth(runs)
    for run in runs:
        run.folder_name = _tail(run.path, depth)


def _telling_depth(runs: Sequence[RunFolder]) -> int:
    """The fewest trailing path parts that tell the folders of ``runs`` apart."""
    longest = max(len(r.path.resolve().parts) for r in runs)
    depth = 1
    while depth < longest and len({_tail(r.path, depth) for r in runs}) < len(runs):
        depth += 1
    return depth


def _tail(path: Path, depth: int) -> str:
    return "/".join(path.resolve().parts[-depth:])
