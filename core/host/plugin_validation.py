"""What makes a plugin usable: hooks chipbench knows, a vendor's full set of device hooks, and a
``vendor_detect`` answer that keeps its rule. Asked once per plugin, while the host loads it."""

from typing import Any, Iterable, Tuple

import pluggy

from chipbench import hookspecs
from chipbench.host import contract
from chipbench.records import VendorInfo
from chipbench.util.text import shown

OBSERVER_HOOKS = contract.OBSERVER_HOOKS
"""What a plugin without ``vendor_detect`` (an observer, or a config shipper) may implement."""


class WrongVendorInfo(TypeError):
    """``vendor_detect`` answered something its rule refuses (a bool priority, a non-VendorInfo)."""

    def __init__(self, info: Any, problem: str) -> None:
        super().__init__("vendor_detect returned {}, expected {}".format(shown(info), problem))
        self.info = info


def plugin_hooks(pm: pluggy.PluginManager, plugin: Any) -> Iterable[Tuple[str, Any]]:
    """``(hook name, caller)`` of every hook ``plugin`` implements."""
    callers = pm.get_hookcallers(plugin) or []
    return [(caller.name, caller) for caller in callers]


def implements(pm: pluggy.PluginManager, plugin: Any, hook_name: str) -> bool:
    """Whether ``plugin`` implements ``hook_name``."""
    return any(name == hook_name for name, _ in plugin_hooks(pm, plugin))


def plugin_problem(pm: pluggy.PluginManager, plugin: Any) -> str:
    """Why the registered ``plugin`` is unusable, or an empty string."""
    unknown = [name for name, caller in plugin_hooks(pm, plugin) if not caller.has_spec()]
    if unknown:
        return "implements unknown hooks: {}".format(", ".join(sorted(unknown)))
    if not list(plugin_hooks(pm, plugin)):
        return ("implements no chipbench hook (is each marked with chipbench.hookimpl, not "
                "another project's marker, and does the entry point name the module?)")
    if not implements(pm, plugin, "vendor_detect"):
        device = sorted(name for name, _ in plugin_hooks(pm, plugin)
                        if name not in OBSERVER_HOOKS)
        if device:
            return ("implements device hooks ({}) without vendor_detect: they would answer "
                    "for the chosen vendor; mark vendor_detect with @hookimpl, or keep only "
                    "{}".format(", ".join(device), ", ".join(OBSERVER_HOOKS)))
        return ""
    missing = [h for h in hookspecs.DEVICE_HOOKS if not implements(pm, plugin, h)]
    if missing:
        return "vendor plugin lacks hooks: {}".format(", ".join(missing))
    return ""


def detect_alone(pm: pluggy.PluginManager, plugin: Any) -> VendorInfo:
    """``vendor_detect`` of ``plugin`` alone, through pluggy's caller (traced, blockable), held
    to its rule: :class:`WrongVendorInfo` where the answer breaks it."""
    others = [p for p in pm.get_plugins() if p is not plugin]
    answers = pm.subset_hook_caller("vendor_detect", remove_plugins=others)()
    info = answers[0] if answers else None
    problem = contract.RULE["vendor_detect"].problem(info)
    if problem or not isinstance(info, VendorInfo):
        raise WrongVendorInfo(info, problem)
    return info
