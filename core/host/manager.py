"""The plugin host: built-in plugins first, then third-party ones from entry points, in one
pluggy manager that the rest of chipbench asks through typed methods.

Loading is forgiving by default: a plugin that fails to import, fails validation or raises in
``vendor_detect`` is recorded as broken (``core vendors`` shows it) and the others keep working.
Every hook call, ``vendor_detect`` and the lifecycle hooks included, goes through pluggy's own hook
callers, so ``tryfirst``/``trylast``, blocking and tracing behave as pluggy documents them. The
environment switches (strict, blocked, traced plugins, the detect timeout) are
:mod:`chipbench.host.plugin_switches`; what makes a plugin usable is :mod:`chipbench.host.plugin_validation`;
observers' calls are :mod:`chipbench.host.lifecycle`.
"""

import contextlib
import importlib
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

import pluggy

from chipbench import ENTRY_POINT_GROUP, PROJECT_NAME, hookspecs
from chipbench.errors import PluginError, describe_exception, plugin_fault
from chipbench.host import lifecycle
from chipbench.host.deadlines import (  # noqa: F401 - chipbench.host.manager's names too
    CallTimedOut,
    call_with_timeout,
    env_seconds,
)
from chipbench.host.entry_points import iter_entry_points
from chipbench.host.plugin_switches import (  # noqa: F401 - chipbench.host.manager's names too
    DETECT_TIMEOUT_S,
    ENV_BLOCK,
    ENV_DETECT_TIMEOUT,
    ENV_STRICT,
    ENV_TRACE,
    MAX_DETECT_TIMEOUT_S,
    MIN_DETECT_TIMEOUT_S,
    blocked_names,
    detect_timeout,
    env_flag,
    hung,
)
from chipbench.host.plugin_validation import (  # noqa: F401 - chipbench.host.manager's names too
    OBSERVER_HOOKS,
    WrongVendorInfo,
    detect_alone,
    implements,
    plugin_problem,
)
from chipbench.records import PluginRecord, VendorInfo

BUILTIN_OBSERVERS = ("chipbench.outputs.report",)
"""Built-in plugins that only observe runs (lifecycle hooks)."""

SLOW_DETECT_S = 2.0
"""A ``vendor_detect`` slower than this is named in a warning (it delays every command)."""


def import_framework(timeout: float) -> None:
    """Import torch, where it is installed and not yet imported, before a ``vendor_detect`` is
    timed: nearly every vendor's detection imports it, and its import (seconds on a GPU machine,
    where it loads the device libraries) is not the plugin's own time. A failed or hung import is
    left for the plugins' own detection to meet and report."""
    import importlib.util

    if "torch" in sys.modules or importlib.util.find_spec("torch") is None:
        return
    try:
        call_with_timeout(lambda: importlib.import_module("torch"), timeout, "import torch")
    except BaseException as exc:  # noqa: B902 - reported by the first plugin that imports it
        if not plugin_fault(exc):
            raise


