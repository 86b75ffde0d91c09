"""What a case's worker gets (``ctx``): its device, its rank, the config, the run folder, the meter,
collectives, and the helpers every training loop needs (docs/cases.md).

Every device call goes through the vendor's hooks (``facade``), so a case that uses only ``ctx``
runs unchanged on every vendor, in one process or many under torchrun. Importing this module
imports no torch: the helpers that need it import it when called.
"""

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    ContextManager,
    Dict,
    Iterable,
    Iterator,
    List,
    NamedTuple,
    Optional,
)

from chipbench.errors import ChipbenchError, HookTimedOut, PluginError, UserError
from chipbench.host.device import Device
from chipbench.host.manager import PluginHost
from chipbench.measure.metrics import RunMeter, reduce_ranks, throughput
from chipbench.run.runfiles import (
    CHECKPOINT_FILE,
    PROGRESS_FILE,
    RESULT_FILE,
    read_json_dict,
    write_json_atomic,
)
from chipbench.util.text import shown

if TYPE_CHECKING:
    import torch

    from chipbench.measure.monitor import DeviceMonitor

DATA_WAIT_PHASE = "data wait"
"""The monitor's phase while training waits for the data loader (:meth:`RunContext.batches`)."""
DEFAULT_LOADER_WORKERS = 4
"""The seed's loader workers per process, where neither the config nor the vendor chooses."""


class RecordedEpochs(NamedTuple):
    """The epoch records a run folder holds (:meth:`RunContext.recorded_epochs`)."""

    epochs: List[Any]
    source: str
    """The file they come from: ``progress.json``, else ``result.json``."""
    strict: bool
    """Whether they are ``progress.json``'s: written after each epoch's checkpoint, so at most
    one epoch behind it (``result.json`` is written when an attempt ends: it may lag more)."""


@dataclass
class CoreStep:
    """One training iteration timed by :meth:`RunContext.core_step`; filled in when it ends."""

    samples: int
    timed: bool
    seconds: Optional[float] = None
    """Its forward + backward + step between two synchronizations; None where not timed."""
    end: float = 0.0
    """``time.perf_counter()`` when it ended."""
    counted: bool = False
    """Whether it counts towards throughput (after the meter's ``skip_iters``)."""


