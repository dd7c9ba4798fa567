"""Programs some tests run that pip does not install: Debian's Prometheus (promtool, prometheus) and
Chromium. .ci/run installs them and sets the variable named here, so in CI a missing one fails the
test instead of skipping it."""

from __future__ import annotations

import os
import shutil

import pytest


def require_program(name: str, debian_package: str, ci_variable: str) -> str:
    """The path of program `name`; skip the test without it, or fail when `ci_variable` is set."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get(ci_variable):
            pytest.fail(f"{name} not found: .ci/run installs Debian's {debian_package} package")
        pytest.skip(f"{name} not installed (apt-get install {debian_package})")
    return path


def require_promtool() -> str:
    return require_program("promtool", "prometheus", "ZOOMRL_REQUIRE_PROMETHEUS")


def require_chromium() -> str:
    return require_program("chromium", "chromium", "ZOOMRL_REQUIRE_CHROMIUM")
