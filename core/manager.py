"""Build the plugin manager: built-in plugins first, then third-party ones from entry points.

Loading is forgiving by default: a plugin that fails to import, fails validation or raises in
``vendor_detect`` is recorded as broken (``core vendors`` shows it) and the others keep working.
Every hook call, ``vendor_detect`` and the lifecycle hooks included, goes through pluggy's own hook
callers, so ``tryfirst``/``trylast``, blocking and tracing behave as pluggy documents them.
Environment switches:

- ``CHIPBENCH_STRICT_PLUGINS=1`` makes broken plugins fatal (exit 2 naming every broken one);
- ``CHIPBENCH_BLOCK_PLUGINS=a,b`` blocks the named plugins (``pm.set_blocked``): entry-point or
  built-in module names (not even imported) and vendor names as ``core vendors`` shows them;
  a name that matches nothing is warned about on stderr;
- ``CHIPBENCH_TRACE_HOOKS=1`` prints every hook call and result to stderr (pluggy's tracing);
- ``CHIPBENCH_DETECT_TIMEOUT_S=<seconds>`` bounds each ``vendor_detect`` and each entry point's
  import (default 60): one that has not returned by then (a driver probe that hangs) is recorded
  as broken, and every command goes on without it instead of hanging.
"""

import contextlib
import importlib
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set, Tuple

import pluggy

from chipbench import ENTRY_POINT_GROUP, PROJECT_NAME, contract, hookspecs
from chipbench.config import shown
from chipbench.errors import (  # noqa: F401 - describe_exception: chipbench.manager's name too
    PluginError,
    UserError,
    describe_exception,
    plugin_fault,
)
from chipbench.records import PluginRecord, VendorInfo

ENV_STRICT = "CHIPBENCH_STRICT_PLUGINS"
ENV_BLOCK = "CHIPBENCH_BLOCK_PLUGINS"
ENV_TRACE = "CHIPBENCH_TRACE_HOOKS"
ENV_DETECT_TIMEOUT = "CHIPBENCH_DETECT_TIMEOUT_S"

BUILTIN_OBSERVERS = ("chipbench.report",)
"""Built-in plugins that only observe runs (lifecycle hooks)."""


def _env_flag(name: str) -> bool:
    """An on/off environment switch; a value that is neither is a one-line error."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise UserError("{}={!r} is neither on nor off".format(name, os.environ[name]),
                    "set it to 1 (on) or 0 (off), or unset it")


def _blocked_names() -> List[str]:
    names = [n.strip() for n in os.environ.get(ENV_BLOCK, "").split(",") if n.strip()]
    return list(dict.fromkeys(names))


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


SLOW_DETECT_S = 2.0
"""A ``vendor_detect`` slower than this is named in a warning (it delays every command)."""

DETECT_TIMEOUT_S = 60.0
"""A ``vendor_detect`` that has not returned after this long is given up on (broken)."""

MIN_DETECT_TIMEOUT_S, MAX_DETECT_TIMEOUT_S = 0.1, 3600.0


def env_seconds(name: str, default: float, low: float, high: float) -> float:
    """Seconds from environment variable ``name`` (``default`` where it is unset or empty); a
    value that is no number within ``low``..``high`` is a one-line error naming the variable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # nan fails too
        raise UserError("{}={!r} is not a number of seconds in {:g}..{:g}".format(
            name, os.environ[name], low, high), "set it to e.g. {:g}, or unset it".format(default))
    return value


def detect_timeout() -> float:
    """Seconds one ``vendor_detect`` may take: ``$CHIPBENCH_DETECT_TIMEOUT_S`` or the default."""
    return env_seconds(ENV_DETECT_TIMEOUT, DETECT_TIMEOUT_S, MIN_DETECT_TIMEOUT_S,
                       MAX_DETECT_TIMEOUT_S)


class CallTimedOut(Exception):
    """A plugin's import or ``vendor_detect`` did not return in time (it keeps running in a
    daemon thread)."""


def call_with_timeout(function: Callable[[], Any], timeout: float, what: str) -> Any:
    """``function()``, run in a daemon thread and waited for at most ``timeout`` seconds.

    Its result is returned and its exception re-raised; if it is still running after
    ``timeout``, :class:`CallTimedOut` is raised and the thread is left behind (a daemon
    thread does not keep the process alive, so a hung driver probe cannot hang the command).
    """
    outcome: Dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:  # noqa: B902 - handed to the caller, SystemExit included
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="chipbench " + what, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise CallTimedOut("{} did not return within {:g} s".format(what, timeout))
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


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


def hung(exc: CallTimedOut, name: str) -> str:
    """The broken record's line for plugin ``name`` that did not return in time."""
    return "{} (a hung driver probe?); fix the plugin, block it with {}={}, or raise {}".format(
        exc, ENV_BLOCK, name, ENV_DETECT_TIMEOUT)


