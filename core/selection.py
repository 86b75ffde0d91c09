"""Choose the vendor of a run: ``--vendor NAME`` (or ``CHIPBENCH_VENDOR``), else auto-detection."""

import os
from typing import Callable, Optional

from chipbench.errors import UserError
from chipbench.manager import PluginHost
from chipbench.records import VendorInfo

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
        record = host.record(requested)
        if record is None:
            known = ", ".join(v.name for v in host.vendors()) or "none"
            raise UserError(
                "unknown vendor '{}' (known: {}; available: {})".format(
                    requested, known, _available_list(host)),
                "pick one of them, or install the plugin that provides '{}'".format(requested),
            )
        if record.broken:
            raise UserError(
                "vendor '{}' is broken: {}".format(requested, record.error),
                "fix or reinstall that plugin (see `core vendors`); available: {}".format(
                    _available_list(host)),
            )
        if not record.info.available:
            raise UserError(
                "vendor '{}' is not available here: {}".format(requested, record.info.reason),
                "run on a machine where it is, or choose an available vendor: {}".format(
                    _available_list(host)),
            )
        return record.info
    for info in host.vendors():
        if info.available:
            return info
    raise UserError("no vendor is available on this machine",
                    "run `core vendors` to see why each vendor declined")


def select_device(host: PluginHost, requested: Optional[str] = None,
                  announce: Optional[Callable[[str], None]] = None):
    """Choose the vendor, keep only its plugin registered and return its :class:`Device` facade.

    ``announce`` receives a line when auto-detection fell to the CPU-class vendor of lowest
    priority, so that nobody benchmarks the CPU by accident.
    """
    from chipbench.device import Device

    info = choose_vendor(host, requested)
    explicit = bool(requested or os.environ.get(ENV_VENDOR))
    if not explicit and announce is not None:
        others = [v.name for v in host.vendors() if v.name != info.name]
        if info.device_type == "cpu":
            announce("no accelerator vendor is available ({}): running on the CPU".format(
                ", ".join(others) or "none installed"))
        else:
            announce("auto-detected vendor '{}'".format(info.name))
    host.keep_only(info.name)
    return Device(host, info)
