"""Test settings shared by the whole suite."""

from hypothesis import settings

# CI machines are small and shared: no per-example deadline, and the same examples on every run.
settings.register_profile("medcf", deadline=None, derandomize=True, max_examples=100)
settings.load_profile("medcf")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread (tiny models: less overhead, and fair to a parallel job on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
