"""What a conformance check is given and what it gives back: the vendor under test
(:class:`Subject`), the two ways a check ends other than passing (:class:`CheckFailed`,
:class:`CheckSkipped`), and one line per outcome (:class:`Result`).

Static mode (``live=False``) asks no device that may be absent: a check that needs the device says
so (:func:`needs_device`, or the hook it checks is not among :data:`DEVICE_FREE_HOOKS`) and is
listed as not run, and a static subject hands out neither a device nor a device count, so no
check fails there for want of the device runtime (a machine without the device or its driver, a
simulated one). Where the device is this host's CPU (device type ``cpu``) it is always there:
static mode asks it too, and leaves out only the checks that run work on it or start processes
(:func:`runs_work`).
"""

from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Set, TypeVar

from chipbench.host.contract import RULE
from chipbench.records import VendorInfo
from chipbench.util.text import shown

NOT_RUN_STATIC = "not run: static mode (needs the device)"
"""What a check that needs the device says in static mode."""

NOT_RUN_STATIC_WORK = "not run: static mode (runs work on the device or starts processes)"
"""What a check that runs work says in static mode where the device is the host's CPU."""

DEVICE_FREE_HOOKS = frozenset((
    "vendor_detect", "device_name", "hardware_id", "collective_backend", "visible_devices_env",
    "environment_report", "device_loader_workers", "case_config_dirs"))
"""Hooks a vendor answers without its device runtime: detection, the names and the report that
its management tool gives (the vendor's smi tool or library) and fixed answers. Static mode asks these
alone. The others initialise the device, count the devices the runtime sees, ask what the device
supports or are given one; a hook added later needs the device until it is listed here."""

CheckFunction = TypeVar("CheckFunction", bound=Callable[..., str])


def needs_device(check: CheckFunction) -> CheckFunction:
    """Mark ``check`` as one that asks the device (initialises, counts or uses it, no work):
    static mode lists it as not run, unless the device is the host's CPU."""
    check.needs = "device"  # type: ignore[attr-defined]
    return check


def runs_work(check: CheckFunction) -> CheckFunction:
    """Mark ``check`` as one that runs work on the device or starts processes: static mode
    always lists it as not run."""
    check.needs = "work"  # type: ignore[attr-defined]
    return check


def device_free(check: Callable[..., str]) -> bool:
    """Whether ``check`` needs no device (static mode runs it whatever the device)."""
    return getattr(check, "needs", "") == ""


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
        """Whether the check did not fail (passed, or did not apply)."""
        return self.status != "fail"

    def line(self) -> str:
        """One line: ``FAIL fakechip device_count: expected ..., got ...``."""
        if self.status == "skip":
            return "SKIP {} {}: {}".format(self.vendor, self.check, self.got)
        return "{} {} {}: expected {}, got {}".format(
            self.status.upper(), self.vendor, self.check, self.expected, self.got)

    def as_dict(self) -> Dict[str, str]:
        """The result as ``--json`` prints it."""
        return asdict(self)


class Subject:
    """The vendor under test: its facade, raw hook calls, and its device once initialised."""

    def __init__(self, facade: Any, live: bool = True, alloc_mib: int = 64) -> None:
        self.facade = facade
        self.info: VendorInfo = facade.info
        self.live = live
        self.alloc_mib = alloc_mib
        self.device_is_host = self.info.device_type == "cpu"
        """Whether the device is this host's CPU, there wherever the command runs."""
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
        """``device_init_backend(0)``, held to its rule (a ``torch.device`` of the vendor's type);
        in static mode the check is not run instead."""
        self.need_device()
        if self._device is None:
            self._device = self.obeys("device_init_backend", local_rank=0)
        return self._device

    def obeys(self, hook: str, **kwargs: Any) -> Any:
        """Call ``hook`` without the facade and hold its answer to the hook's rule (the rule
        every run applies: :mod:`chipbench.host.contract`)."""
        answer = self.raw(hook, **kwargs)
        problem = RULE[hook].problem(answer, self.info)
        if problem:
            raise CheckFailed(problem, shown(answer), hook)
        return answer

    def count(self) -> int:
        """``device_count()``, held to its rule; in static mode the check is not run instead."""
        self.need_device()
        return int(self.obeys("device_count"))

    def need_device(self) -> None:
        """Stop the calling check, listed as not run, in static mode (unless the device is the
        host's CPU)."""
        if not self.live and not self.device_is_host:
            raise CheckSkipped(NOT_RUN_STATIC)

    def not_run(self, check: Callable[..., str]) -> str:
        """Why ``check`` is not run here (static mode and what it needs), or ""."""
        needs = getattr(check, "needs", "")
        if self.live or not needs:
            return ""
        if self.device_is_host:
            return NOT_RUN_STATIC_WORK if needs == "work" else ""
        return NOT_RUN_STATIC


def hook_kwargs(subject: Subject, hook: str) -> Dict[str, Any]:
    """The arguments a check calls ``hook`` with: the subject's device, local rank 0, index 0."""
    if hook in ("device_synchronize", "device_memory_query", "device_memory_peak",
                "device_memory_reset_peak", "device_sample"):
        return {"device": subject.device()}
    if hook == "device_init_backend":
        return {"local_rank": 0}
    if hook == "device_name":
        return {"index": 0}
    return {}
