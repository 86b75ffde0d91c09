"""Small helpers the built-in vendor modules share (tool calls, versions, visible devices)."""

import os
import re
import shutil
import subprocess
from typing import Any, List, Optional, Sequence


def run_tool(argv: Sequence[str], timeout: float = 10.0) -> Optional[str]:
    """Run a management tool without a shell and with a timeout; its stdout, or None on failure."""
    exe = shutil.which(argv[0])
    if exe is None:
        return None
    try:
        done = subprocess.run([exe] + list(argv[1:]), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.decode("utf-8", "replace")


def visible_index(local_index: int, env_names: Sequence[str]) -> int:
    """Map a torch device index to the physical index that management tools use.

    The first of ``env_names`` that is set wins ("2,3" makes torch device 1 physical device 3);
    entries that are not integers (UUIDs) leave the index as it is.
    """
    for name in env_names:
        value = os.environ.get(name)
        if value is None or not value.strip():
            continue
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if local_index < len(parts) and parts[local_index].isdigit():
            return int(parts[local_index])
        return local_index
    return local_index


def cuda_like_precisions(bf16_supported: bool) -> List[str]:
    """fp32/amp/fp16 always on CUDA-compatible stacks; bf16 when the device supports it."""
    return ["fp32", "amp", "fp16"] + (["bf16"] if bf16_supported else [])


def cuda_like_configure(deterministic: bool, autotune: bool) -> None:
    """Determinism and autotuning switches of CUDA-compatible stacks (cuBLAS workspace, cuDNN)."""
    import torch

    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = bool(autotune) and not deterministic


def cuda_like_grad_scaler() -> Optional[Any]:
    """None where torch has ``torch.amp.GradScaler`` (chipbench's default then serves), else the
    older ``torch.cuda.amp.GradScaler`` (torch 2.0-2.2 scale losses on CUDA-type devices only)."""
    import torch

    amp = getattr(torch, "amp", None)
    if amp is not None and hasattr(amp, "GradScaler"):
        return None
    return torch.cuda.amp.GradScaler()


# --------------------------------------------------------------------------------------------------
# which vendor a torch build of device type "cuda" belongs to, and the hardware tag of a GPU name
# --------------------------------------------------------------------------------------------------

METAX_BUILD = re.compile(r"\+(mc|metax)\d", re.IGNORECASE)
"""The local version of MetaX's torch builds (``2.0.0+mc2.18.0.8``, ``2.8.0+metax3.5.3.9``)."""

ROCM_BUILD = re.compile(r"\+rocm\d", re.IGNORECASE)
"""The local version of AMD's ROCm torch builds (``2.5.1+rocm6.2``)."""

CUDA_TYPE_OWNERS = {"nvidia": "cuda", "rocm": "rocm", "metax": "metax"}
"""The built-in vendor that owns torch's ``cuda`` device type, per :func:`cuda_build_family`."""


def cuda_build_family(version: Optional[str], hip: Optional[str], cuda: Optional[str]) -> str:
    """Whose stack answers torch's ``cuda`` device type in this build: ``"metax"``, ``"rocm"``,
    ``"nvidia"``, or ``""`` for none (a CPU-only build, or torch not installed).

    ``version`` is the installed torch version (package metadata, so that a test can fake it),
    ``hip`` and ``cuda`` are ``torch.version.hip`` and ``torch.version.cuda``. Every built-in
    vendor of device type ``cuda`` decides with this one function, so exactly one of them claims
    a build: MetaX's torch names itself in its version, ROCm's sets ``torch.version.hip``.
    """
    text = version or ""
    if METAX_BUILD.search(text):
        return "metax"
    if hip or ROCM_BUILD.search(text):
        return "rocm"
    if cuda:
        return "nvidia"
    return ""


def torch_cuda_build_family() -> str:
    """:func:`cuda_build_family` of the installed torch (imports torch only where it is one)."""
    from chipbench.measure.environment import installed_torch_version

    version = installed_torch_version()
    if not version:
        return ""
    if METAX_BUILD.search(version):
        return "metax"
    import torch

    return cuda_build_family(version, getattr(torch.version, "hip", None),
                             getattr(torch.version, "cuda", None))


_GPU_TAG = re.compile(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b")
_MAKERS = ("NVIDIA", "AMD", "INTEL")


def hardware_tag(name: str, default: str) -> str:
    """The config tag of a device called ``name``: its part number ("NVIDIA A100-SXM4-80GB" ->
    ``A100``, "AMD Instinct MI300X" -> ``MI300X``), else its first word that is not a maker's
    name, reduced to ASCII letters and digits; ``default`` when nothing is left."""
    match = _GPU_TAG.search(name)
    if match:
        return match.group(1)
    words = [w for w in re.split(r"[\s_\-/(),]+", name) if w and w.upper() not in _MAKERS]
    tag = "".join(c for c in (words[0] if words else "") if c.isascii() and c.isalnum())
    return tag[:32] or default