OBSERVER_HOOKS = contract.OBSERVER_HOOKS
"""What a plugin without ``vendor_detect`` (an observer, or a config shipper) may implement."""


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
        problem = self._validate(plugin)
        if problem:
            self.pm.unregister(plugin)
            return self._broken(name, origin, problem, extra)
        self._guard_lifecycle(plugin)
        if not _implements(self.pm, plugin, "vendor_detect"):
            record = PluginRecord(name=name, origin=origin, extra=dict(extra, kind="observer"))
            self.records.append(record)
            return record
        import_framework(self.detect_timeout)
        started = time.perf_counter()
        try:
            info = call_with_timeout(lambda: self._detect(plugin), self.detect_timeout,
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

    def _detect(self, plugin: Any) -> VendorInfo:
        """``vendor_detect`` of ``plugin`` alone, through pluggy's caller (traced, blockable)."""
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        answers = self.pm.subset_hook_caller("vendor_detect", remove_plugins=others)()
        info = answers[0] if answers else None
        problem = contract.RULE["vendor_detect"].problem(info)
        if problem or not isinstance(info, VendorInfo):
            raise WrongVendorInfo(info, problem)
        return info

    def _guard_lifecycle(self, plugin: Any) -> None:
        """Wrap ``plugin``'s lifecycle implementations so that an exception becomes a failure
        message: pluggy still calls them, in its order, traced; the other observers still run."""
        for caller in self.pm.get_hookcallers(plugin) or []:
            if caller.name not in hookspecs.LIFECYCLE_HOOKS:
                continue
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and not (impl.hookwrapper or getattr(impl, "wrapper",
                                                                               False)):
                    # pluggy calls whatever ``function`` holds (typed Final: assigned once, here)
                    impl.function = self._guarded(  # type: ignore[misc]
                        impl.function, impl.plugin_name, caller.name)

    def _guarded(self, function: Callable[..., Any], plugin_name: str,
                 hook_name: str) -> Callable[..., Any]:
        failures = self._failures

        def guarded(*args: Any) -> Any:
            try:
                return function(*args)
            except BaseException as exc:  # noqa: B902 - sys.exit() and the like in a plugin too
                if not plugin_fault(exc):
                    raise
                failures.append("plugin '{}' failed in {}: {}".format(
                    plugin_name, hook_name, describe_exception(exc)))
                return None

        return guarded

    def _validate(self, plugin: Any) -> str:
        """Return why ``plugin`` is unusable, or an empty string."""
        unknown = [
            impl_name
            for impl_name, caller in _plugin_hooks(self.pm, plugin)
            if not caller.has_spec()
        ]
        if unknown:
            return "implements unknown hooks: {}".format(", ".join(sorted(unknown)))
        if not list(_plugin_hooks(self.pm, plugin)):
            return ("implements no chipbench hook (is each marked with chipbench.hookimpl, not "
                    "another project's marker, and does the entry point name the module?)")
        if not _implements(self.pm, plugin, "vendor_detect"):
            device = sorted(name for name, _ in _plugin_hooks(self.pm, plugin)
                            if name not in OBSERVER_HOOKS)
            if device:
                return ("implements device hooks ({}) without vendor_detect: they would answer "
                        "for the chosen vendor; mark vendor_detect with @hookimpl, or keep only "
                        "{}".format(", ".join(device), ", ".join(OBSERVER_HOOKS)))
        if _implements(self.pm, plugin, "vendor_detect"):
            missing = [h for h in hookspecs.DEVICE_HOOKS if not _implements(self.pm, plugin, h)]
            if missing:
                return "vendor plugin lacks hooks: {}".format(", ".join(missing))
        return ""

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
        come back as one-line messages for the caller to log.
        """
        if hook_name not in hookspecs.LIFECYCLE_HOOKS:
            raise ValueError("{} is not a lifecycle hook".format(hook_name))
        del self._failures[:]
        try:
            getattr(self.pm.hook, hook_name)(**kwargs)
        except BaseException as exc:  # noqa: B902 - a hook wrapper's own failure
            if not plugin_fault(exc):
                raise
            self._failures.append("a wrapper failed in {}: {}".format(hook_name, describe_exception(exc)))
        failures = list(self._failures)
        del self._failures[:]
        return failures


class WrongVendorInfo(TypeError):
    """``vendor_detect`` answered something its rule refuses (a bool priority, a non-VendorInfo)."""

    def __init__(self, info: Any, problem: str) -> None:
        super().__init__("vendor_detect returned {}, expected {}".format(shown(info), problem))
        self.info = info


def _plugin_hooks(pm: pluggy.PluginManager, plugin: Any) -> Iterable[Tuple[str, Any]]:
    callers = pm.get_hookcallers(plugin) or []
    return [(caller.name, caller) for caller in callers]


def _implements(pm: pluggy.PluginManager, plugin: Any, hook_name: str) -> bool:
    return any(name == hook_name for name, _ in _plugin_hooks(pm, plugin))


def build_host(load_entry_points: bool = True, strict: Optional[bool] = None) -> PluginHost:
    """Build a fresh :class:`PluginHost`: built-in vendors and observers, then entry points.

    Built by a function, not at import time, so tests can build as many as they like.
    Names of ``CHIPBENCH_BLOCK_PLUGINS`` that match nothing are warned about on stderr (when the
    entry points were loaded, so that every name could match).
    """
    from chipbench.plugins import BUILTIN_VENDORS

    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    if _env_flag(ENV_TRACE):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    host = PluginHost(pm, strict=_env_flag(ENV_STRICT) if strict is None else strict,
                      blocked=_blocked_names())
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
