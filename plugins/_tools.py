"""Small helpers the built-in vendor modules share (tool calls, versions, visible devices)."""

import os
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
