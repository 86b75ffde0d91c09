"""Checks of what the hooks answer: every hook's answer held to its rule (types and units), the
vendor's identity, a device for each local rank, device names, the collective backend, and the
optional hooks a vendor implements."""

from typing import Callable, Optional

from chipbench.conformance.subject import (
    DEVICE_FREE_HOOKS,
    CheckFailed,
    CheckSkipped,
    Subject,
    hook_kwargs,
    needs_device,
)
from chipbench.host.contract import LOSS_SCALED_PRECISIONS, OPTIONAL_DEVICE_HOOKS, RULE
from chipbench.util.text import shown


def returns(hook: str) -> Callable[[Subject], str]:
    """The check that ``hook`` answers as its rule says; one that needs the device unless the
    hook is among :data:`DEVICE_FREE_HOOKS`."""

    def check(subject: Subject) -> str:
        return shown(subject.obeys(hook, **hook_kwargs(subject, hook)))

    check.__doc__ = "{} answers as its rule says: {}.".format(hook, RULE[hook].returns)
    return check if hook in DEVICE_FREE_HOOKS else needs_device(check)


def check_vendor_detect(subject: Subject) -> str:
    """vendor_detect answers a VendorInfo as its rule says, and says available."""
    info = subject.info
    problem = RULE["vendor_detect"].problem(info)
    if problem:
        raise CheckFailed(problem, shown(info))
    if not info.available:
        raise CheckFailed("an available vendor", "unavailable: " + info.reason)
    return "{} (device type {}, priority {})".format(info.name, info.device_type, info.priority)


@needs_device
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


@needs_device
def check_device_name(subject: Subject) -> str:
    """Every visible device has a name as the rule says."""
    names = [subject.obeys("device_name", index=i) for i in range(subject.count())]
    return ", ".join(sorted(set(names)))


def check_collective_backend(subject: Subject) -> str:
    """collective_backend names what init_process_group can take, as every run checks it:
    backends torch.distributed knows (or the vendor registers in init_backend, asked after it
    where live) and this torch has built in."""
    from chipbench.errors import PluginError
    from chipbench.host.device import unknown_backends

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
        answers.append("static mode: configure, grad scaler and peak not called (they need the "
                       "device)")
    return "; ".join(answers)


def _tflops(value: Optional[float]) -> str:
    return "n/a" if value is None else "{:.3g} TFLOP/s".format(value / 1e12)
