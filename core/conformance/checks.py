"""The contract checks of a vendor plugin: one copy, behind ``core doctor``, the pytest entry
(``pytest --pyargs chipbench.conformance --vendor X``) and chipbench's own contract tests.

A check is a function of a :class:`Subject` that returns what it saw (a short string) when the
plugin honours the contract, raises :class:`CheckFailed` (expected, got) when it does not, and
:class:`CheckSkipped` when the check cannot apply here. *Live* checks run work on the device or
start processes; ``live=False`` leaves them out (for simulated machines, where there is no device).
"""

import functools
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from chipbench.config import shown
from chipbench.contract import DEVICE_HOOKS, LOSS_SCALED_PRECISIONS, OPTIONAL_DEVICE_HOOKS, RULE
from chipbench.errors import describe_exception, plugin_fault
from chipbench.records import VendorInfo

OVERHEAD_LIMIT_US = 5.0
"""What the facade may add to a hook call, in microseconds."""


class CheckFailed(Exception):
    """The plugin breaks the contract: what the check ``expected`` and what it ``got``."""

    def __init__(self, expected: str, got: str, hook: str = "") -> None:
        super().__init__("expected {}, got {}".format(expected, got))
        self.expected = expected
        self.got = got
        self.hook = hook
        """The hook whose answer broke its rule, where a rule was broken."""


class CheckSkipped(Exception):
    """The check does not apply here (say why)."""


@dataclass(frozen=True)
class Result:
    """The outcome of one check: ``status`` is ``pass``, ``fail`` or ``skip``."""

    vendor: str
    check: str
    status: str
    expected: str
    got: str

    @property
    def ok(self) -> bool:
        return self.status != "fail"

    def line(self) -> str:
        """One line: ``FAIL fakechip device_count: expected ..., got ...``."""
        if self.status == "skip":
            return "SKIP {} {}: {}".format(self.vendor, self.check, self.got)
        return "{} {} {}: expected {}, got {}".format(
            self.status.upper(), self.vendor, self.check, self.expected, self.got)

    def as_dict(self) -> Dict[str, str]:
        return asdict(self)


class Subject:
    """The vendor under test: its facade, raw hook calls, and its device once initialised."""

    def __init__(self, facade: Any, live: bool = True, alloc_mib: int = 64) -> None:
        self.facade = facade
        self.info: VendorInfo = facade.info
        self.live = live
        self.alloc_mib = alloc_mib
        self._device: Any = None
        self.broken_rules: Set[str] = set()
        """Hooks whose rule check failed (checks that need their answers then skip)."""

    def raw(self, hook: str, **kwargs: Any) -> Any:
        """Call ``hook`` on the vendor without the facade's type checks."""
        return getattr(self.facade.host.pm.hook, hook)(**kwargs)

    def impl(self, hook: str) -> Callable[..., Any]:
        """The vendor's own function for ``hook`` (for direct, facade-less calls)."""
        return self.facade.host.vendor_function(hook)

    def device(self) -> Any:
        """``device_init_backend(0)``, held to its rule (a ``torch.device`` of the vendor's type)."""
        if self._device is None:
            self._device = self.obeys("device_init_backend", local_rank=0)
        return self._device

    def obeys(self, hook: str, **kwargs: Any) -> Any:
        """Call ``hook`` without the facade and hold its answer to the hook's rule (the rule
        every run applies: :mod:`chipbench.contract`)."""
        answer = self.raw(hook, **kwargs)
        problem = RULE[hook].problem(answer, self.info)
        if problem:
            raise CheckFailed(problem, shown(answer), hook)
        return answer

    def count(self) -> int:
        """``device_count()``, held to its rule."""
        return int(self.obeys("device_count"))

    def need_live(self) -> None:
        if not self.live:
            raise CheckSkipped("not live: runs work on the device or starts processes")


def _mib(value: float) -> str:
    return "{:.0f} MiB".format(value / 2**20)


# --------------------------------------------------------------------------------------------------
# types and units of every hook
# --------------------------------------------------------------------------------------------------


def _hook_kwargs(subject: Subject, hook: str) -> Dict[str, Any]:
    if hook in ("device_synchronize", "device_memory_query", "device_memory_peak",
                "device_memory_reset_peak", "device_sample"):
        return {"device": subject.device()}
    if hook == "device_init_backend":
        return {"local_rank": 0}
    if hook == "device_name":
        return {"index": 0}
    return {}


