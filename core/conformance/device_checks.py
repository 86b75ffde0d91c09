"""Checks that run work on the device: the allocator peak rises with an allocation and falls with a
reset, and ``device_synchronize`` really waits for queued work."""

import time
from typing import Any

from chipbench.conformance.subject import CheckFailed, Subject, runs_work


def _mib(value: float) -> str:
    return "{:.0f} MiB".format(value / 2**20)


def _empty_cache(device: Any) -> None:
    """Return cached blocks to the device (the device module's ``empty_cache``, where it has one)."""
    import torch

    module = getattr(torch, device.type, None)
    empty = getattr(module, "empty_cache", None)
    if callable(empty):
        empty()


PEAK_SLACK_BYTES = 2**20
"""How far below N MiB the peak's rise may fall: page rounding and reuse by host allocators."""


@runs_work
def check_memory_peak(subject: Subject) -> str:
    """Allocating N MiB raises the allocator peak by at least N (less 1 MiB: a host allocator may
    reuse a few freed pages); a reset after freeing lowers it."""
    import gc

    import torch

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


@runs_work
def check_synchronize(subject: Subject) -> str:
    """device_synchronize waits for queued work: after it, reading the result takes no time."""
    import torch

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
