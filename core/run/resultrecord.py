"""Typed records of ``result.json`` and ``progress.json``: a run's status, its figures and its
epochs, each read in one place (``from_json``: validating, one line naming the file and the field
for whatever it refuses) and written in one (``to_json``).

Status values, required fields and number rules are defined here once. What a record refuses
is what ``core compare`` always refused; every other typed field holds a value of its kind or
None, and a value of another kind (a hand-edited ``"epoch": "z"``, shown but never computed
with) stays as read in ``other``, beside every key the record does not type (a case's own
metrics, a newer writer's fields). ``to_json`` writes all of them back unchanged, in the order
they were read: an older or newer ``result.json`` goes through chipbench as it was.
"""

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

from chipbench.errors import UserError
from chipbench.measure.metrics import FIGURES, RESERVED_KEYS, gib, is_count, is_number, mem_text
from chipbench.run.jsonrecord import (
    FIX_NOT_RESULT,
    FIX_PROGRESS,
    NUMBER,
    JsonRecord,
    Kinds,
    Source,
    check_kinds,
    expected_kinds,
    of_kind,
    refused,
)

STATUSES = ("running", "finished", "failed", "interrupted")
DEFAULT_METRIC = "mAP"
"""The target metric of a result.json that names none (written before cases had their own)."""
COUNT_FIGURES = FIGURES + tuple(n for n in ("e2e_time", "data_seconds") if n not in FIGURES)
"""Figures that are each None or a finite number >= 0."""


@dataclass(frozen=True)
class Metrics(JsonRecord):
    """A run's figures (``metrics`` of result.json, progress.json's last ones): chipbench's own
    typed, the case's own (its target metric, loss, ...) in ``other``."""

    p_whole: Optional[float] = None
    p_train: Optional[float] = None
    p_core: Optional[float] = None
    images: Optional[float] = None
    core_images: Optional[float] = None
    iterations: Optional[float] = None
    epochs: Optional[float] = None
    train_seconds: Optional[float] = None
    eval_seconds: Optional[float] = None
    core_seconds: Optional[float] = None
    data_seconds: Optional[float] = None
    """Seconds spent waiting for data (a newer figure: absent from older runs)."""
    e2e_time: Optional[float] = None
    mem_used_peak_bytes: Optional[float] = None
    mem_total_bytes: Optional[float] = None
    allocator_peak_bytes: Optional[float] = None
    mem: Optional[str] = None
    """The seed's ``mem`` cell (``37.5/64.0`` GiB, ``/`` where not measured)."""
    mem_used_peak_gib: Optional[float] = None
    mem_total_gib: Optional[float] = None
    allocator_peak_gib: Optional[float] = None
    mem_source: Optional[str] = None
    mfu: Optional[float] = None
    mfu_flag: Optional[str] = None
    achieved_tflops: Optional[float] = None
    peak_tflops: Optional[float] = None
    flops_per_image: Optional[float] = None
    flops_note: Optional[str] = None
    peak_note: Optional[str] = None
    cpu_share: Optional[Dict[str, Any]] = None
    converged: Optional[bool] = None
    other: Dict[str, Any] = field(default_factory=dict)
    key_order: Tuple[str, ...] = field(default=(), compare=False)

    KINDS: ClassVar[Dict[str, Kinds]] = dict(
        {name: NUMBER for name in COUNT_FIGURES}, converged=(bool,), mem=(str,),
        mem_used_peak_gib=NUMBER, mem_total_gib=NUMBER, allocator_peak_gib=NUMBER,
        mem_source=(str,), mfu=NUMBER, mfu_flag=(str,), achieved_tflops=NUMBER,
        peak_tflops=NUMBER, flops_per_image=NUMBER, flops_note=(str,), peak_note=(str,),
        cpu_share=(dict,))
    """The kind of each figure (an MFU outside 0 to 1 is read as it stands:
    :func:`chipbench.measure.flops.checked_mfu` flags it for every output)."""

    @classmethod
    def from_json(cls, data: Any, source: Source, name: str = "metrics",
                  metric: Optional[str] = None, strict: bool = False) -> "Metrics":
        """The figures ``data`` read from ``source`` (``name``: where they are in it). Refused in
        one line: what :func:`bad_figure` finds, a ``converged`` that is not true or false;
        ``strict`` (figures a case hands chipbench, which it writes and renders): any figure of
        chipbench's of another kind too (a file read back keeps such a value as read)."""
        if not isinstance(data, dict):
            raise refused(source, name, data, "a dict")
        bad = cls.problem(data, metric, strict)
        if bad is not None:
            raise refused(source, "{}.{}".format(name, bad[0]), bad[1], bad[2])
        return cls._typed_from(data)

    @classmethod
    def problem(cls, data: Dict[str, Any], metric: Optional[str] = None, strict: bool = False
                ) -> Optional[Tuple[str, Any, str]]:
        """The first figure of ``data`` that :meth:`from_json` refuses, as (key, value, what it
        must be); None where it takes them all."""
        bad = bad_figure(data, metric)
        if bad is not None:
            return bad
        if data.get("converged") is not None and not isinstance(data["converged"], bool):
            return "converged", data["converged"], "true or false"
        for name in cls.json_fields() if strict else ():
            value = data.get(name)
            if value is not None and not of_kind(value, cls.KINDS[name]):
                return name, value, expected_kinds(cls.KINDS[name])
        return None

    def with_memory_columns(self) -> "Metrics":
        """These figures with the seed's ``mem`` cell and the GiB figures of the byte counts."""
        done = self
        if self.mem_used_peak_bytes is not None:
            done = replace(done, mem=mem_text(self.mem_used_peak_bytes, self.mem_total_bytes),
                           mem_used_peak_gib=gib(self.mem_used_peak_bytes),
                           mem_total_gib=gib(self.mem_total_bytes))
        if self.allocator_peak_bytes is not None:
            done = replace(done, allocator_peak_gib=gib(self.allocator_peak_bytes))
        return done

    def with_memory_sample(self, sample: Optional[Dict[str, Any]]) -> "Metrics":
        """These figures with device-wide memory taken from a monitor ``sample`` where it used
        more than their peak (samples taken after the last epoch's figures: the final
        checkpoint, the teardown)."""
        used = (sample or {}).get("mem_used_bytes")
        if not is_count(used) or (self.mem_used_peak_bytes is not None
                                  and used <= self.mem_used_peak_bytes):
            return self
        total, source = (sample or {}).get("mem_total_bytes"), (sample or {}).get("mem_source")
        return replace(self, mem_used_peak_bytes=used,
                       mem_total_bytes=total if is_count(total) else self.mem_total_bytes,
                       mem_source=self.mem_source or (source if isinstance(source, str) else None))