def _returns(hook: str) -> Callable[[Subject], str]:
    def check(subject: Subject) -> str:
        return shown(subject.obeys(hook, **_hook_kwargs(subject, hook)))

    check.__doc__ = "{} answers as its rule says: {}.".format(hook, RULE[hook].returns)
    return check


# --------------------------------------------------------------------------------------------------
# identity and capabilities
# --------------------------------------------------------------------------------------------------


def check_vendor_detect(subject: Subject) -> str:
    """vendor_detect answers a VendorInfo as its rule says, and says available."""
    info = subject.info
    problem = RULE["vendor_detect"].problem(info)
    if problem:
        raise CheckFailed(problem, shown(info))
    if not info.available:
        raise CheckFailed("an available vendor", "unavailable: " + info.reason)
    return "{} (device type {}, priority {})".format(info.name, info.device_type, info.priority)


def check_init_backend(subject: Subject) -> str:
    """device_init_backend(r) gives a device of the detected type for every visible local rank,
    a different one for each where the devices are not the host's CPU."""
    count = subject.count()
    devices = [subject.obeys("device_init_backend", local_rank=rank) for rank in range(count)]
    subject.raw("device_init_backend", local_rank=0)  # leave rank 0's device current
    if count > 1 and devices[0].type != "cpu" and len(set(devices)) != count:
        raise CheckFailed("a different device for each of the {} local ranks".format(count),
                          ", ".join(str(d) for d in devices))
    return ", ".join(str(d) for d in devices[:4]) + (" ..." if count > 4 else "")


def check_device_name(subject: Subject) -> str:
    """Every visible device has a name as the rule says."""
    names = [subject.obeys("device_name", index=i) for i in range(subject.count())]
    return ", ".join(sorted(set(names)))


def check_collective_backend(subject: Subject) -> str:
    """collective_backend names what init_process_group can take, as every run checks it:
    backends torch.distributed knows (or the vendor registers in init_backend, asked after it
    where live) and this torch has built in."""
    from chipbench.device import unknown_backends
    from chipbench.errors import PluginError

    backend = subject.obeys("collective_backend")
    if subject.live:
        subject.device()
    elif unknown_backends(backend)[0]:
        raise CheckSkipped("{!r} is not known to torch.distributed before init_backend (a "
                           "vendor's extension may register it there): run live to check"
                           .format(backend))
    try:
        subject.facade.process_group_backend()
    except PluginError as exc:  # the run's own words: what was expected, or what is missing
        if ", expected " in exc.problem:
            raise CheckFailed(exc.problem.split(", expected ", 1)[1], shown(backend)) from None
        raise CheckFailed("a backend this torch has built in", exc.problem) from None
    return backend


# --------------------------------------------------------------------------------------------------
# memory and synchronisation
# --------------------------------------------------------------------------------------------------


def _empty_cache(device: Any) -> None:
    """Return cached blocks to the device (the device module's ``empty_cache``, where it has one)."""
    import torch

    module = getattr(torch, device.type, None)
    empty = getattr(module, "empty_cache", None)
    if callable(empty):
        empty()


PEAK_SLACK_BYTES = 2**20
"""How far below N MiB the peak's rise may fall: page rounding and reuse by host allocators."""


