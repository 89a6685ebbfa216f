import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Test tensors are tiny: one thread avoids oversubscription overhead on small CI machines.
torch.set_num_threads(1)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
