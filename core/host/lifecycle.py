"""Lifecycle hooks (``on_run_start``, ``on_epoch_end``, ...): observers called through pluggy, in
its order and traced, where one observer that raises stops neither the run nor the observers
after it; its failure comes back as a one-line message for the caller to log."""

from typing import Any, Callable, List

import pluggy

from chipbench import hookspecs
from chipbench.errors import failure_line, plugin_fault


def guard_lifecycle(pm: pluggy.PluginManager, plugin: Any, failures: List[str]) -> None:
    """Wrap ``plugin``'s lifecycle implementations so that an exception becomes a line in
    ``failures``: pluggy still calls them, in its order, traced; the other observers still run."""
    for caller in pm.get_hookcallers(plugin) or []:
        if caller.name not in hookspecs.LIFECYCLE_HOOKS:
            continue
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and not (impl.hookwrapper or getattr(impl, "wrapper", False)):
                # pluggy calls whatever ``function`` holds (typed Final: assigned once, here)
                impl.function = _guarded(  # type: ignore[misc]
                    impl.function, impl.plugin_name, caller.name, failures)


def _guarded(function: Callable[..., Any], plugin_name: str, hook_name: str,
             failures: List[str]) -> Callable[..., Any]:
    def guarded(*args: Any) -> Any:
        try:
            return function(*args)
        except BaseException as exc:  # noqa: B902 - sys.exit() and the like in a plugin too
            if not plugin_fault(exc):
                raise
            failures.append(failure_line("plugin '{}'".format(plugin_name), hook_name, exc))
            return None

    return guarded


def notify(pm: pluggy.PluginManager, failures: List[str], hook_name: str,
           **kwargs: Any) -> List[str]:
    """Call lifecycle hook ``hook_name`` through pluggy (its order, tryfirst/trylast, tracing);
    the failures of its guarded observers (collected in ``failures``) and of a hook wrapper come
    back as one-line messages, and ``failures`` is left empty."""
    if hook_name not in hookspecs.LIFECYCLE_HOOKS:
        raise ValueError("{} is not a lifecycle hook".format(hook_name))
    del failures[:]
    try:
        getattr(pm.hook, hook_name)(**kwargs)
    except BaseException as exc:  # noqa: B902 - a hook wrapper's own failure
        if not plugin_fault(exc):
            raise
        failures.append(failure_line("a wrapper", hook_name, exc))
    found = list(failures)
    del failures[:]
    return found
