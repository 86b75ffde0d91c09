"""Find a benchmark case by name or path, and the contract a case implements.

``core run cases/retinanet`` and ``core run retinanet`` both name the package ``chipbench.cases.retinanet``,
whose module-level ``CASE`` object is a :class:`Case`.
"""

import importlib
import pkgutil
from pathlib import Path
from typing import Any, Dict, List, Tuple

from chipbench.config import Config
from chipbench.errors import PluginError, UserError


class Case:
    """What the runner needs from a case. Subclass it and override the methods.

    Launcher side (once per run, before any worker starts): :meth:`overlays`, :meth:`validate`,
    :meth:`prepare`, :meth:`general_rows`. Worker side (every rank): :meth:`run`.
    """

    name = "case"
    title = "case"
    config_dir: Path = Path(".")
    fix_hp_keys: Dict[str, str] = {}
    """Config keys that count as hyper-parameters in ``fix_hp``, with their short names."""

    def overlays(self, config: Config) -> List[Tuple[str, Config]]:
        """Extra config layers that depend on the provisional config (e.g. the embedded data)."""
        return []

    def validate(self, config: Config, precisions: List[str]) -> None:
        """Raise :class:`UserError` for values that are wrong for this case or this vendor."""

    def prepare(self, config: Config) -> Dict[str, Any]:
        """Get data and weights ready; return facts for the spec and the report."""
        return {}

    def general_rows(self, config: Config, prepared: Dict[str, Any], hardware_label: str
                     ) -> List[Tuple[str, str, str]]:
        """The seed's "general indicators" table: (indicator, value, note) rows."""
        return []

    def precision(self, config: Config) -> str:
        return str(config.get("train", {}).get("precision", "fp32"))

    def target(self, config: Config) -> Any:
        return None

    def run(self, ctx: Any) -> Dict[str, Any]:
        """Train and evaluate on this rank; return the final metrics (meaningful on rank 0)."""
        raise NotImplementedError


def available_cases() -> List[str]:
    """Names of the case packages that ship with chipbench."""
    from chipbench import cases

    return sorted(m.name for m in pkgutil.iter_modules(cases.__path__) if m.ispkg)


def load_case(argument: str) -> Case:
    """The :class:`Case` named by ``argument`` ("retinanet", "cases/retinanet", a path to it)."""
    name = Path(argument.rstrip("/\\")).name
    if name not in available_cases():
        raise UserError("unknown case '{}'".format(argument),
                        "available cases: {}".format(", ".join(available_cases()) or "none"))
    module = importlib.import_module("chipbench.cases." + name)
    case = getattr(module, "CASE", None)
    if not isinstance(case, Case):
        raise UserError("case package chipbench.cases.{} has no CASE object".format(name),
                        "define CASE = YourCase() in its __init__.py")
    return case


def plugin_config_dirs(host: Any, case_name: str) -> List[Tuple[Path, str]]:
    """``(folder, plugin name)`` for each folder that a plugin ships configs of ``case_name`` in
    (hook ``case_config_dirs``); a plugin that answers something else is a one-line PluginError."""
    found: List[Tuple[Path, str]] = []
    for impl in host.pm.hook.case_config_dirs.get_hookimpls():
        try:
            folders = impl.function(case_name=case_name)
        except Exception as exc:
            raise PluginError("plugin '{}' failed in hook case_config_dirs: {}: {}".format(
                impl.plugin_name, type(exc).__name__, exc), "report it to the plugin's authors") from exc
        if not isinstance(folders, (list, tuple)) or not all(
                isinstance(f, (str, Path)) and Path(f).is_dir() for f in folders):
            raise PluginError("plugin '{}' returned {!r} from case_config_dirs, expected a list "
                              "of existing folders".format(impl.plugin_name, folders),
                              "report it to the plugin's authors")
        found.extend((Path(f), impl.plugin_name) for f in folders)
    return found