class PluginHost:
    """The plugin manager and what was learnt while loading it.

    One typed method per kind of call; the rest of chipbench never touches ``pm.hook``.
    """

    def __init__(self, pm: pluggy.PluginManager, strict: bool = False,
                 blocked: Iterable[str] = ()) -> None:
        self.pm = pm
        self.strict = strict
        self.records: List[PluginRecord] = []
        self._vendor_plugins: Dict[str, Any] = {}
        self._failures: List[str] = []
        self._deferring = False
        self.block_requested: List[str] = list(blocked)
        """Names asked for in ``CHIPBENCH_BLOCK_PLUGINS``."""
        self.block_matched: Set[str] = set()
        """The requested names that matched a plugin (by its plugin or its vendor name)."""
        self.slow_detects: List[Tuple[str, float]] = []
        """``(plugin, seconds)`` of each ``vendor_detect`` slower than :data:`SLOW_DETECT_S`."""
        self.detect_timeout = detect_timeout()
        for name in self.block_requested:
            pm.set_blocked(name)

    # -- loading ----------------------------------------------------------------------------------

    def add(self, plugin: Any, name: str, origin: str,
            aliases: Iterable[str] = ()) -> Optional[PluginRecord]:
        """Register ``plugin`` under ``name``, validate it and, for a vendor, ask ``vendor_detect``.

        ``aliases`` are further names a user may know the plugin by (its distribution).
        Returns the record (also kept in ``records``), or None when the plugin is blocked; a
        failure is recorded as broken, or raised as :class:`PluginError` in strict mode.
        """
        extra = {"aliases": [name] + [a for a in aliases if a != name]}
        if self.pm.is_blocked(name):
            self.block_matched.add(name)
            return None
        holder = self.pm.get_plugin(name)
        if holder is not None:
            taken = next((r.origin for r in self.records if name in r.extra.get("aliases", [])),
                         "another plugin")
            return self._broken(name, origin, "plugin name '{}' is already taken by {}; rename "
                                "this entry point".format(name, taken), extra)
        try:
            self.pm.register(plugin, name=name)
        except BaseException as exc:  # noqa: B902 - sys.exit() and the like in a plugin too
            if not plugin_fault(exc):
                raise
            return self._broken(name, origin, "cannot register: {}".format(describe_exception(exc)), extra)
        problem = plugin_problem(self.pm, plugin)
        if problem:
            self.pm.unregister(plugin)
            return self._broken(name, origin, problem, extra)
        lifecycle.guard_lifecycle(self.pm, plugin, self._failures)
        if not implements(self.pm, plugin, "vendor_detect"):
            record = PluginRecord(name=name, origin=origin, extra=dict(extra, kind="observer"))
            self.records.append(record)
            return record
        import_framework(self.detect_timeout)
        started = time.perf_counter()
        try:
            info = call_with_timeout(lambda: detect_alone(self.pm, plugin), self.detect_timeout,
                                     "vendor_detect")
        except CallTimedOut as exc:
            self.pm.unregister(plugin)
            return self._broken(name, origin, hung(exc, name), extra)
        except BaseException as exc:  # noqa: B902 - sys.exit() and the like in a plugin too
            if not plugin_fault(exc):
                raise
            self.pm.unregister(plugin)
            if isinstance(exc, WrongVendorInfo):  # known by the vendor name it gave, if any
                named = getattr(exc.info, "name", None)
                if isinstance(named, str) and named and named not in extra["aliases"]:
                    extra["aliases"].append(named)
                return self._broken(name, origin, str(exc), extra)
            return self._broken(name, origin, "vendor_detect failed: {}".format(describe_exception(exc)),
                                extra)
        took = time.perf_counter() - started
        if took > SLOW_DETECT_S:
            self.slow_detects.append((name, took))
        if info.name != name and self.pm.is_blocked(info.name):
            self.block_matched.add(info.name)
            self.pm.set_blocked(name)  # unregisters it, and keeps it out for this host's life
            return None
        if info.name in self._vendor_plugins:
            self.pm.unregister(plugin)
            taker = next((r.origin for r in self.records if r.info is not None
                          and r.info.name == info.name), "another plugin")
            return self._broken(
                info.name, origin, "vendor name '{}' is already taken by {}: rename it in this "
                "plugin's vendor_detect".format(info.name, taker), extra)
        self._vendor_plugins[info.name] = plugin
        record = PluginRecord(name=info.name, origin=origin, info=info,
                              extra=dict(extra, kind="vendor"))
        self.records.append(record)
        return record

    def add_module(self, module_name: str, origin: str = "built-in") -> Optional[PluginRecord]:
        """Import ``module_name`` and :meth:`add` it (short name = last dotted part).

        A blocked name is not even imported.
        """
        short = module_name.rsplit(".", 1)[-1]
        if self.pm.is_blocked(short):
            self.block_matched.add(short)
            return None
        try:
            module = importlib.import_module(module_name)
        except BaseException as exc:  # noqa: B902 - sys.exit() and the like in a plugin too
            if not plugin_fault(exc):
                raise
            return self._broken(short, origin, "import failed: {}".format(describe_exception(exc)),
                                {"aliases": [short]})
        return self.add(module, short, origin)

    def add_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Load and :meth:`add` every plugin of the entry-point ``group``, one at a time.

        A blocked entry-point name is not even imported.
        """
        for ep, dist in iter_entry_points(group):
            dist_name = dist.rsplit(" ", 1)[0]
            blocked = [n for n in (ep.name, dist_name) if self.pm.is_blocked(n)]
            if blocked:  # by its entry-point name or its distribution's
                self.block_matched.update(blocked)
                continue
            origin = "entry point '{}' from {}".format(ep.name, dist)
            aliases = [dist.rsplit(" ", 1)[0]]
            try:  # an import that hangs (a driver probe at module level) is given up on too
                plugin = call_with_timeout(ep.load, self.detect_timeout, "its import")
            except CallTimedOut as exc:
                self._broken(ep.name, origin, hung(exc, ep.name), {"aliases": [ep.name] + aliases})
                continue
            except BaseException as exc:  # noqa: B902 - sys.exit() and the like in a plugin too
                if not plugin_fault(exc):
                    raise
                self._broken(ep.name, origin, "import failed: {}".format(describe_exception(exc)),
                             {"aliases": [ep.name] + aliases})
                continue
            self.add(plugin, ep.name, origin, aliases)

    def load_all(self, modules: Iterable[str], entry_points: bool = True) -> None:
        """Add the built-in ``modules``, then the entry points; in strict mode raise one
        :class:`PluginError` naming every broken plugin (after all of them were tried)."""
        self._deferring = True
        try:
            for module_name in modules:
                self.add_module(module_name)
            if entry_points:
                self.add_entry_points()
        finally:
            self._deferring = False
        broken = [r for r in self.records if r.broken]
        if self.strict and broken:
            raise PluginError(
                "{} broken plugin(s): {}".format(len(broken), "; ".join(
                    "'{}' ({}): {}".format(r.name, r.origin, r.error) for r in broken)),
                "fix or uninstall them, or unset {} to skip broken plugins".format(ENV_STRICT),
            )

    def unmatched_blocks(self) -> List[str]:
        """Names of ``CHIPBENCH_BLOCK_PLUGINS`` that matched no plugin."""
        return [n for n in self.block_requested if n not in self.block_matched]

    def _broken(self, name: str, origin: str, error: str,
                extra: Optional[Dict[str, Any]] = None) -> PluginRecord:
        record = PluginRecord(name=name, origin=origin, error=error, extra=dict(extra or {}))
        if self.strict and not self._deferring:
            raise PluginError(
                "plugin '{}' ({}) is broken: {}".format(name, origin, error),
                "fix or uninstall it, or unset {} to skip broken plugins".format(ENV_STRICT),
            )
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

    def find(self, name: str) -> Optional[PluginRecord]:
        """The record called ``name``, else the one whose entry-point or distribution name it is."""
        found = self.record(name)
        if found is not None:
            return found
        for r in self.records:
            if name in r.extra.get("aliases", ()):
                return r
        return None

    def vendor_package(self, vendor_name: str) -> str:
        """The distribution and version that vendor ``vendor_name`` comes from
        ("acme-chipbench 1.2.0"); chipbench's own for a built-in vendor."""
        from chipbench import __version__

        record = self.record(vendor_name)
        origin = record.origin if record is not None else ""
        if " from " in origin:  # "entry point 'acme' from acme-chipbench 1.2.0"
            return origin.rsplit(" from ", 1)[1]
        return "chipbench {}".format(__version__)

    def vendor_plugin_name(self, vendor_name: str) -> Optional[str]:
        """The name the plugin of vendor ``vendor_name`` is registered under (its entry point's)."""
        plugin = self._vendor_plugins.get(vendor_name)
        return None if plugin is None else self.pm.get_name(plugin)

    def keep_only(self, vendor_name: str) -> None:
        """Unregister every vendor but ``vendor_name``: device hooks then have one answer."""
        for name, plugin in list(self._vendor_plugins.items()):
            if name != vendor_name:
                self.pm.unregister(plugin)
                del self._vendor_plugins[name]

    def callers_by_plugin(self, hook: str) -> List[Tuple[str, Any]]:
        """``(plugin name, caller)`` for each plugin that implements ``hook``, the caller asking
        that plugin alone through pluggy (tracing and blocking apply), for answers that are
        collected and judged plugin by plugin."""
        plugins = self.pm.get_plugins()
        found = []
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            others = [p for p in plugins if p is not impl.plugin]
            found.append((impl.plugin_name, self.pm.subset_hook_caller(hook, remove_plugins=others)))
        return found

    def vendor_function(self, hook: str) -> Callable[..., Any]:
        """The chosen vendor's own function for device hook ``hook`` (the conformance kit times a
        direct call of it against the facade's)."""
        return getattr(self.pm.hook, hook).get_hookimpls()[-1].function

    # -- lifecycle --------------------------------------------------------------------------------

    def notify(self, hook_name: str, **kwargs: Any) -> List[str]:
        """Call lifecycle hook ``hook_name`` through pluggy (its order, tryfirst/trylast, tracing).

        An observer that raises does not stop the run, nor the observers after it: the failures
        come back as one-line messages for the caller to log (:func:`chipbench.host.lifecycle.notify`).
        """
        return lifecycle.notify(self.pm, self._failures, hook_name, **kwargs)


