"""The minibatch contract: a program on M rows stands for N datapoints, however it is written."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyro_aevb.poutine import DataPlateScale, TrainingProgram, bind_num_data


def plain_model(x):
    pyro.factor("global", torch.tensor(-2.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def plain_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2, 0.7))


def self_scaling_model(x, num_data=None):
    n = num_data or x.shape[0]
    with pyro.plate("data", n, subsample=torch.arange(x.shape[0])):
        z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def test_plate_scale_multiplies_sites_in_the_plate_only():
    x = torch.randn(4)
    tr = poutine.trace(bind_num_data(plain_model, 40)).get_trace(x)
    assert tr.nodes["z"]["scale"] == pytest.approx(10.0)
    assert tr.nodes["x"]["scale"] == pytest.approx(10.0)
    assert tr.nodes["global"]["scale"] == 1.0  # outside the plate: never scaled
    # the loss is the subsampled-plate estimate of the full-data bound
    full = poutine.trace(poutine.replay(plain_model, trace=tr)).get_trace(x)
    scaled = tr.log_prob_sum() - tr.nodes["global"]["log_prob_sum"]
    unscaled = full.log_prob_sum() - full.nodes["global"]["log_prob_sum"]
    torch.testing.assert_close(scaled, 10 * unscaled)


def test_a_program_that_scales_itself_is_called_with_num_data_and_never_scaled_twice():
    x = torch.randn(4)
    tr = poutine.trace(bind_num_data(self_scaling_model, 40)).get_trace(x)
    assert tr.nodes["z"]["scale"] == pytest.approx(10.0)
    with DataPlateScale("data", 40):  # a declared full size is left alone
        tr = poutine.trace(self_scaling_model).get_trace(x, num_data=40)
    assert tr.nodes["z"]["scale"] == pytest.approx(10.0)


def test_the_contract_is_checked_on_the_first_minibatch():
    x = torch.randn(5)
    TrainingProgram(plain_model, plain_guide, num_data=50).check(x)
    TrainingProgram(self_scaling_model, plain_guide, num_data=50).check(x)

    def self_subsampling(x):
        with pyro.plate("data", x.shape[0], subsample_size=2) as idx:
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x[idx])

    with pytest.raises(ValueError, match="subsamples its own data plate 'data' .2 of 5"):
        TrainingProgram(self_subsampling, None, num_data=50).check(x)

    def fixed_size(x):
        with pyro.plate("data", 3):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x[:3])

    with pytest.raises(ValueError, match="has 3 rows at site 'x' but the minibatch has 5"):
        TrainingProgram(fixed_size, None, num_data=50).check(x)

    def wrong_num_data(x, num_data=None):
        with pyro.plate("data", 7, subsample=torch.arange(x.shape[0])):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with pytest.raises(ValueError, match="declares 7 datapoints.*num_data=50"):
        TrainingProgram(wrong_num_data, None, num_data=50).check(x)
    with pytest.raises(ValueError, match="plate named 'batch'.*plates are \\['data'\\]"):
        TrainingProgram(plain_model, plain_guide, num_data=50, plate_name="batch").check(x)
