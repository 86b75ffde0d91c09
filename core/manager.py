"""Build the plugin manager: built-in plugins first, then third-party ones from entry points.

Loading is forgiving by default: a plugin that fails to import, fails validation or raises in
``vendor_detect`` is recorded as broken (``core vendors`` shows it) and the others keep working.
Environment switches:

- ``CHIPBENCH_STRICT_PLUGINS=1`` makes any such failure fatal (exit 2 naming the plugin);
- ``CHIPBENCH_BLOCK_PLUGINS=a,b`` skips the named plugins (built-in or entry-point names);
- ``CHIPBENCH_TRACE_HOOKS=1`` prints every hook call and result to stderr.
"""

import importlib
import os
import sys
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import pluggy

from chipbench import ENTRY_POINT_GROUP, PROJECT_NAME, hookspecs
from chipbench.errors import PluginError
from chipbench.records import PluginRecord, VendorInfo

ENV_STRICT = "CHIPBENCH_STRICT_PLUGINS"
ENV_BLOCK = "CHIPBENCH_BLOCK_PLUGINS"
ENV_TRACE = "CHIPBENCH_TRACE_HOOKS"

BUILTIN_OBSERVERS = ("chipbench.report",)
"""Built-in plugins that only observe runs (lifecycle hooks)."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _blocked_names() -> set:
    return {n.strip() for n in os.environ.get(ENV_BLOCK, "").split(",") if n.strip()}


def iter_entry_points(group: str = ENTRY_POINT_GROUP) -> Iterator[Tuple[Any, str]]:
    """Yield ``(entry_point, "distribution version")`` for every entry point of ``group``.

    Walks the distributions (works on Python 3.8, where entry points know no distribution) and
    skips duplicates that appear when a distribution is on ``sys.path`` twice.
    """
    from importlib import metadata

    seen = set()
    for dist in metadata.distributions():
        dist_name = dist.metadata["Name"] or "?"
        for ep in dist.entry_points:
            key = (dist_name, ep.name, ep.value)
            if ep.group != group or key in seen:
                continue
            seen.add(key)
            yield ep, "{} {}".format(dist_name, dist.version)


class PluginHost:
    """The plugin manager and what was learnt while loading it.

    One typed method per kind of call; the rest of chipbench never touches ``pm.hook``.
    """

    def __init__(self, pm: pluggy.PluginManager, strict: bool = False) -> None:
        self.pm = pm
        self.strict = strict
        self.records: List[PluginRecord] = []
        self._vendor_plugins: Dict[str, Any] = {}

    # -- loading ----------------------------------------------------------------------------------

    def add(self, plugin: Any, name: str, origin: str) -> Optional[PluginRecord]:
        """Register ``plugin`` under ``name``, validate it and, for a vendor, ask ``vendor_detect``.

        Returns the record (also kept in ``records``); a failure is recorded as broken, or raised
        as :class:`PluginError` in strict mode.
        """
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # pluggy validation error, duplicate name, ...
            return self._broken(name, origin, "cannot register: {}".format(_describe(exc)))
        problem = self._validate(plugin)
        if problem:
            self.pm.unregister(plugin)
            return self._broken(name, origin, problem)
        if not _implements(self.pm, plugin, "vendor_detect"):
            record = PluginRecord(name=name, origin=origin, extra={"kind": "observer"})
            self.records.append(record)
            return record
        try:
            info = _single_impl(self.pm, plugin, "vendor_detect")()
            if not isinstance(info, VendorInfo):
                raise TypeError("vendor_detect returned {!r}, not a VendorInfo".format(info))
        except Exception as exc:
            self.pm.unregister(plugin)
            return self._broken(name, origin, "vendor_detect failed: {}".format(_describe(exc)))
        if info.name in self._vendor_plugins:
            self.pm.unregister(plugin)
            return self._broken(
                info.name, origin, "vendor name '{}' is already taken".format(info.name))
        self._vendor_plugins[info.name] = plugin
        record = PluginRecord(name=info.name, origin=origin, info=info, extra={"kind": "vendor"})
        self.records.append(record)
        return record

    def add_module(self, module_name: str, origin: str = "built-in") -> Optional[PluginRecord]:
        """Import ``module_name`` and :meth:`add` it (short name = last dotted part)."""
        short = module_name.rsplit(".", 1)[-1]
        if short in _blocked_names():
            return None
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            return self._broken(short, origin, "import failed: {}".format(_describe(exc)))
        return self.add(module, short, origin)

    def add_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Load and :meth:`add` every plugin of the entry-point ``group``, one at a time."""
        for ep, dist in iter_entry_points(group):
            if ep.name in _blocked_names():
                continue
            origin = "entry point '{}' from {}".format(ep.name, dist)
            try:
                plugin = ep.load()
            except Exception as exc:
                self._broken(ep.name, origin, "import failed: {}".format(_describe(exc)))
                continue
            self.add(plugin, ep.name, origin)

    def _validate(self, plugin: Any) -> str:
        """Return why ``plugin`` is unusable, or an empty string."""
        unknown = [
            impl_name
            for impl_name, caller in _plugin_hooks(self.pm, plugin)
            if not caller.has_spec()
        ]
        if unknown:
            return "implements unknown hooks: {}".format(", ".join(sorted(unknown)))
        if _implements(self.pm, plugin, "vendor_detect"):
            missing = [h for h in hookspecs.DEVICE_HOOKS if not _implements(self.pm, plugin, h)]
            if missing:
                return "vendor plugin lacks hooks: {}".format(", ".join(missing))
        return ""

    def _broken(self, name: str, origin: str, error: str) -> PluginRecord:
        if self.strict:
            raise PluginError(
                "plugin '{}' ({}) is broken: {}".format(name, origin, error),
                "fix or uninstall it, or unset {} to skip broken plugins".format(ENV_STRICT),
            )
        record = PluginRecord(name=name, origin=origin, error=error)
        self.records.append(record)
        return record

    # -- queries ----------------------------------------------------------------------------------

    def vendors(self) -> List[VendorInfo]:
        """Every working vendor, highest priority first."""
        infos = [r.info for r in self.records if r.info is not None]
        return sorted(infos, key=lambda i: (-i.priority, i.name))

    def record(self, name: str) -> Optional[PluginRecord]:
        """The record of the plugin or vendor called ``name``."""
        for r in self.records:
            if r.name == name:
                return r
        return None

    def keep_only(self, vendor_name: str) -> None:
        """Unregister every vendor but ``vendor_name``: device hooks then have one answer."""
        for name, plugin in list(self._vendor_plugins.items()):
            if name != vendor_name:
                self.pm.unregister(plugin)
                del self._vendor_plugins[name]

    # -- lifecycle --------------------------------------------------------------------------------

    def notify(self, hook_name: str, **kwargs: Any) -> List[str]:
        """Call lifecycle hook ``hook_name`` on every plugin, each on its own.

        An observer that raises does not stop the run: the failures come back as one-line
        messages for the caller to log.
        """
        failures = []
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as exc:
                failures.append(
                    "plugin '{}' failed in {}: {}".format(impl.plugin_name, hook_name,
                                                          _describe(exc)))
        return failures


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return "{}: {}".format(type(exc).__name__, text[0]) if text else type(exc).__name__


def _plugin_hooks(pm: pluggy.PluginManager, plugin: Any) -> Iterable[Tuple[str, Any]]:
    callers = pm.get_hookcallers(plugin) or []
    return [(caller.name, caller) for caller in callers]


def _implements(pm: pluggy.PluginManager, plugin: Any, hook_name: str) -> bool:
    return any(name == hook_name for name, _ in _plugin_hooks(pm, plugin))


def _single_impl(pm: pluggy.PluginManager, plugin: Any, hook_name: str) -> Any:
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        if impl.plugin is plugin:
            return impl.function
    raise LookupError(hook_name)


def build_host(load_entry_points: bool = True, strict: Optional[bool] = None) -> PluginHost:
    """Build a fresh :class:`PluginHost`: built-in vendors and observers, then entry points.

    Built by a function, not at import time, so tests can build as many as they like.
    """
    from chipbench.plugins import BUILTIN_VENDORS

    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    if _env_flag(ENV_TRACE):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    host = PluginHost(pm, strict=_env_flag(ENV_STRICT) if strict is None else strict)
    for module_name in BUILTIN_OBSERVERS + tuple(BUILTIN_VENDORS):
        host.add_module(module_name)
    if load_entry_points:
        host.add_entry_points()
    return host
