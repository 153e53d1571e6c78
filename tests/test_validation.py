import pytest
import torch

from pyro_aevb.validation import check_data, check_num_data, check_positive_float


def test_check_data_accepts_good_input_and_names_the_argument():
    x = torch.rand(3, 4)
    assert check_data(x, "train", 4, unit_interval=True) is x
    with pytest.raises(ValueError, match="^train contains non-finite values.*index \\(1, 2\\)"):
        bad = x.clone()
        bad[1, 2] = float("inf")
        check_data(bad, "train")
    huge = torch.full((2, 2), 3e38)  # finite entries whose sum overflows
    assert check_data(huge, "x") is huge
    with pytest.raises(TypeError, match="^data must be a torch.Tensor"):
        check_data([[0.5]], "data")


def test_scalar_checks():
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        check_positive_float(float("nan"), "lr")
    assert check_num_data(None, 7) == 7
    with pytest.raises(TypeError, match="num_data"):
        check_num_data(2.5, 1)
