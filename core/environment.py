"""Software facts that every environment report carries, whatever the vendor says."""

import platform
from typing import Any, Dict


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
