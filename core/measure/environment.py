"""Software facts that every environment report carries, whatever the vendor says."""

import platform
from typing import Any, Dict, Sequence


def installed_torch_version() -> str:
    """The installed torch's version string ("2.0.0+mc2.18.0.8") without importing torch."""
    from importlib import metadata

    for dist in ("torch", "pytorch"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return ""


def software_report() -> Dict[str, Any]:
    """OS, Python, torch and torchvision versions (read from metadata: no import of torch)."""
    from importlib import metadata

    report: Dict[str, Any] = {
        "os": "{} {}".format(platform.system(), platform.release()),
        "python": platform.python_version(),
        "framework": "torch " + (installed_torch_version() or "not installed"),
    }
    try:
        report["torchvision"] = metadata.version("torchvision")
    except metadata.PackageNotFoundError:
        pass
    return report


CORE_PACKAGES = ("torch", "torchvision", "pluggy")
"""Distributions every run's ``versions`` names besides chipbench and Python: what chipbench
itself runs on. A case's own packages (pycocotools for RetinaNet) come from the case."""


def distribution_names(packages: Any) -> bool:
    """Whether ``packages`` (a case's ``Case.packages``) is a tuple or list of distribution
    names: non-empty texts without spaces. The rule of case discovery and of the version
    report."""
    return isinstance(packages, (list, tuple)) and all(
        isinstance(name, str) and name.strip() and not any(c.isspace() for c in name)
        for name in packages)


def versions(packages: Sequence[str] = ()) -> Dict[str, str]:
    """Versions for ``result.json``: chipbench, Python, :data:`CORE_PACKAGES`, then each
    distribution in ``packages`` (the case's, ``Case.packages``), "not installed" where absent."""
    from importlib import metadata

    from chipbench import __version__
    from chipbench.errors import PluginError

    if not distribution_names(packages):
        raise PluginError("the case's packages must be a list of distribution names, got {!r:.200}"
                          .format(packages), "give Case.packages as e.g. ('pycocotools',)")
    found = {"chipbench": __version__, "python": platform.python_version()}
    for dist in tuple(CORE_PACKAGES) + tuple(packages):
        try:
            found[dist] = metadata.version(dist)
        except (metadata.PackageNotFoundError, ValueError):  # ValueError: not a name it can read
            found[dist] = (dist == "torch" and installed_torch_version()) or "not installed"
    return found
