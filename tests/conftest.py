import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Two cores on CI: keep torch from oversubscribing them when tests run single-process.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
