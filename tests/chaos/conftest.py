"""pytest glue for the chaos checker: the integration harness on sys.path,
the `fast` marker, and a `cluster` fixture (the integration suite's Cluster)."""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.join(HERE, "..", "integration"))

from checker import Cluster  # noqa: E402  (after the sys.path change)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "fast: a scenario that runs well under 40 s (make chaos-fast)")


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(str(tmp_path))
    yield c
    c.stop_all()
