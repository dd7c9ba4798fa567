"""Unit tests: seconds each, with no Ray cluster, vLLM engine or learner ranks (those tests are in
tests/integration/), so that `make test-fast` stays under a minute."""

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    pytest.fail("a unit test asked for a Ray cluster: it belongs in tests/integration/")
