"""Every test starts from the same global RNG state, so a test's outcome does not depend
on which tests ran before it (tiny models are initialised from the global RNG)."""
import random

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_global_rng():
    random.seed(0)
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    # multi-process (DDP) tests; they run in `make test` and CI; `-m "not slow"` skips them locally
    config.addinivalue_line("markers", "slow: multi-process tests (2 CPU processes, gloo); run in CI")
