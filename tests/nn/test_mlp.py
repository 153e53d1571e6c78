"""The MLP trunk: the paper's MLP without its output layer."""

import pytest
import torch

from pyro_aevb.nn import MLP, MLPTrunk


def test_the_trunk_is_the_mlp_without_its_output_layer():
    torch.manual_seed(0)
    mlp = MLP(12, (7, 5), 3)
    trunk = MLPTrunk(12, (7, 5))
    for mine, theirs in zip(trunk.hidden, mlp.hidden, strict=True):
        mine.load_state_dict(theirs.state_dict())
    x = torch.randn(4, 3, 4)  # rows of any shape are flattened
    assert trunk.out_dim == 5
    assert torch.allclose(mlp.out(trunk(x)), mlp(x.reshape(4, 12)))
    linear = MLPTrunk(12, ())
    assert linear.out_dim == 12 and torch.equal(linear(x), x.reshape(4, 12))
    with pytest.raises(ValueError, match="rows of 12 values"):
        trunk(torch.randn(4, 10))
    with pytest.raises(ValueError, match="activation must be one of"):
        MLPTrunk(3, 4, "swish")
