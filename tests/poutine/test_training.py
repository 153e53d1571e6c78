"""TrainingProgram.check: set-up errors name the site."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch import nn

from pyro_aevb.poutine import TrainingProgram
from pyro_aevb.poutine.plates import ProgramContractError


def test_a_mask_that_does_not_fit_its_site_is_named_at_set_up():
    dec, enc = nn.Linear(2, 4), nn.Linear(4, 4)

    def model(x):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            with poutine.mask(mask=torch.ones(x.shape, dtype=torch.bool)):  # (M, 4), not (M,)
                pyro.sample("x", dist.Normal(dec(z), 0.5).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", enc)
        mu, log_s = enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(mu, log_s.exp()).to_event(1))

    program = TrainingProgram(model, guide, num_data=20)
    with pytest.raises(ProgramContractError, match=r"model's site 'x'.*batch shape is \(5,\)"):
        program.check(torch.randn(5, 4))
