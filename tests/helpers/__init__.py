"""Builders and checks shared by the tests (imported as `tests.helpers.<module>`: the repository
root is on sys.path under pytest, and is the working directory Ray hands its workers, so a helper
sent to a Ray actor is found there too)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository root."""
DEPLOY = ROOT / "deploy"
"""The deployment files: cluster launchers, KubeRay, Prometheus rules, Grafana."""
