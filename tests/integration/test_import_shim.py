"""The start-up shim (shim/zoomrl_import_shim.py): a torchaudio/torchcodec build that cannot load
beside our torch must look absent to transformers, and one that loads must stay visible.

Each case runs a fresh interpreter (the shim acts at start-up, through its .pth file) with a
stand-in package first on sys.path: one whose import raises OSError, as the real CPU-incompatible
builds do (`Could not load this library: .../_torchaudio.so`), and one that imports cleanly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import importlib.util, sys
import transformers.utils.import_utils as iu
print(importlib.util.find_spec('torchaudio') is not None, iu.is_torchaudio_available(),
      iu.is_torchcodec_available())
"""


def _probe(tmp_path: Path, audio_body: str, codec_body: str) -> list[str]:
    for name, body in (("torchaudio", audio_body), ("torchcodec", codec_body)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(body)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_the_shim_is_installed():
    import zoomrl_import_shim  # noqa: F401  (installed beside its .pth file by the package)

    pth = Path(zoomrl_import_shim.__file__).with_suffix(".pth")
    assert pth.read_text().strip() == "import zoomrl_import_shim"


@pytest.mark.parametrize("error", ["OSError('Could not load this library: _torchaudio.so')",
                                   "ImportError('undefined symbol')"])
def test_audio_packages_that_cannot_load_look_absent(tmp_path, error):
    assert _probe(tmp_path, f"raise {error}", f"raise {error}") == ["False", "False", "False"]


def test_audio_packages_that_load_stay_visible(tmp_path):
    assert _probe(tmp_path, "__version__ = '2.13.0'", "__version__ = '0.1'") == ["True", "True", "True"]