@dataclass(frozen=True)
class EpochRecord(Metrics):
    """One entry of ``epochs`` (progress.json and result.json): the figures after that epoch.
    Epochs are charted and listed, never computed with: any dict is one (a value of another
    kind than its field's stays as read, in ``other``)."""

    epoch: Optional[int] = None

    KINDS: ClassVar[Dict[str, Kinds]] = dict(Metrics.KINDS, epoch=(int,))

    @classmethod
    def from_json(cls, data: Any, source: Source, name: str = "epochs[0]",
                  metric: Optional[str] = None, strict: bool = False) -> "EpochRecord":
        """The epoch ``data`` read from ``source``; refused in one line where it is no dict
        (``metric`` and ``strict`` are not applied to epochs read back: the run checked each
        epoch's figures when the case handed them over, and a file keeps what it holds)."""
        if not isinstance(data, dict):
            raise refused(source, name, data, "a dict")
        return cls._typed_from(data)


@dataclass(frozen=True)
class ProfileSummary(JsonRecord):
    """``profile`` of result.json (``core run --profile``): the iterations recorded, the trace's
    file and the top operators; or ``error``, why nothing was recorded. Rendered, never computed
    with: a field of another kind stays as read, in ``other``."""

    iterations: Optional[List[Any]] = None
    trace: Optional[str] = None
    sorted_by: Optional[str] = None
    device_activity: Optional[str] = None
    top_ops: Optional[List[Any]] = None
    error: Optional[str] = None
    other: Dict[str, Any] = field(default_factory=dict)
    key_order: Tuple[str, ...] = field(default=(), compare=False)

    KINDS: ClassVar[Dict[str, Kinds]] = {
        "iterations": (list,), "trace": (str,), "sorted_by": (str,), "device_activity": (str,),
        "top_ops": (list,), "error": (str,)}

    @classmethod
    def from_json(cls, data: Any, source: Source) -> "ProfileSummary":
        """The profile ``data`` read from ``source``; refused in one line where it is no dict."""
        if not isinstance(data, dict):
            raise refused(source, "profile", data, "a dict")
        return cls._typed_from(data)

    @property
    def span(self) -> Tuple[Any, Any]:
        """The first and the last iteration recorded; ``("?", "?")`` where not known."""
        found = self.iterations
        return (found[0], found[1]) if found is not None and len(found) == 2 else ("?", "?")


