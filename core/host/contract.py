"""The vendor contract, defined once: what every hook may answer.

One :class:`HookRule` per hook of :mod:`chipbench.hookspecs`: the answer it must give (types,
ranges, one-line text), whether a vendor may leave it out and what chipbench does then, and the
API version it appeared in. The device facade (every run), the conformance kit (``core doctor``
and the pytest entry) and the hooks table of the plugin guide all read these rules, so a rule a
run enforces is a rule doctor enforces, and the other way round; the guide's table is
:func:`markdown_table` (a test keeps the two equal).

A rule's ``problem(answer, info)`` returns "" for a good answer, else what the answer should
have been, in words for the one-line error ("byte counts with 0 <= used <= total").
"""

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from chipbench.measure.metrics import is_count
from chipbench.records import HardwareId, MemoryInfo, VendorInfo


@dataclass(frozen=True)
class Precision:
    """A training precision: what ``--precision NAME`` trains in. Adding one (fp8) is a row of
    :data:`PRECISION_TABLE`; the case's training step, the loss scaler, the vendors' peaks and
    every check read it from here."""

    name: str
    autocast: Optional[str]
    """The ``torch`` dtype (its name) that autocast computes in; None: no autocast."""
    loss_scaled: bool
    """Whether training needs a dynamic loss scaler (a float16 gradient underflows)."""
    peak: str
    """Which of a device's peak FLOP/s figures its MFU is measured against: fp32, fp16, bf16."""
    meaning: str


PRECISION_TABLE: Tuple[Precision, ...] = (
    Precision("fp32", None, False, "fp32", "float32 throughout (TF32 where the vendor turns it on)"),
    Precision("amp", "float16", True, "fp16",
              "automatic mixed precision: autocast float16, float32 weights, loss scaling"),
    Precision("fp16", "float16", True, "fp16", "float16 compute through autocast, loss scaling"),
    Precision("bf16", "bfloat16", False, "bf16", "bfloat16 compute through autocast"),
)
"""Every training precision chipbench knows, in the order reports list them."""

PRECISION: Dict[str, Precision] = {p.name: p for p in PRECISION_TABLE}
PRECISIONS = tuple(PRECISION)
LOSS_SCALED_PRECISIONS = tuple(p.name for p in PRECISION_TABLE if p.loss_scaled)

MAX_DEVICES = 4096
"""A device count above this is a wrong answer, not a machine."""

MAX_WORKERS = 1024
"""The most loader worker processes per rank a vendor may ask for."""

MAX_LABEL = 200
"""The longest one-line text a hook may answer (a name, a label, a reason)."""

MIN_MEMORY_BYTES = 2**20
"""A device with less memory than this is a unit mistake (MiB or GiB given as bytes)."""

PEAK_FLOPS_RANGE = (1e6, 1e18)
"""Peak FLOP/s one device may claim: from a megaFLOP/s (an emulated precision on an old CPU is
still above it) to an exaFLOP/s (a thousand times today's largest chips)."""

SAMPLE_RANGES = {"util_percent": (0.0, 100.0), "power_w": (0.0, 1e6),
                 "temperature_c": (-273.15, 1000.0), "memory_used_bytes": (0.0, float(2**63))}
"""The keys a ``device_sample`` may answer and the range each value must lie in."""

ENVIRONMENT_KEYS = {"device_model": (str,), "device_count": (int,),
                    "device_memory_gib": (int, float), "driver_version": (str,),
                    "runtime_version": (str,), "framework": (str,)}
"""The documented keys of ``environment_report`` and their types; ``device_model`` is required."""

SCALER_METHODS = ("scale", "unscale_", "step", "update")
"""What the training step calls on a loss scaler (torch.amp.GradScaler's interface)."""

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _is_int(value: Any) -> bool:
    return type(value) is int


def shorten_key(key: str) -> str:
    """A key as an error line shows it: quoted, cut to 60 characters."""
    return repr(key if len(key) <= 60 else key[:28] + "..." + key[-28:])


def one_line_problem(value: Any, what: str = "text", empty_ok: bool = False) -> str:
    """"" when ``value`` is a str of printable characters on one line (at most
    :data:`MAX_LABEL`), non-empty unless ``empty_ok``; else what it should be."""
    expected = "a {}one-line {} of printable characters (at most {})".format(
        "" if empty_ok else "non-empty ", what, MAX_LABEL)
    if type(value) is not str or len(value) > MAX_LABEL or not value.isprintable():
        return expected
    if not empty_ok and not value.strip():
        return expected
    return ""


