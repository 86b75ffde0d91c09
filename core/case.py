"""Find a benchmark case by name or path, and the contract a case implements.

``core run cases/retinanet`` and ``core run retinanet`` both name the package ``chipbench.cases.retinanet``,
whose module-level ``CASE`` object is a :class:`Case`.
"""

import importlib
import pkgutil
from pathlib import Path
from typing import Any, Dict, List, Tuple

from chipbench.config import Config
from chipbench.errors import UserError


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