def check_memory_peak(subject: Subject) -> str:
    """Allocating N MiB raises the allocator peak by at least N (less 1 MiB: a host allocator may
    reuse a few freed pages); a reset after freeing lowers it."""
    import gc

    import torch

    subject.need_live()
    device, facade = subject.device(), subject.facade
    size = subject.alloc_mib * 2**20
    # garbage collected inside the window (a cycle holding an earlier model's tensors, freed when
    # the new tensor's object triggers a collection) would hide the allocation in a host peak
    gc.collect()
    collecting = gc.isenabled()
    gc.disable()
    try:
        _empty_cache(device)
        facade.memory_reset_peak(device)
        base = facade.memory_peak(device)
        tensor = torch.ones(size // 4, device=device)
        facade.synchronize(device)
        high = facade.memory_peak(device)
        del tensor
        _empty_cache(device)
        facade.memory_reset_peak(device)
        low = facade.memory_peak(device)
    finally:
        if collecting:
            gc.enable()
    if high - base < size - PEAK_SLACK_BYTES:
        raise CheckFailed("the peak to rise by >= {} after allocating it".format(_mib(size)),
                          "{} -> {} (+{})".format(_mib(base), _mib(high), _mib(high - base)))
    if not low < high:
        raise CheckFailed("device_memory_reset_peak after freeing to lower the peak",
                          "{} -> {}".format(_mib(high), _mib(low)))
    return "+{} for {}, reset {} -> {}".format(_mib(high - base), _mib(size), _mib(high), _mib(low))


def check_synchronize(subject: Subject) -> str:
    """device_synchronize waits for queued work: after it, reading the result takes no time."""
    import torch

    subject.need_live()
    device, facade = subject.device(), subject.facade
    x = torch.randn(1024, 1024, device=device) / 32.0
    facade.synchronize(device)
    launch = total = read = 0.0
    for steps in (1, 2, 4, 8, 16, 32, 64, 128, 256):  # until the work takes 20 ms
        start = time.perf_counter()
        y = x
        for _ in range(steps):
            y = torch.tanh(y @ x)
        result = y.sum()
        launch = time.perf_counter() - start
        if facade.synchronize(device) is not None:
            raise CheckFailed("device_synchronize to return None", "a value")
        total = time.perf_counter() - start
        before = time.perf_counter()
        float(result)
        read = time.perf_counter() - before
        if total > 0.02:
            break
    if device.type == "cpu":
        return ("CPU work runs synchronously (queued {:.3f} s, sync after {:.3f} s): a no-op "
                "sync is right and cannot be told apart".format(launch, total))
    if read > 0.5 * total:
        raise CheckFailed("reading after synchronize to take < 50% of the work time",
                          "read {:.4f} s of {:.4f} s: synchronize did not wait".format(read, total))
    return "queued {:.4f} s, synchronize returned after {:.4f} s, read {:.4f} s".format(
        launch, total, read)


# --------------------------------------------------------------------------------------------------
# processes: visible devices, collectives
# --------------------------------------------------------------------------------------------------


def check_visible_devices(subject: Subject) -> str:
    """A child process started with the vendor's visible-devices variable set to '0' sees 1 device
    (where this process sees more than one: with one, it would see one anyway)."""
    from chipbench.conformance.probes import child_device_count

    name = subject.obeys("visible_devices_env")
    if not name:
        raise CheckSkipped("the vendor has no visible-devices variable")
    subject.need_live()
    count = subject.count()
    if count < 2:
        raise CheckSkipped("cannot tell with one visible device whether {} restricts the "
                           "devices a process sees (run it where two or more are)".format(name))
    seen = child_device_count(subject.info.name, {name: "0"})
    if seen != 1:
        raise CheckFailed("a child with {}=0 to see 1 device".format(name), str(seen))
    return "a child with {}=0 sees 1 device (this process sees {})".format(name, count)


def check_collective(subject: Subject) -> str:
    """The collective backend all-reduces among 2 processes (1 where one device is visible and
    the vendor refuses a second local rank on it, as the hook specification allows)."""
    from chipbench.conformance.probes import all_reduce
    from chipbench.errors import PluginError

    backend = subject.obeys("collective_backend")
    subject.need_live()
    world, note = 2, ""
    if subject.count() < 2:
        try:
            subject.facade.init_backend(1)
        except PluginError:
            world, note = 1, " (one visible device, and no second local rank on it)"
        finally:
            subject.facade.init_backend(0)
    got = all_reduce(subject.info.name, backend, world)
    expected = float(world * (world + 1) // 2)
    if got != expected:
        raise CheckFailed("all_reduce of 1..{} to give {}".format(world, expected), str(got))
    return "{} all_reduce over {} process(es) = {}{}".format(backend, world, got, note)


# --------------------------------------------------------------------------------------------------
# monitoring and environment
# --------------------------------------------------------------------------------------------------


def check_shipped_configs(subject: Subject) -> str:
    """Configs shipped through case_config_dirs are named <tag>x<N>x<M>.yaml and fit the case's
    defaults (no unknown keys, no bad YAML)."""
    import re

    from chipbench.case import discover_cases, plugin_config_dirs
    from chipbench.config import load_yaml, resolve
    from chipbench.errors import ChipbenchError

    host, shipped = subject.facade.host, []
    mine = [host.vendor_plugin_name(subject.info.name)]  # another plugin's configs are its own
    if not any(impl.plugin_name in mine
               for impl in host.pm.hook.case_config_dirs.get_hookimpls()):
        raise CheckSkipped("the vendor ships no configs (optional hook case_config_dirs)")
    for record in discover_cases():
        if record.case is None:
            continue
        defaults = load_yaml(record.case.config_dir / "defaults.yaml")
        for folder, _ in plugin_config_dirs(host, record.name, only=mine):
            for path in sorted(folder.glob("*.yaml")):
                if not re.match(r"^[A-Za-z0-9]+x[0-9]+x[0-9]+$", path.stem):
                    raise CheckFailed("config files named <tag>x<N>x<M>.yaml", str(path))
                try:
                    resolve(defaults, [(str(path), load_yaml(path))])
                except ChipbenchError as exc:  # a UserError: one line naming the key
                    raise CheckFailed("{} to fit case {}".format(path.name, record.name),
                                      exc.one_line()) from None
                shipped.append("{}/{}".format(record.name, path.stem))
    return ", ".join(shipped) or "no files for any case"


# --------------------------------------------------------------------------------------------------
# call overhead of the facade
# --------------------------------------------------------------------------------------------------


def _min_call_time(fn: Callable[[], Any], calls: int = 20, samples: int = 25) -> float:
    best = float("inf")
    for _ in range(samples):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


TIMED_HOOK_LIMIT_S = 1e-5
"""Hooks whose own call takes longer than this are not timed: a shared machine's noise in timing
them (seen: +-5 us on a 30 us read of /proc) would be as large as the 5 us being checked. What the
facade adds does not depend on how long the vendor's function takes, so the quick hooks tell it."""

OVERHEAD_TRIES = 3
"""A hook over the limit is timed again this many times in all; real overhead is there every time,
a noisy neighbour is not."""


def _added_us(facade_call: Callable[[], Any], direct_call: Callable[[], Any]) -> float:
    """Microseconds the facade adds to one call: the best of interleaved rounds of each."""
    via = own = float("inf")
    for _ in range(5):  # interleaved, so a burst of load hits both sides alike
        via = min(via, _min_call_time(facade_call, samples=5))
        own = min(own, _min_call_time(direct_call, samples=5))
    return (via - own) * 1e6


def check_overhead(subject: Subject) -> str:
    """Each hook called in the timed training loop costs < 5 us more through the facade
    (its rule included) than a direct call of the vendor's function (hooks that themselves take
    over 10 us are not timed: noise would swamp 5 us)."""
    facade = subject.facade
    added: Dict[str, float] = {}
    untimed = []
    for hook in (h for h in DEVICE_HOOKS if RULE[h].hot):
        kwargs = _hook_kwargs(subject, hook)
        direct = functools.partial(subject.impl(hook), **kwargs)
        direct()  # the first call may load or cache what later calls reuse
        if _min_call_time(direct, calls=2, samples=3) > TIMED_HOOK_LIMIT_S:
            untimed.append(hook)
            continue
        via = functools.partial(facade._call, hook, **kwargs)
        added[hook] = _added_us(via, direct)
        for _ in range(OVERHEAD_TRIES - 1):
            if added[hook] < OVERHEAD_LIMIT_US:
                break
            added[hook] = min(added[hook], _added_us(via, direct))
    if not added:
        raise CheckSkipped("every hook takes over {:.0f} us".format(TIMED_HOOK_LIMIT_S * 1e6))
    slow = {h: us for h, us in added.items() if us >= OVERHEAD_LIMIT_US}
    worst = max(added, key=lambda h: added[h])
    if slow:
        raise CheckFailed("the facade to add < {} us per call".format(OVERHEAD_LIMIT_US),
                          ", ".join("{} +{:.1f} us".format(h, us) for h, us in slow.items()))
    return "at most +{:.1f} us ({}); {} hooks timed{}".format(
        added[worst], worst, len(added),
        ", not timed: " + ", ".join(untimed) if untimed else "")


def check_optional_hooks(subject: Subject) -> str:
    """Each optional hook the vendor implements answers as a run needs: device_loader_workers a
    count >= 0 or None, device_configure None, device_grad_scaler None or a loss scaler (scale,
    unscale_, step, update), device_peak_flops FLOP/s from 1e6 to 1e18 or None for every
    supported precision."""
    from chipbench.errors import PluginError

    facade = subject.facade
    implemented = [h for h in OPTIONAL_DEVICE_HOOKS if facade.implements(h)]
    if not implemented:
        raise CheckSkipped("none implemented: chipbench's defaults serve")
    answers = []
    try:
        if "device_loader_workers" in implemented:
            answers.append("workers {}".format(", ".join(
                str(facade.loader_workers(configured, 1)) for configured in (None, 0, 2))))
        if subject.live:
            device = subject.device()
            precisions = facade.supported_precisions()
            if "device_configure" in implemented:
                for deterministic, autotune in ((False, False), (True, False), (False, True)):
                    facade.configure(device, deterministic, autotune)
                answers.append("configure ok")
            if "device_grad_scaler" in implemented:
                for precision in (p for p in LOSS_SCALED_PRECISIONS if p in precisions):
                    facade.grad_scaler(device, precision)
                answers.append("grad scaler ok")
            if "device_peak_flops" in implemented:
                answers.append("peak " + ", ".join("{} {}".format(p, _tflops(
                    facade.peak_flops(device, p))) for p in precisions))
    except PluginError as exc:
        raise CheckFailed("answers a run can use", exc.problem) from None
    if not subject.live:
        answers.append("not live: configure, grad scaler and peak not called")
    return "; ".join(answers)


def _tflops(value: Optional[float]) -> str:
    return "n/a" if value is None else "{:.3g} TFLOP/s".format(value / 1e12)


# --------------------------------------------------------------------------------------------------
# the list, and running it
# --------------------------------------------------------------------------------------------------


CHECKS: Tuple[Tuple[str, Callable[[Subject], str]], ...] = (
    ("vendor_detect", check_vendor_detect),
) + tuple(("returns:" + hook, _returns(hook)) for hook in DEVICE_HOOKS) + (
    ("device_init_backend", check_init_backend),
    ("device_name", check_device_name),
    ("collective_backend", check_collective_backend),
    ("device_memory_peak", check_memory_peak),
    ("device_synchronize", check_synchronize),
    ("visible_devices_env", check_visible_devices),
    ("collective_all_reduce", check_collective),
    ("shipped_configs", check_shipped_configs),
    ("optional_hooks", check_optional_hooks),
    ("call_overhead", check_overhead),
)
"""Every check, in the order they run: (name, function)."""

CHECK_NAMES = tuple(name for name, _ in CHECKS)


def _expectation(fn: Callable[[Subject], str]) -> str:
    """The first paragraph of a check's docstring, as one line: what the check expects."""
    paragraph = (fn.__doc__ or "").strip().split("\n\n")[0]
    text = " ".join(line.strip() for line in paragraph.splitlines()).rstrip(".")
    return text[0].lower() + text[1:] if text[1:2].islower() else text


def run_check(subject: Subject, name: str, fn: Callable[[Subject], str]) -> Result:
    """Run one check; whatever it raises becomes a one-line :class:`Result`."""
    vendor = subject.info.name
    try:
        got = fn(subject)
    except CheckFailed as exc:
        if _broken_elsewhere(subject, name, exc.hook):
            return Result(vendor, name, "skip", _expectation(fn), _needs(exc.hook))
        if name == "returns:" + exc.hook:
            subject.broken_rules.add(exc.hook)
        return Result(vendor, name, "fail", exc.expected, exc.got)
    except CheckSkipped as exc:
        return Result(vendor, name, "skip", _expectation(fn), str(exc))
    except BaseException as exc:  # noqa: B902 - the plugin raised (sys.exit() too): a failure
        if not plugin_fault(exc):
            raise
        hook = getattr(exc, "hook", "")  # a run's PluginError names the hook that broke its rule
        if _broken_elsewhere(subject, name, hook):
            return Result(vendor, name, "skip", _expectation(fn), _needs(hook))
        frames = traceback.extract_tb(exc.__traceback__)
        where = " (in {})".format(frames[-1].name) if frames else ""
        kind, _, text = describe_exception(exc).partition(": ")
        return Result(vendor, name, "fail", _expectation(fn), "{}{}: {}".format(kind, where, text))
    return Result(vendor, name, "pass", _expectation(fn), got)


def _broken_elsewhere(subject: Subject, check: str, hook: str) -> bool:
    """Whether ``check`` failed only on an answer of ``hook`` that its own rule check has
    already failed (one wrong answer is one FAIL line, not one per check that uses it)."""
    return bool(hook) and hook in subject.broken_rules and check != "returns:" + hook


def _needs(hook: str) -> str:
    return "cannot check: {}'s answer breaks its rule (see returns:{})".format(hook, hook)


def run_checks(facade: Any, live: bool = True, alloc_mib: int = 64,
               only: Optional[Sequence[str]] = None) -> List[Result]:
    """Run the checks (all, or those named in ``only``) on the vendor of ``facade``."""
    subject = Subject(facade, live=live, alloc_mib=alloc_mib)
    return [run_check(subject, name, fn) for name, fn in CHECKS if only is None or name in only]
