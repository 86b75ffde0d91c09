"""The config layers of a run: which files and settings make its config, in which order, and what a
resumed run's config must hold. Case defaults < hardware file < case overlays < ``--set`` <
command-line flags; a hardware file's keys that a later layer changes are announced."""

from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from chipbench.case import Case
from chipbench.errors import PluginError, UserError
from chipbench.host.contract import PRECISIONS
from chipbench.records import HardwareId
from chipbench.run.config import Config, flatten, load_yaml, parse_set, resolve
from chipbench.run.launcher import Topology
from chipbench.util import safeio


def _hardware_files(dirs: Sequence[Path]) -> List[str]:
    return sorted({p.stem for d in dirs for p in d.glob("*.yaml")
                   if p.stem not in ("defaults", "embedded")})


def hardware_config_path(case: Case, explicit: Optional[str], hardware: HardwareId,
                         topology: Topology, extra_dirs: Sequence[Path] = ()) -> Optional[Path]:
    """The hardware/topology config: ``--config`` (name or path), else ``<tag>x<N>x<M>.yaml``;
    names are looked up in the case's config folder, then in ``extra_dirs`` (plugins' folders).
    A path that is there but is no regular file (a stream such as ``<(cat a.yaml)``, a FIFO, a
    device, a link that loops) is returned: :func:`chipbench.run.config.load_yaml` reads a stream
    and refuses the others, saying what they are."""
    dirs = [case.config_dir] + list(extra_dirs)
    if explicit:
        kind = safeio.kind_of(explicit)
        if kind not in (None, "a folder"):
            return Path(explicit)
        for path in [d / name for d in dirs for name in (explicit, explicit + ".yaml")]:
            if path.is_file():
                return path
        if kind == "a folder":
            raise UserError("config '{}' is a folder".format(explicit),
                            "give a YAML file, or one of: {}".format(", ".join(
                                _hardware_files(dirs))))
        raise UserError("config '{}' not found".format(explicit),
                        "give a YAML path or one of: {}".format(", ".join(_hardware_files(dirs))))
    for folder in dirs:
        auto = folder / "{}x{}.yaml".format(hardware.config_tag, topology.label)
        if auto.is_file():
            return auto
    return None


def resolve_run_config(case: Case, explicit_config: Optional[str], hardware: HardwareId,
                       topology: Topology, sets: List[str], flags: Config,
                       extra_dirs: Sequence[Tuple[Path, str]] = (),
                       announce: Optional[Callable[[str], None]] = None
                       ) -> Tuple[Config, List[str]]:
    """Case defaults < hardware file < case overlays < ``--set`` < command-line flags.

    ``extra_dirs`` are ``(folder, plugin)`` pairs of plugin-shipped configs
    (:func:`chipbench.run.caseload.plugin_config_dirs`). ``announce`` gets a line naming the files
    layered, and one when no hardware file exists for the tag and topology.
    """
    say = announce or (lambda line: None)
    folders = [folder for folder, _ in extra_dirs]
    defaults_path = case.config_dir / "defaults.yaml"
    defaults = load_yaml(defaults_path)
    base: List[Tuple[str, Config]] = []
    hw_path = hardware_config_path(case, explicit_config, hardware, topology, folders)
    if hw_path is not None:
        shipper = {str(folder): plugin for folder, plugin in extra_dirs}.get(str(hw_path.parent))
        try:
            base.append((str(hw_path), load_yaml(hw_path)))
        except UserError as exc:
            if shipper is None:
                raise
            raise PluginError("{} (shipped by plugin '{}')".format(exc.problem, shipper),
                              "report it to the plugin's authors; meanwhile give --config a "
                              "fixed copy") from None
    else:
        wanted = "{}x{}".format(hardware.config_tag, topology.label)
        names = _hardware_files([case.config_dir] + folders)
        same_tag = [n for n in names if n.startswith(hardware.config_tag + "x")]
        say("no hardware config {}.yaml for tag {} and topology {} (case {} has: {}); using the "
            "case defaults".format(wanted, hardware.config_tag, topology.label, case.name,
                                   ", ".join(same_tag or names) or "none"))
    tail = [("--set", parse_set(sets)), ("command-line flags", flags)]
    provisional = resolve(defaults, base + tail)
    layers = base + case.overlays(provisional) + tail
    origins = {str(folder): plugin for folder, plugin in extra_dirs}
    shown = [str(defaults_path)] + [
        "{} (from plugin {})".format(source, origins[str(Path(source).parent)])
        if str(Path(source).parent) in origins else source
        for source, layer in layers if layer or source not in ("--set", "command-line flags")]
    say("config layers: " + " < ".join(shown))
    if base:
        changed = overridden(base[0], layers[len(base):])
        if changed:
            say("hardware config {}: {} of its settings changed by later layers: {}".format(
                Path(base[0][0]).name, len(changed), "; ".join(changed)))
    return resolve(defaults, layers), [source for source, _ in layers]


