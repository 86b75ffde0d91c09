"""What a case's worker gets: its device, its rank, the config, the run folder, and collectives."""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from chipbench import safeio
from chipbench.device import Device
from chipbench.errors import HookTimedOut
from chipbench.manager import PluginHost
from chipbench.metrics import RunMeter, finite, reduce_ranks, throughput

RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.json"


def read_json_dict(path: Path, strict: bool = False) -> Dict[str, Any]:
    """The JSON object in run-folder file ``path``; {} where it is missing, unreadable or not an
    object. A file that is not a regular file (a symbolic link, a FIFO, a folder) or is over
    :data:`chipbench.safeio.RUN_JSON_LIMIT` is never read: {} too, or, where ``strict``, a
    one-line :class:`chipbench.safeio.FileRefused` naming it."""
    try:
        data = safeio.read_json(path, safeio.RUN_JSON_LIMIT)
    except safeio.FileRefused:
        if strict:
            raise
        return {}
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write strict JSON (NaN and infinities as null) through a temporary file created
    exclusively and a rename (:func:`chipbench.safeio.write_atomic`): readers never see half a
    file, every JSON reader can parse it, and no link in the run folder is written through."""
    text = json.dumps(finite(data), indent=2, default=str, allow_nan=False)
    safeio.write_atomic(path, text)


@dataclass
class RunContext:
    """One worker's view of a run. ``is_main`` is rank 0, which writes progress and reports."""

    spec: Dict[str, Any]
    config: Dict[str, Any]
    run_dir: Path
    host: PluginHost
    facade: Device
    device: Any
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("chipbench"))
    monitor: Any = None
    epochs: List[Dict[str, Any]] = field(default_factory=list)
    data: Dict[str, Any] = field(default_factory=dict)
    """What the case trains and evaluates on (images, annotations, boxes dropped): result.json's
    ``data``."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    def synchronize(self) -> None:
        """Wait for this rank's device (the vendor's synchronize hook)."""
        self.facade.synchronize(self.device)

    # -- collectives (no-ops in a single process) ---------------------------------------------------

    def all_gather(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        gathered: List[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def reduce_counters(self, local: Dict[str, Any]) -> Dict[str, Any]:
        """Counters of all ranks combined by :func:`chipbench.metrics.reduce_ranks`, with the
        throughputs (:func:`chipbench.metrics.throughput`) computed from them."""
        reduced = reduce_ranks(self.all_gather(local))
        reduced.update(throughput(reduced))
        return reduced

    def epoch_counters(self, meter: RunMeter) -> Dict[str, Any]:
        """The epoch's figures over all ranks (:meth:`reduce_counters`): ``meter``'s counters, the
        device allocator's peak and the monitor's summary."""
        local = meter.state()
        try:
            local["allocator_peak_bytes"] = self.facade.memory_peak(self.device)
        except HookTimedOut:  # reported and counted by the monitor: not measured
            local["allocator_peak_bytes"] = None
        local.update(self.monitor.summary() if self.monitor is not None else {})
        return self.reduce_counters(local)

    # -- progress -----------------------------------------------------------------------------------

    def epoch_end(self, epoch: int, metrics: Dict[str, Any]) -> None:
        """Record an epoch's figures (rank 0): ``progress.json`` and the ``on_epoch_end`` hook."""
        if self.monitor is not None:
            self.monitor.sample("epoch_end")
        if not self.is_main:
            return
        self.epochs.append(dict(metrics, epoch=epoch))
        self.save_progress(final=False)
        for failure in self.host.notify("on_epoch_end", run=self.run_info(), epoch=epoch,
                                        metrics=metrics):
            self.log.warning(failure)

    def save_progress(self, final: bool, metrics: Optional[Dict[str, Any]] = None) -> None:
        """Write what was measured so far, so that a failure loses nothing already finished."""
        if not self.is_main:
            return
        latest = metrics if metrics is not None else (self.epochs[-1] if self.epochs else {})
        write_json_atomic(self.run_dir / PROGRESS_FILE,
                          {"final": final, "epochs": self.epochs, "metrics": latest,
                         "data": self.data})

    def run_info(self) -> Dict[str, Any]:
        return {"run_dir": str(self.run_dir), "case": self.spec["case"],
                "vendor": self.spec["vendor"], "config": self.config}
