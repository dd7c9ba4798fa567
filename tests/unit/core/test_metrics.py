import re
import urllib.request

import pytest

from core.config import ConfigError
from core.metrics import METRICS, DriverMetrics, prometheus_name
from tests.helpers import ROOT


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def test_driver_endpoint_serves_every_metric_over_http():
    metrics = DriverMetrics("127.0.0.1", 0)
    try:
        metrics.record({"accuracy": 0.25, "dropped_groups": 2, "queue_depth": 3, "val/accuracy": 0.5})
        metrics.record({"dropped_groups": 1})
        text = scrape(metrics.url)
        assert re.search(r"^zoomrl_accuracy 0\.25$", text, re.M)
        assert re.search(r"^zoomrl_dropped_groups_total 3\.0$", text, re.M)
        assert re.search(r"^zoomrl_val_accuracy 0\.5$", text, re.M)  # '/' is '_' on Prometheus
        for spec in METRICS:
            assert prometheus_name(spec.name) in text
    finally:
        metrics.close()


def test_unknown_metric_names_are_refused():
    metrics = DriverMetrics("127.0.0.1", 0)
    try:
        with pytest.raises(KeyError, match="not defined"):
            metrics.record({"acuracy": 1.0})
    finally:
        metrics.close()


def test_every_metric_is_documented():
    doc = (ROOT / "docs" / "metrics.md").read_text()
    for spec in METRICS:
        assert f"`{prometheus_name(spec.name)}`" in doc, f"{spec.name} missing from docs/metrics.md"


def test_a_taken_port_is_refused_naming_the_key():
    first = DriverMetrics("127.0.0.1", 0)
    try:
        with pytest.raises(ConfigError, match=rf"^metrics.port={first.port}: .*metrics.port=0"):
            DriverMetrics("127.0.0.1", first.port)
    finally:
        first.close()