@dataclass
class RunContext:
    """One worker's view of a run. ``is_main`` is rank 0, which writes progress and reports."""

    spec: Dict[str, Any]
    config: Dict[str, Any]
    run_dir: Path
    host: PluginHost
    facade: Device
    device: "torch.device"
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("chipbench"))
    monitor: Optional["DeviceMonitor"] = None
    epochs: List[Dict[str, Any]] = field(default_factory=list)
    data: Dict[str, Any] = field(default_factory=dict)
    """What the case trains and evaluates on (images, annotations, boxes dropped; ``caveats``:
    one-line texts the report shows verbatim): result.json's ``data``."""
    meter: RunMeter = field(default_factory=RunMeter)
    """This rank's counters: :meth:`batches` and :meth:`core_step` fill it; a case may replace it
    (``RunMeter(skip_iters=...)``) before training, :meth:`resume` does on a resume."""
    on_step: Optional[Callable[[], None]] = None
    """Called once at the end of every training iteration (:meth:`step_done`): where a profiler
    steps."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """Whether the run has several processes (torchrun)."""
        return self.world_size > 1

    @property
    def resuming(self) -> bool:
        """Whether this run continues an earlier attempt (``core run --resume``)."""
        return bool(self.spec.get("resume"))

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_FILE

    # -- the device, through the vendor's hooks ----------------------------------------------------

    def synchronize(self) -> None:
        """Wait for this rank's device (the vendor's synchronize hook)."""
        self.facade.synchronize(self.device)

    def configure(self, deterministic: bool, autotune: bool) -> None:
        """Apply the run's determinism and kernel-autotuning switches (the vendor's hook)."""
        self.facade.configure(self.device, deterministic, autotune)

    def reset_memory_peak(self) -> None:
        """Start the allocator's peak anew (after setup, before training)."""
        self.facade.memory_reset_peak(self.device)

    def memory_total_bytes(self) -> Optional[int]:
        """The device's memory in bytes; None where the vendor's hook fails (the monitor warns
        about it and counts it)."""
        try:
            return int(self.facade.memory_query(self.device).total_bytes)
        except ChipbenchError:
            return None

    def autocast(self, precision: str) -> ContextManager[Any]:
        """A fresh autocast context for ``precision`` on this device (a null one for fp32)."""
        from chipbench.host.contract import PRECISION

        if precision not in PRECISION:
            raise UserError("unknown precision '{}'".format(precision),
                            "use one of {}".format(", ".join(PRECISION)))
        dtype = PRECISION[precision].autocast
        if dtype is None:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_type=self.device.type, dtype=getattr(torch, dtype))

    def grad_scaler(self, precision: str) -> Optional[Any]:
        """The dynamic loss scaler ``precision`` needs (the vendor's, else torch's); None for
        fp32 and bf16."""
        return self.facade.grad_scaler(self.device, precision)

    def loader_workers(self, configured: Optional[int]) -> int:
        """Loader worker processes for this rank: the vendor's choice (its hook also budgets its
        compute threads for them), else ``configured``, else (None) the seed's 4 capped at the
        cores per rank less one."""
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size) or 1)
        chosen = self.facade.loader_workers(configured, local_world_size)
        if chosen is not None:
            return chosen
        if configured is not None:
            return int(configured)
        cores = (os.cpu_count() or 1) // max(1, local_world_size)
        return max(0, min(DEFAULT_LOADER_WORKERS, cores - 1))

    def distributed(self, model: "torch.nn.Module") -> "torch.nn.Module":
        """``model`` wrapped for data-parallel training over the ranks (DDP, on this rank's
        device); ``model`` itself in one process."""
        if not self.is_distributed:
            return model
        import torch

        ids = [self.device.index] if self.device.type != "cpu" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def phase(self, name: str) -> None:
        """Label the monitor's next samples with ``name`` (train, eval, checkpoint, ...)."""
        if self.monitor is not None:
            self.monitor.set_phase(name)

    # -- the training loop's measurements ----------------------------------------------------------

    def batches(self, loader: Iterable[Any], max_iters: int = 0) -> Iterator[Any]:
        """The batches of ``loader``, each wait for one (starting the loader's workers, then
        every ``next()``) added to the meter's ``data_seconds``; none is fetched once the run's
        ``max_iters`` iterations (0: no limit) are done. While it waits, the monitor's samples are
        labelled with the phase :data:`DATA_WAIT_PHASE` (the timeline shades them)."""
        monitor = self.monitor
        start = time.perf_counter()
        iterator = iter(loader)
        while not (max_iters and self.meter.seen_iterations >= max_iters):
            phase = monitor.phase if monitor is not None else ""
            if monitor is not None:
                monitor.phase = DATA_WAIT_PHASE
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                if monitor is not None:
                    monitor.phase = phase
            self.meter.add_data_wait(time.perf_counter() - start)
            yield batch
            start = time.perf_counter()

    @contextlib.contextmanager
    def core_step(self, samples: int, timed: bool = True) -> Iterator[CoreStep]:
        """Time the body (forward + backward + optimizer step of ``samples`` samples) between two
        synchronizations, add the iteration to the meter and call :meth:`step_done`. Untimed
        (``timed`` False): no synchronization, the iteration is counted without core time. An
        exception in the body records nothing."""
        step = CoreStep(samples, timed)
        if timed:
            self.synchronize()
        start = time.perf_counter()
        yield step
        if timed:
            self.synchronize()
        step.end = time.perf_counter()
        step.seconds = step.end - start if timed else None
        step.counted = self.meter.counting()
        self.meter.add_iteration(samples, step.seconds)
        self.step_done()

    def step_done(self) -> None:
        """The one place where a training iteration ends (:meth:`core_step` calls it): calls
        :attr:`on_step`, where a profiler steps."""
        if self.on_step is not None:
            self.on_step()

    # -- FLOPs and MFU -----------------------------------------------------------------------------

    def flops_facts(self, precision: str, flops_per_sample: Optional[float],
                    how_counted: str = "") -> Dict[str, Any]:
        """What the run records once at its start: the training step's FLOPs per sample (None
        where torch has no counter), how they were counted, and the vendor's peak per device."""
        from chipbench.measure.flops import run_start_facts

        return run_start_facts(self.facade, self.device, precision, flops_per_sample, how_counted)

    def flops_figures(self, facts: Dict[str, Any], p_core: Optional[float]) -> Dict[str, Any]:
        """``flops_per_image``, ``achieved_tflops``, ``peak_tflops`` and ``mfu`` of an epoch from
        :meth:`flops_facts` and its ``p_core`` (samples/s over all ranks)."""
        from chipbench.measure.flops import figures

        return figures(facts, p_core, self.world_size)

    # -- collectives (no-ops in a single process) ---------------------------------------------------

    def all_gather(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.is_distributed:
            return [obj]
        import torch.distributed as dist

        gathered: List[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.is_distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def reduce_counters(self, local: Dict[str, Any]) -> Dict[str, Any]:
        """Counters of all ranks combined by :func:`chipbench.measure.metrics.reduce_ranks`, with the
        throughputs (:func:`chipbench.measure.metrics.throughput`) computed from them."""
        reduced = reduce_ranks(self.all_gather(local))
        reduced.update(throughput(reduced))
        return reduced

    def epoch_counters(self, meter: Optional[RunMeter] = None) -> Dict[str, Any]:
        """The epoch's figures over all ranks (:meth:`reduce_counters`): the counters of
        ``meter`` (default: :attr:`meter`), the device allocator's peak and the monitor's
        summary."""
        local = (meter if meter is not None else self.meter).state()
        try:
            local["allocator_peak_bytes"] = self.facade.memory_peak(self.device)
        except HookTimedOut:  # reported and counted by the monitor: not measured
            local["allocator_peak_bytes"] = None
        local.update(self.monitor.summary() if self.monitor is not None else {})
        return self.reduce_counters(local)

    # -- checkpoints and resuming ------------------------------------------------------------------

    def save_checkpoint(self, state: Dict[str, Any], epoch: int, metrics: Dict[str, Any]) -> None:
        """Write the checkpoint of finished epoch ``epoch`` (rank 0; the other ranks return):
        the case's ``state`` (tensors and plain data) with the run's own ``epoch``, ``meter``
        and ``epochs`` (the records so far and this epoch's ``metrics``), in chipbench's safe
        format, whole before it replaces the previous one."""
        if not self.is_main:
            return
        from chipbench.run import checkpoints

        checkpoints.save(dict(state, epoch=epoch, meter=self.meter.state(),
                              epochs=self.epochs + [dict(metrics, epoch=epoch)]),
                         self.checkpoint_path)

    def load_checkpoint(self, planned_epochs: Optional[int] = None,
                        planned_key: str = "train.epochs") -> Optional[Dict[str, Any]]:
        """On a resume, rank 0's checkpoint on every rank, checked: its run state one a run
        writes, its epoch within ``planned_epochs`` (the config's ``planned_key``), its epochs
        those the run folder records (:meth:`recorded_epochs`). None for a new run or where no
        checkpoint was written. A refusal is rank 0's one-line :class:`UserError`, raised on
        every rank (no rank is left waiting in a collective)."""
        if not self.resuming:
            return None
        from chipbench.run import checkpoints

        state: Optional[Dict[str, Any]] = None
        refused = None
        path = self.checkpoint_path
        if self.is_main and path.is_file():
            try:
                state = checkpoints.load(path)
                checkpoints.check_run_state(state, path)
                checkpoints.check_fits_run(state, path, self.recorded_epochs(), planned_epochs,
                                           planned_key)
            except UserError as exc:
                state, refused = None, (exc.problem, exc.fix)
        state, refused = self.broadcast((state, refused))
        if refused is not None:
            raise UserError(*refused)
        return state

    def resume(self, state: Dict[str, Any]) -> int:
        """Continue the meter and the epoch records from a checkpoint's ``state`` (once the
        case has restored its own parts); the epoch to train next."""
        self.meter = RunMeter.from_state(state["meter"])
        self.epochs = list(state["epochs"])
        return int(state["epoch"]) + 1

    def recorded_epochs(self) -> RecordedEpochs:
        """The epochs the run folder records before a checkpoint is applied: ``progress.json``'s,
        else, where that is missing or unreadable, ``result.json``'s."""
        progress = read_json_dict(self.run_dir / PROGRESS_FILE).get("epochs")
        if isinstance(progress, list):
            return RecordedEpochs(progress, PROGRESS_FILE, True)
        result = read_json_dict(self.run_dir / RESULT_FILE).get("epochs")
        return RecordedEpochs(result if isinstance(result, list) else [], RESULT_FILE, False)

    # -- progress -----------------------------------------------------------------------------------

    def epoch_end(self, epoch: int, metrics: Dict[str, Any]) -> None:
        """Record an epoch's figures (rank 0): ``progress.json`` and the ``on_epoch_end`` hook."""
        if self.monitor is not None:
            self.monitor.sample("epoch_end")
        if not self.is_main:
            return
        from chipbench.run.resultrecord import Metrics

        where = "case '{}' ctx.epoch_end()".format(self.spec["case"])
        try:  # the record's rule, said where the case broke it
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                raise UserError("{}: epoch is {}, not a whole number >= 0".format(
                    where, shown(epoch)))
            Metrics.from_json(metrics, where, strict=True)
        except UserError as exc:
            raise PluginError(exc.problem, "fix the case's figures: chipbench's own keep their "
                              "kinds (see docs/cases.md)") from None
        self.epochs.append(dict(metrics, epoch=epoch))
        self.save_progress(final=False)
        for failure in self.host.notify("on_epoch_end", run=self.run_info(), epoch=epoch,
                                        metrics=metrics):
            self.log.warning(failure)

    def save_progress(self, final: bool, metrics: Optional[Dict[str, Any]] = None) -> None:
        """Write what was measured so far, so that a failure loses nothing already finished."""
        if not self.is_main:
            return
        from chipbench.run.resultrecord import RunProgress

        latest = metrics if metrics is not None else (self.epochs[-1] if self.epochs else {})
        path = self.run_dir / PROGRESS_FILE
        progress = RunProgress.from_json({"final": final, "epochs": self.epochs,
                                          "metrics": latest, "data": self.data}, path)
        write_json_atomic(path, progress.to_json())

    def run_info(self) -> Dict[str, Any]:
        """What the ``on_epoch_end`` hook is told about the run."""
        return {"run_dir": str(self.run_dir), "case": self.spec["case"],
                "vendor": self.spec["vendor"], "config": self.config}