def overridden(hardware: Tuple[str, Config], later: Sequence[Tuple[str, Config]]) -> List[str]:
    """The settings of the ``hardware`` layer that a ``later`` layer sets otherwise, each as
    ``train.batch_size 2 -> 4 (embedded.yaml)``: the last layer that sets a key wins, and a vendor
    that ships a hardware file is told which of its keys did not."""
    theirs = flatten(hardware[1])
    changed = []
    for key, value in theirs.items():
        final, by = value, ""
        for source, layer in later:
            flat = flatten(layer)
            if key in flat:
                final, by = flat[key], source
        if by and final != value:
            changed.append("{} {} -> {} ({})".format(key, value, final, Path(by).name
                                                     if by not in ("--set", "command-line flags")
                                                     else by))
    return changed


def fix_hp(case: Case, config: Config) -> str:
    """Every setting that differs from the case defaults: ``"bs=24, lr=0.04, model.min_size=128"``
    (the case's short names first, then the other keys by their dotted names). Settings that do
    not change what is trained, or that the report shows elsewhere, are left out: ``run.*``, the
    data folder and loader plumbing, the embedded set's sizes (the data facts), the precision
    (its own column) and how often p_core is timed (the report's throughput note)."""
    not_hp = ("run.", "data.dir", "data.num_workers", "data.pin_memory", "data.synthetic.",
              "train.precision", "train.core_every")
    defaults = flatten(load_yaml(case.config_dir / "defaults.yaml"))
    current = flatten(config)
    keys = list(case.fix_hp_keys) + [k for k in current if k not in case.fix_hp_keys
                                     and not k.startswith(not_hp)]
    return ", ".join("{}={}".format(case.fix_hp_keys.get(key, key), current[key]) for key in keys
                     if key in current and current.get(key) != defaults.get(key))


def precheck_config(case: Case, sets: List[str], flags: Config) -> None:
    """Check ``--set`` and the flags over the case defaults before torch or a plugin is loaded:
    they win over every other layer, so a value that is bad here is bad in the run too."""
    defaults = load_yaml(case.config_dir / "defaults.yaml")
    tail = [("--set", parse_set(sets)), ("command-line flags", flags)]
    config = resolve(defaults, case.overlays(resolve(defaults, tail)) + tail)
    case.validate(config, list(PRECISIONS))


def checked_spec_config(case: Case, spec_config: Config, source: Path) -> Config:
    """The config of a ``spec.json``, checked like a new one (keys, types, values) and complete:
    ``core run`` writes every key, so a key it lacks is refused, never filled in from the
    defaults (a resumed run would train on other settings, or another data set, than the epochs
    it continues)."""
    defaults = load_yaml(case.config_dir / "defaults.yaml")
    missing = missing_keys(defaults, spec_config)
    if missing:
        raise UserError("{} lacks config key{} {}".format(
            source, "s" if len(missing) > 1 else "", ", ".join(missing[:6]) + (
                " and {} more".format(len(missing) - 6) if len(missing) > 6 else "")),
            "restore the spec.json that core run wrote, or start a new run")
    config = resolve(defaults, [(str(source), spec_config)])
    try:
        case.validate(config, list(PRECISIONS))
    except UserError as exc:
        raise UserError("{} (in {})".format(exc.problem, source),
                        "restore the spec.json that core run wrote, or start a new run") from None
    return config


def missing_keys(defaults: Config, config: Config, prefix: str = "") -> List[str]:
    """The dotted keys of ``defaults`` (its leaves) that ``config`` does not hold."""
    missing: List[str] = []
    for key, default in defaults.items():
        if key not in config:
            missing.extend(list(flatten(default, prefix + key + "."))
                           if isinstance(default, dict) and default else [prefix + key])
        elif isinstance(default, dict) and isinstance(config[key], dict):  # else a type error
            missing.extend(missing_keys(default, config[key], prefix + key + "."))
    return missing
