"""Input validation helpers: the finiteness check's fast path must not change its verdict."""

import pytest
import torch

from pushforward._validate import check_finite


def test_check_finite_passes_finite_input_even_when_its_sum_overflows():
    x = torch.full((4,), 3e38)  # finite entries whose float32 sum is inf
    assert check_finite(x) is x
    assert check_finite(torch.arange(3)) is not None  # integers are never non-finite


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_check_finite_names_count_and_first_index(bad):
    x = torch.zeros(3, 4, dtype=torch.float64)
    x[1, 2] = bad
    x[2, 0] = bad
    with pytest.raises(ValueError, match=r"data contains 2 non-finite value\(s\).*first at index \(1, 2\)"):
        check_finite(x, "data")


def test_check_finite_catches_inf_plus_minus_inf_that_sums_to_nan():
    with pytest.raises(ValueError, match="2 non-finite"):
        check_finite(torch.tensor([float("inf"), -float("inf"), 1.0]))