def build_host(load_entry_points: bool = True, strict: Optional[bool] = None) -> PluginHost:
    """Build a fresh :class:`PluginHost`: built-in vendors and observers, then entry points.

    Built by a function, not at import time, so tests can build as many as they like.
    Names of ``CHIPBENCH_BLOCK_PLUGINS`` that match nothing are warned about on stderr (when the
    entry points were loaded, so that every name could match).
    """
    from chipbench.plugins import BUILTIN_VENDORS

    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    if env_flag(ENV_TRACE):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    host = PluginHost(pm, strict=env_flag(ENV_STRICT) if strict is None else strict,
                      blocked=blocked_names())
    # a plugin that prints while it loads or detects must not corrupt `--json` on stdout
    with contextlib.redirect_stdout(sys.stderr):
        host.load_all(BUILTIN_OBSERVERS + tuple(BUILTIN_VENDORS), entry_points=load_entry_points)
    for name, took in host.slow_detects:
        sys.stderr.write("warning: plugin '{}' took {:.1f} s in vendor_detect, which runs on every "
                         "command; report it to its authors, or block it with {}={}\n".format(
                             name, took, ENV_BLOCK, name))
    unmatched = host.unmatched_blocks()
    if unmatched and load_entry_points:
        sys.stderr.write("warning: {} names no plugin: {} (plugin and vendor names: {})\n".format(
            ENV_BLOCK, ", ".join(unmatched), ", ".join(_known_names(host)) or "none"))
    return host


def _known_names(host: PluginHost) -> List[str]:
    names: List[str] = []
    for r in host.records:
        for n in [r.name] + list(r.extra.get("aliases", ())):
            if n not in names:
                names.append(n)
    return names
