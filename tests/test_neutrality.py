"""No vendor in core/ or cases/: vendor names and vendor libraries live in plugins (hooks) only.

The check reads code, not prose: identifiers, attributes, imports and string literals are
scanned; comments and docstrings are not. Data files (a case's hardware configs such as
``C500x1x8.yaml``) are not code and are not scanned.
"""

import ast
import re
from pathlib import Path
from typing import Iterator, List, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
NEUTRAL_TREES = ("core", "cases")

VENDOR_WORDS = (
    # NVIDIA and its libraries
    "cuda", "cudnn", "cublas", "nccl", "nvidia", "nvml", "cupti",
    # MetaX (C500): its runtime, binding, smi tool and collectives
    "metax", "maca", "mxsml", "pymxsml", "mxc500", "c500", "mccl",
    # other accelerator stacks a vendor plugin would bring
    "rocm", "hip", "rccl", "ascend", "npu", "hccl", "cann", "musa", "mlu", "cnnl", "xpu",
)
"""Words (whole, any case, optionally followed by digits: ``cuda12``) that only a plugin may use."""

_WORD = re.compile(r"[a-z0-9]+")
_VENDOR = re.compile(r"(?:{})\d*".format("|".join(VENDOR_WORDS)))


def vendor_words(text: str) -> List[str]:
    """The vendor words in ``text`` (split at everything but letters and digits)."""
    return [w for w in _WORD.findall(text.lower()) if _VENDOR.fullmatch(w)]


def _docstrings(tree: ast.AST) -> Set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(
                    getattr(body[0], "value", None), ast.Constant) and isinstance(
                    body[0].value.value, str):
                ids.add(id(body[0].value))
    return ids


def scan_source(source: str) -> Iterator[Tuple[int, str]]:
    """``(line, word)`` for every vendor word in the code of ``source`` (comments and
    docstrings left out)."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        texts: List[str] = []
        if isinstance(node, ast.Name):
            texts = [node.id]
        elif isinstance(node, ast.Attribute):
            texts = [node.attr]
        elif isinstance(node, ast.arg):
            texts = [node.arg]
        elif isinstance(node, ast.keyword) and node.arg:
            texts = [node.arg]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            texts = [node.name]
        elif isinstance(node, ast.alias):
            texts = [node.name, node.asname or ""]
        elif isinstance(node, ast.ImportFrom):
            texts = [node.module or ""]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            texts = [node.value]
        for text in texts:
            for word in vendor_words(text):
                yield getattr(node, "lineno", 0), word


def test_scanner_sees_code_and_skips_prose():
    source = '''"""Runs on cuda and metax (docstrings are prose)."""
import os  # cudnn in a comment is prose too
import torch


def f(device):
    """nccl here is prose."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    if device.type == "cuda":
        return torch.cuda.amp.GradScaler()
    return open("C500x1x8.yaml"), "MACA_VISIBLE_DEVICES", "hipster", "machine"
'''
    found = list(scan_source(source))
    assert sorted(found) == [(8, "cublas"), (9, "cudnn"), (10, "cuda"), (11, "cuda"), (12, "maca")]


def test_no_vendor_names_in_core_or_cases():
    problems = []
    for tree in NEUTRAL_TREES:
        for path in sorted((ROOT / tree).rglob("*.py")):
            for line, word in sorted(set(scan_source(path.read_text(encoding="utf-8")))):
                problems.append("{}:{}: {}".format(path.relative_to(ROOT), line, word))
    assert not problems, "vendor-specific code outside plugins/ (make it a hook):\n" + "\n".join(
        problems)