def epochs_from_json(data: Any, source: Source) -> List[EpochRecord]:
    """The ``epochs`` list read from ``source``; one line where it is not a list of dicts."""
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise refused(source, "epochs", data, "a list of per-epoch dicts")
    return [EpochRecord.from_json(e, source) for e in data]


RESULT_KINDS: Dict[str, Kinds] = {
    "row_label": (str,), "precision": (str,), "fix_hp": (str,), "target_metric": (str,),
    "sample_unit": (str,), "error": (str,), "general": (dict,), "versions": (dict,),
    "topology": (dict,), "hardware": (dict,), "config": (dict,), "data": (dict,),
    "epochs": (list,), "target": NUMBER, "status": (str,), "case": (str,), "vendor": (str,),
    "row_label_zh": (str,), "config_sources": (list,), "command": (str,), "started_at": (str,),
    "run_dir": (str,), "pid": (int,), "host": (str,), "resumed": (int,), "resumes": (list,),
    "environment": (dict,), "dataset_note": (str,), "note": (str,), "finished_at": (str,),
    "profile": (dict,)}
"""The kinds of the fields of result.json besides metrics (each may also be absent or null)."""
CHECKED_FIELDS = ("row_label", "precision", "fix_hp", "target_metric", "sample_unit", "error",
                  "general", "versions", "topology", "hardware", "config", "data", "epochs",
                  "target")
"""The fields that ``core compare`` reads, refused when of another kind; the others are typed
where they hold their kind."""
RESULT_KEYS = ("status", "error", "case", "vendor", "hardware", "topology", "row_label",
               "row_label_zh", "precision", "target", "target_metric", "sample_unit", "config",
               "config_sources", "command", "started_at", "run_dir", "metrics", "epochs")
"""What a run's result.json holds from its start, null or not (the keys a new record writes)."""


@dataclass(frozen=True)
class RunResult(JsonRecord):
    """``result.json``: written by ``core run`` at its start (status ``running``) and rewritten at
    its end, whatever happened (by the sentinel where the run's process died); read by
    ``core compare`` and ``--resume``."""

    status: str = "running"
    error: Optional[str] = None
    case: str = ""
    vendor: Optional[str] = None
    hardware: Optional[Dict[str, Any]] = None
    topology: Optional[Dict[str, Any]] = None
    row_label: Optional[str] = None
    row_label_zh: Optional[str] = None
    precision: Optional[str] = None
    target: Optional[float] = None
    target_metric: Optional[str] = None
    sample_unit: Optional[str] = None
    config: Optional[Dict[str, Any]] = None
    config_sources: Optional[List[Any]] = None
    command: Optional[str] = None
    started_at: Optional[str] = None
    run_dir: Optional[str] = None
    metrics: Metrics = field(default_factory=Metrics)
    epochs: Optional[List[EpochRecord]] = None
    pid: Optional[int] = None
    host: Optional[str] = None
    resumed: Optional[int] = None
    """How many times the run was resumed (absent: never)."""
    resumes: Optional[List[Any]] = None
    """Each resume's command and start."""
    fix_hp: Optional[str] = None
    versions: Optional[Dict[str, Any]] = None
    environment: Optional[Dict[str, Any]] = None
    general: Optional[Dict[str, Any]] = None
    dataset_note: Optional[str] = None
    data: Optional[Dict[str, Any]] = None
    note: Optional[str] = None
    finished_at: Optional[str] = None
    profile: Optional[ProfileSummary] = None
    """``core run --profile``'s summary (this attempt's, else an earlier one's)."""
    other: Dict[str, Any] = field(default_factory=dict)
    key_order: Tuple[str, ...] = field(default=RESULT_KEYS, compare=False)

    KINDS: ClassVar[Dict[str, Kinds]] = RESULT_KINDS

    @property
    def metric_name(self) -> str:
        """The case's target metric ("mAP", "accuracy", ...)."""
        return self.target_metric or DEFAULT_METRIC

    @property
    def general_rows(self) -> List[Sequence[Any]]:
        """The seed's general rows ([indicator, value, note])."""
        return list((self.general or {}).get("rows") or [])

    @classmethod
    def from_json(cls, data: Any, source: Source) -> "RunResult":
        """The result ``data`` read from ``source``; anything ``core run`` did not write as it
        stands (hand-edited, truncated to another file's shape, another file) is one line naming
        the file and the field."""
        if not isinstance(data, dict) or not isinstance(data.get("case"), str) \
                or "status" not in data or "metrics" not in data:
            raise UserError("{} is not a chipbench result (no case, status and metrics)".format(
                source), FIX_NOT_RESULT)
        if data["status"] not in STATUSES:
            raise refused(source, "status", data["status"], "one of " + ", ".join(STATUSES))
        check_kinds(data, RESULT_KINDS, CHECKED_FIELDS, source)
        if not isinstance(data["metrics"], dict):
            raise refused(source, "metrics", data["metrics"], "a dict")
        if data.get("target") is not None and not is_number(data["target"]):
            raise refused(source, "target", data["target"], "a finite number")
        metric = data.get("target_metric") or DEFAULT_METRIC
        if metric in RESERVED_FIGURES:
            raise refused(source, "target_metric", metric, "a metric of the case's own (it names "
                          "one of chipbench's columns)")
        metrics = Metrics.from_json(data["metrics"], source, "metrics", metric)
        rows = (data.get("general") or {}).get("rows", [])
        if not isinstance(rows, list) or not all(isinstance(r, (list, tuple)) and len(r) == 3
                                                 for r in rows):
            raise refused(source, "general.rows", rows, "a list of [indicator, value, note] rows")
        converted: Dict[str, Any] = {"metrics": metrics}
        if data.get("epochs") is not None:
            converted["epochs"] = epochs_from_json(data["epochs"], source)
        if isinstance(data.get("profile"), dict):  # another kind stays as read, in other
            converted["profile"] = ProfileSummary.from_json(data["profile"], source)
        return cls._typed_from(data, **converted)

    def continuing(self, previous: "RunResult", command: str, started_at: str) -> "RunResult":
        """This new attempt's record of a resumed run: until it records more, what the earlier
        attempts measured; the run's first command and start, and this resume listed after
        them."""
        return replace(
            self, metrics=previous.metrics, epochs=list(previous.epochs or []),
            data=previous.data if previous.data is not None else self.data,
            resumed=max(previous.resumed or 0, 0) + 1,
            command=previous.command if previous.command is not None else self.command,
            started_at=previous.started_at if previous.started_at is not None
            else self.started_at,
            resumes=list(previous.resumes or []) + [{"command": command,
                                                     "started_at": started_at}])


