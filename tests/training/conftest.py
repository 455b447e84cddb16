"""One intra-op thread for these tiny models: on a shared 2-core machine, two threads spin-wait."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
