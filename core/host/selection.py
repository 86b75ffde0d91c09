"""Choose the vendor of a run: ``--vendor NAME`` (or ``CHIPBENCH_VENDOR``), else auto-detection."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Optional

from chipbench.errors import UserError
from chipbench.host.manager import ENV_BLOCK, PluginHost
from chipbench.records import VendorInfo

if TYPE_CHECKING:
    from chipbench.host.device import Device

ENV_VENDOR = "CHIPBENCH_VENDOR"


def _available_list(host: PluginHost) -> str:
    names = [v.name for v in host.vendors() if v.available]
    return ", ".join(names) if names else "none"


def choose_vendor(host: PluginHost, requested: Optional[str] = None) -> VendorInfo:
    """Return the vendor a run should use, without changing ``host``.

    An explicitly requested vendor must exist and be available: there is no silent fallback.
    Auto-detection takes the available vendor of highest priority.
    """
    requested = requested or os.environ.get(ENV_VENDOR) or None
    if requested:
        record = host.record(requested) or host.find(requested)
        if record is None and requested in host.block_matched:
            raise UserError("vendor '{}' is blocked by {}".format(requested, ENV_BLOCK),
                            "remove it from {}, or choose another vendor: {}".format(
                                ENV_BLOCK, _available_list(host)))
        if record is None:
            known = ", ".join(v.name for v in host.vendors()) or "none"
            raise UserError(
                "unknown vendor '{}' (known: {}; available: {})".format(
                    requested, known, _available_list(host)),
                "pick one of them, or install the plugin that provides '{}'".format(requested),
            )
        if record.broken:
            raise UserError(
                "vendor plugin '{}' ({}) is broken: {}".format(
                    record.name, record.origin, record.error),
                "fix, reinstall or uninstall that plugin (see `core vendors`); available: {}"
                .format(_available_list(host)),
            )
        if record.name != requested:
            raise UserError(
                "'{}' is not a vendor name: it provides vendor '{}' ({})".format(
                    requested, record.name, record.origin),
                "use --vendor {}".format(record.name),
            )
        info = record.info
        if info is None:
            raise UserError("'{}' is a plugin that observes runs, not a vendor".format(requested),
                            "choose a vendor: {}".format(_available_list(host)))
        if not info.available:
            raise UserError(
                "vendor '{}' is not available here: {}".format(requested, info.reason),
                "run on a machine where it is, or choose an available vendor: {}".format(
                    _available_list(host)),
            )
        return info
    for info in host.vendors():
        if info.available and dedicated_for(host, info) is None:
            return info
    raise UserError("no vendor is available on this machine",
                    "run `core vendors` to see why each vendor declined")


def dedicated_for(host: PluginHost, info: VendorInfo) -> Optional[str]:
    """For a generic vendor (:attr:`VendorInfo.generic`), the available dedicated vendor of its
    device type that auto-detection takes instead, whatever the priorities; else None."""
    if not info.generic:
        return None
    return next((other.name for other in host.vendors() if other.available and not other.generic
                 and other.device_type == info.device_type and other.name != info.name), None)


def auto_selection_line(host: PluginHost, info: VendorInfo) -> str:
    """The line that announces an auto-selected vendor: its name, and for a CPU-type vendor why
    no accelerator was taken (only vendors that really are unavailable are called so)."""
    line = "auto-selected vendor '{}' (priority {}, device type {})".format(
        info.name, info.priority, info.device_type)
    tied = [v.name for v in host.vendors()
            if v.available and v.priority == info.priority and v.name != info.name]
    if tied:
        line += " over {} of the same priority (ties go by name; choose with --vendor)".format(
            ", ".join(repr(n) for n in tied))
    if info.device_type != "cpu":
        return line
    accelerators = [v for v in host.vendors() if v.device_type != "cpu" and v.name != info.name]
    unavailable = [v.name for v in accelerators if not v.available]
    lower = [v.name for v in accelerators if v.available]
    if lower:
        why = "available accelerator vendors rank lower: {}".format(", ".join(lower))
    elif unavailable:
        why = "no accelerator vendor is available ({} not available here)".format(
            ", ".join(unavailable))
    else:
        why = "no accelerator vendor is installed"
    return "{}: running on the CPU; {}; see `core vendors`".format(line, why)


def select_device(host: PluginHost, requested: Optional[str] = None,
                  announce: Optional[Callable[[str], None]] = None) -> Device:
    """Choose the vendor, keep only its plugin registered and return its :class:`Device` facade.

    ``announce`` receives a line naming the vendor that auto-detection picked, and for a CPU-type
    vendor why no accelerator was taken, so that nobody benchmarks the CPU by accident.
    """
    from chipbench.host.device import Device

    info = choose_vendor(host, requested)
    explicit = bool(requested or os.environ.get(ENV_VENDOR))
    if not explicit and announce is not None:
        announce(auto_selection_line(host, info))
    host.keep_only(info.name)
    return Device(host, info)