def sample_problem(sample: Any) -> str:
    """What is wrong with a ``device_sample`` answer ("" when nothing): an unknown key, or a value
    that is not a finite number within :data:`SAMPLE_RANGES` (a negative power, NaN, ...)."""
    if type(sample) is not dict:
        return "a dict"
    for key, value in sample.items():
        if key not in SAMPLE_RANGES:
            return "keys among {}, not {!r}".format(", ".join(SAMPLE_RANGES), key)
        low, high = SAMPLE_RANGES[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not math.isfinite(float(value)) or not low <= value <= high:
            return "{} a number within {:g}..{:g}".format(key, low, high)
    return ""


# --------------------------------------------------------------------------------------------------
# one function per hook: the answer (and the vendor's own VendorInfo) -> "" or what was expected
# --------------------------------------------------------------------------------------------------


def _vendor_info(info: Any, _: Any = None) -> str:
    from chipbench.util.text import shown

    if type(info) is not VendorInfo:
        return "a VendorInfo"
    for name, value, kind in (("name", info.name, str), ("device_type", info.device_type, str),
                              ("priority", info.priority, int), ("available", info.available, bool),
                              ("reason", info.reason, str), ("generic", info.generic, bool)):
        # exactly the built-in type: a subclass (bool for int) may override what chipbench uses
        if type(value) is not kind:
            return "a VendorInfo whose {} is {} {}, not {}".format(
                name, "an" if kind is int else "a", kind.__name__, shown(value))
    for name, value, empty_ok in (("name", info.name, False),
                                  ("device_type", info.device_type, False),
                                  ("reason", info.reason, True)):
        problem = one_line_problem(value, name, empty_ok)
        if problem:
            return "a VendorInfo with " + problem
    return ""


def _device(value: Any, info: Optional[VendorInfo]) -> str:
    import torch

    if not isinstance(value, torch.device):
        return "a torch.device"
    if info is not None and value.type != info.device_type:
        return "a device of type '{}' (its vendor_detect's device_type)".format(info.device_type)
    return ""


def _device_count(value: Any, _: Any) -> str:
    if not _is_int(value) or not 1 <= value <= MAX_DEVICES:
        return "an int in 1..{} (an available vendor sees a device)".format(MAX_DEVICES)
    return ""


def _device_name(value: Any, _: Any) -> str:
    return one_line_problem(value, "name")


def _hardware_id(value: Any, _: Any) -> str:
    if type(value) is not HardwareId:
        return "a HardwareId"
    problem = one_line_problem(value.label, "label")
    if problem:
        return problem
    tag = value.config_tag
    if type(tag) is not str or not tag.isascii() or not tag.isalnum() or len(tag) > 64:
        return "a config_tag of ASCII letters and digits (it names config files)"
    return ""


def _none(value: Any, _: Any) -> str:
    return "" if value is None else "None"


def _memory(value: Any, _: Any) -> str:
    expected = ("a MemoryInfo of int byte counts with 0 <= used <= total and total >= 1 MiB, "
                "and a one-line source")
    if type(value) is not MemoryInfo:
        return expected
    used, total = value.used_bytes, value.total_bytes
    if not (_is_int(used) and _is_int(total)) or not 0 <= used <= total \
            or total < MIN_MEMORY_BYTES or one_line_problem(value.source, "source", True):
        return expected
    return ""


def _byte_count(value: Any, _: Any) -> str:
    return "" if _is_int(value) and value >= 0 else "an int byte count >= 0"


def _backend(value: Any, _: Any) -> str:
    from chipbench.host.device import BACKEND_FORM, backend_form_ok

    if type(value) is not str or not backend_form_ok(value):
        return BACKEND_FORM
    return ""


def _env_name(value: Any, _: Any) -> str:
    if type(value) is not str or (value and not _ENV_NAME.match(value)):
        return "an environment variable's name ('ACME_VISIBLE_DEVICES'), or '' for none"
    return ""


def _precisions(value: Any, _: Any) -> str:
    expected = "a list of {} without repeats, fp32 among them".format(", ".join(PRECISIONS))
    if not isinstance(value, (list, tuple)) or not all(type(p) is str for p in value):
        return expected
    if any(p not in PRECISIONS for p in value) or len(set(value)) != len(value) \
            or "fp32" not in value:
        return expected
    return ""


def _environment(value: Any, _: Any) -> str:
    expected = ("a dict of text keys and strict JSON values (no NaN, no objects), with a "
                "one-line device_model")
    if type(value) is not dict or not all(type(k) is str for k in value):
        return expected
    for key, item in value.items():  # name the key whose value is no strict JSON
        try:
            json.dumps(item, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            return "{} (its key {} is not)".format(expected, shorten_key(key))
    if one_line_problem(value.get("device_model"), "device_model"):
        return expected
    for key, types in ENVIRONMENT_KEYS.items():
        if key in value and (isinstance(value[key], bool) or not isinstance(value[key], types)):
            return "{} of type {}".format(key, "/".join(t.__name__ for t in types))
    return ""


def _sample(value: Any, _: Any) -> str:
    return sample_problem(value)


def _scaler(value: Any, _: Any) -> str:
    if value is None or all(callable(getattr(value, m, None)) for m in SCALER_METHODS):
        return ""
    return "None or a loss scaler with methods " + ", ".join(SCALER_METHODS)


def _peak(value: Any, _: Any) -> str:
    if value is None or (is_count(value) and not isinstance(value, bool)
                         and PEAK_FLOPS_RANGE[0] <= value <= PEAK_FLOPS_RANGE[1]):
        return ""
    return "FLOP/s from {:g} to {:g}, or None".format(*PEAK_FLOPS_RANGE)


def _workers(value: Any, _: Any) -> str:
    if value is None or (_is_int(value) and 0 <= value <= MAX_WORKERS):
        return ""
    return "a count in 0..{}, or None".format(MAX_WORKERS)


def _folders(value: Any, _: Any) -> str:
    if isinstance(value, (list, tuple)) and all(type(f) is str and f for f in value):
        return ""
    return "a list of folder paths"


# --------------------------------------------------------------------------------------------------
# the rules
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HookRule:
    """The contract of one hook: its call, what it must answer, whether a vendor may leave it
    out (``default`` says what chipbench does then), and the API version it appeared in."""

    name: str
    call: str
    kind: str
    """``discovery`` (every vendor), ``device`` (required of a vendor), ``optional`` (a default
    serves), ``configs`` (every plugin, answers collected) or ``lifecycle`` (results ignored)."""
    returns: str
    check: Optional[Callable[[Any, Optional[VendorInfo]], str]] = None
    default: str = ""
    since: str = "1.0"
    hot: bool = False
    """Called inside the timed training loop (around every step, or every epoch): what the
    facade adds to each call must stay small (the conformance kit times it). The sampler's hooks
    are not hot: the monitor calls them every few seconds, in a thread of its own."""

    @property
    def optional(self) -> bool:
        return self.kind in ("optional", "configs", "lifecycle")

    def problem(self, answer: Any, info: Optional[VendorInfo] = None) -> str:
        """"" when ``answer`` keeps this rule, else what it should have been."""
        return self.check(answer, info) if self.check is not None else ""


RULES: Tuple[HookRule, ...] = (
    HookRule("vendor_detect", "vendor_detect()", "discovery",
             "VendorInfo(name, device_type, priority: int, available: bool, reason, generic: "
             "bool), one-line texts", _vendor_info),
    HookRule("device_init_backend", "device_init_backend(local_rank)", "device",
             "torch.device of the detected device_type; sets it current", _device),
    HookRule("device_count", "device_count()", "device", "int, 1..4096", _device_count, hot=True),
    HookRule("device_name", "device_name(index)", "device", "one-line str", _device_name),
    HookRule("hardware_id", "hardware_id()", "device",
             "HardwareId(label: one-line str, config_tag: ASCII letters and digits)",
             _hardware_id),
    HookRule("device_synchronize", "device_synchronize(device)", "device", "None", _none, hot=True),
    HookRule("device_memory_query", "device_memory_query(device)", "device",
             "MemoryInfo(used_bytes, total_bytes, source): ints, 0 <= used <= total, total >= 1 "
             "MiB; device-wide", _memory),
    HookRule("device_memory_peak", "device_memory_peak(device)", "device",
             "int bytes >= 0: this process's allocator peak", _byte_count, hot=True),
    HookRule("device_memory_reset_peak", "device_memory_reset_peak(device)", "device", "None",
             _none, hot=True),
    HookRule("collective_backend", "collective_backend()", "device",
             "str: a backend torch.distributed knows and has built in ('gloo'), or "
             "device:backend pairs", _backend),
    HookRule("visible_devices_env", "visible_devices_env()", "device",
             "str: the variable that restricts the devices a process sees, '' for none",
             _env_name),
    HookRule("supported_precisions", "supported_precisions()", "device",
             "list of fp32, amp, fp16, bf16 (fp32 among them)", _precisions),
    HookRule("environment_report", "environment_report()", "device",
             "dict of strict JSON values with a one-line device_model", _environment),
    HookRule("device_sample", "device_sample(device)", "device",
             "dict: util_percent 0..100, power_w, temperature_c, memory_used_bytes ({} when "
             "unknown)", _sample),
    HookRule("device_configure", "device_configure(device, deterministic, autotune)",
             "optional", "None", _none,
             "nothing beyond torch.use_deterministic_algorithms", "1.1"),
    HookRule("device_grad_scaler", "device_grad_scaler(device, precision)", "optional",
             "None or a GradScaler-like object", _scaler,
             "torch.amp.GradScaler(device.type) (torch 2.3+)", "1.1"),
    HookRule("device_peak_flops", "device_peak_flops(device, precision)", "optional",
             "float FLOP/s in 1e6..1e18, or None", _peak, "None: no MFU", "1.1"),
    HookRule("device_loader_workers", "device_loader_workers(configured, local_world_size)",
             "optional", "int in 0..1024, or None", _workers,
             "None: the config's data.num_workers", "1.1"),
    HookRule("case_config_dirs", "case_config_dirs(case_name)", "configs",
             "list of folder paths", _folders, "no folder", "1.1"),
    HookRule("on_run_start", "on_run_start(run)", "lifecycle", "ignored", None,
             "nothing", "1.0"),
    HookRule("on_epoch_end", "on_epoch_end(run, epoch, metrics)", "lifecycle", "ignored", None,
             "nothing", "1.0"),
    HookRule("on_run_end", "on_run_end(run, result)", "lifecycle", "ignored", None,
             "nothing", "1.0"),
)
"""Every hook's rule, in the order of the hook specifications."""

RULE: Dict[str, HookRule] = {rule.name: rule for rule in RULES}

CHECK: Dict[str, Callable[[Any, Optional[VendorInfo]], str]] = {
    rule.name: rule.check or (lambda answer, info: "") for rule in RULES}
"""Each hook's ``problem`` function, looked up once per call by the facade (it is on the timed
path: a run calls ``device_synchronize`` around every step)."""

DEVICE_HOOKS = tuple(r.name for r in RULES if r.kind == "device")
"""Every hook a vendor plugin must implement besides ``vendor_detect``."""

OPTIONAL_DEVICE_HOOKS = tuple(r.name for r in RULES if r.kind == "optional")
"""Device hooks a vendor may leave out; chipbench has a default for each."""

OPTIONAL_HOOKS = OPTIONAL_DEVICE_HOOKS + tuple(r.name for r in RULES if r.kind == "configs")
"""Every hook a plugin may implement or not (lifecycle hooks aside)."""

LIFECYCLE_HOOKS = tuple(r.name for r in RULES if r.kind == "lifecycle")
"""Hooks called on every plugin, whose failures are reported but never stop a run."""

OBSERVER_HOOKS = LIFECYCLE_HOOKS + tuple(r.name for r in RULES if r.kind == "configs")
"""What a plugin without ``vendor_detect`` (an observer, or a config shipper) may implement."""


TIME_BOUNDED_HOOKS = ("device_memory_query", "device_sample", "device_memory_peak")
"""Hooks that observe a run (the monitor's samples, the epoch's memory figures): during a run each
call is given at most ``CHIPBENCH_HOOK_TIMEOUT_S`` and made from a helper thread, so they must
act on their ``device`` argument, not on the calling thread's current device."""


def markdown_table() -> str:
    """The hooks table of the plugin guide, made from :data:`RULES`."""
    lines = ["| hook | kind | must answer | without it | since |",
             "| --- | --- | --- | --- | --- |"]
    for rule in RULES:
        lines.append("| `{}` | {} | {} | {} | {} |".format(
            rule.call, rule.kind, rule.returns.replace("|", "\\|"),
            rule.default if rule.optional else "required", rule.since))
    return "\n".join(lines)
