"""Every test starts from the same global RNG state, so a test's outcome does not depend
on which tests ran before it (tiny models are initialised from the global RNG).
Compiled kernels (``gan_monitor.core.native``) go to a folder of this test session,
not the user's cache (child processes inherit it)."""
import os
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


@pytest.fixture(autouse=True, scope="session")
def _native_kernel_folder(tmp_path_factory):
    if not os.environ.get("GAN_MONITOR_NATIVE_DIR"):
        os.environ["GAN_MONITOR_NATIVE_DIR"] = str(tmp_path_factory.mktemp("native"))
    yield