def bad_figure(figures: Dict[str, Any], metric: Optional[str] = None
               ) -> Optional[Tuple[str, Any, str]]:
    """The first figure of ``figures`` that breaks its rule, as (key, value, what it must be); None
    where all hold. chipbench's counts are finite numbers >= 0; the case's target ``metric`` is a
    finite number of either sign (a case's score may be negative). The one rule of a case's
    returned metrics (:func:`chipbench.run.caseload.checked_metrics`) and of every reader of them."""
    for key in COUNT_FIGURES:
        value = figures.get(key)
        if value is not None and not is_count(value):
            return key, value, "a finite number >= 0"
    if metric:
        value = figures.get(metric)
        if value is not None and not is_number(value):
            return metric, value, "a finite number"
    return None


RESERVED_FIGURES = tuple(RESERVED_KEYS) + tuple(
    n for n in EpochRecord.json_fields() if n not in RESERVED_KEYS)
"""Names no case's target metric may take: chipbench's columns and its typed figures."""


@dataclass(frozen=True)
class RunProgress(JsonRecord):
    """``progress.json``: what rank 0 measured so far (each epoch's figures as it ends, and the
    final figures once ``case.run`` returned)."""

    final: Optional[bool] = None
    epochs: List[EpochRecord] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    data: Optional[Dict[str, Any]] = None
    other: Dict[str, Any] = field(default_factory=dict)
    key_order: Tuple[str, ...] = field(default=("final", "epochs", "metrics", "data"),
                                       compare=False)

    KINDS: ClassVar[Dict[str, Kinds]] = {"final": (bool,), "data": (dict,)}

    @classmethod
    def from_json(cls, data: Any, source: Source, metric: Optional[str] = None) -> "RunProgress":
        """The progress ``data`` read from ``source``: its epochs and figures checked as in
        result.json."""
        if not isinstance(data, dict) or not isinstance(data.get("epochs"), list) \
                or not isinstance(data.get("metrics"), dict):
            raise UserError("{} is not a run's progress (no epochs and metrics)".format(source),
                            FIX_PROGRESS)
        return cls._typed_from(data, epochs=epochs_from_json(data["epochs"], source),
                               metrics=Metrics.from_json(data["metrics"], source, "metrics",
                                                         metric))
