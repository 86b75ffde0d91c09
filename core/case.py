"""The public case API: the one chipbench module a case imports (docs/cases.md is its guide).

Version :data:`CASE_API_VERSION` is ``"major.minor"``: the minor grows when a name, a method or
a ``ctx`` helper is added, the major when one is removed or changes meaning. A case written for
1.x runs on every 1.y with y >= x.

The contract:

- A case is a package with a module-level ``CASE = YourCase()`` (a :class:`Case` subclass) and a
  ``configs/`` folder whose ``defaults.yaml`` is also its schema (other layers may set only its
  keys; it holds ``run.monitor_interval_s`` and ``run.timeout_s``, which the worker reads).
  Bundled cases live in ``chipbench.cases``; any other distribution adds one through the
  entry-point group ``chipbench.cases``.
- Launcher side, once per run, before any worker starts and without a device:
  :meth:`Case.overlays`, :meth:`Case.validate`, :meth:`Case.prepare`, :meth:`Case.general_rows`,
  :meth:`Case.precision`, :meth:`Case.target`; :meth:`Case.check_resume` on ``--resume``;
  :meth:`Case.memory_hint` after an allocation failure. Their answers are checked; a bad one is
  a one-line error naming the case and the method.
- Worker side, on every rank: :meth:`Case.run` with a :class:`RunContext` (``ctx``), which is
  the case's only way to the device (the vendor's hooks), the ranks, the run folder and the
  meter. It returns the final metrics: the case's ``metric_name`` and chipbench's figures
  (``ctx.epoch_counters()``); chipbench sets ``converged`` itself.
- A case imports nothing else of chipbench (its own modules excepted): every name it needs is
  in ``__all__`` here, every device call is a ``ctx`` method.
"""

from pathlib import Path
from typing import Any, Dict, List, Tuple

from chipbench.errors import UserError, user_os_error
from chipbench.hookspecs import PRECISIONS
from chipbench.measure.flops import flops_per_trained_image
from chipbench.measure.metrics import RunMeter, is_number
from chipbench.run.config import Config, load_yaml
from chipbench.run.context import RunContext
from chipbench.util import safeio
from chipbench.util.text import shown

CASE_API_VERSION = "1.0"
"""This API's version, ``"major.minor"`` (see the module's docstring)."""

__all__ = [
    "CASE_API_VERSION",
    "Case",
    "Config",
    "PRECISIONS",
    "RunContext",
    "RunMeter",
    "UserError",
    "flops_per_trained_image",
    "is_number",
    "load_yaml",
    "read_checkpoint",
    "safeio",
    "shown",
    "user_os_error",
]


class Case:
    """What the runner needs from a case. Subclass it, set the attributes, override the methods.

    Launcher side (once per run, before any worker starts): :meth:`overlays`, :meth:`validate`,
    :meth:`prepare`, :meth:`general_rows`, :meth:`precision`, :meth:`target`,
    :meth:`check_resume`, :meth:`memory_hint`. Worker side (every rank): :meth:`run`.
    """

    name = "case"
    """What ``core run NAME`` takes (one line of text)."""
    title = "case"
    """What ``core cases`` shows."""
    config_dir: Path = Path(".")
    """The absolute folder of the case's configs (``defaults.yaml`` and any other layer)."""
    metric_name = "score"
    """The key of the final metrics that is compared with :meth:`target` ("converged") and shown
    in the result table where the seed shows mAP ("mAP", "accuracy", ...)."""
    sample_unit = "samples"
    """What the throughputs count: p_whole/p_train/p_core are ``sample_unit`` per second (the
    metrics' ``images`` counter holds that many)."""
    fix_hp_keys: Dict[str, str] = {}
    """Config keys that count as hyper-parameters in ``fix_hp``, with their short names."""
    packages: Tuple[str, ...] = ()
    """Distributions whose versions the result records for this case (``("torchvision",)``)."""

    def overlays(self, config: Config) -> List[Tuple[str, Config]]:
        """Extra config layers that depend on the provisional config (e.g. the embedded data):
        (source, mapping) pairs."""
        return []

    def validate(self, config: Config, precisions: List[str]) -> None:
        """Raise :class:`UserError` for values that are wrong for this case or this vendor
        (``precisions``: those the vendor supports on this machine)."""

    def prepare(self, config: Config) -> Dict[str, Any]:
        """Get data and weights ready; return facts for the spec and the report (its
        ``dataset_note`` is shown with the result)."""
        return {}

    def general_rows(self, config: Config, prepared: Dict[str, Any], hardware_label: str
                     ) -> List[Tuple[str, str, str]]:
        """The seed's "general indicators" table: (indicator, value, note) rows."""
        return []

    def precision(self, config: Config) -> str:
        """The precision the run trains in: one of :data:`PRECISIONS`."""
        return str(config.get("train", {}).get("precision", "fp32"))

    def target(self, config: Config) -> Any:
        """The value of ``metric_name`` that counts as converged; None: no target."""
        return None

    def check_resume(self, run_dir: Path) -> None:
        """On ``--resume``, before anything is written: raise :class:`UserError` where the run
        folder's state cannot be resumed (e.g. ``read_checkpoint(run_dir)`` refuses it). The
        default accepts every folder."""

    def memory_hint(self, config: Config) -> Tuple[str, str]:
        """After an allocation failure: what failed to fit in memory, and the settings that make
        it smaller, in the config's words."""
        return "the run", "the input or batch size"

    def run(self, ctx: RunContext) -> Dict[str, Any]:
        """Train and evaluate on this rank; return the final metrics (meaningful on rank 0)."""
        raise NotImplementedError


def read_checkpoint(run_dir: Path) -> Dict[str, Any]:
    """The checkpoint that ``ctx.save_checkpoint`` wrote in run folder ``run_dir``, read safely
    (tensors and plain data only, bounded) and checked; a one-line :class:`UserError` where it is
    missing, unreadable, unsafe or altered. For :meth:`Case.check_resume`; a worker uses
    ``ctx.load_checkpoint()``."""
    from chipbench.run import checkpoints

    path = checkpoints.checkpoint_path(Path(run_dir))
    state = checkpoints.load(path)
    checkpoints.check_run_state(state, path)
    return state
