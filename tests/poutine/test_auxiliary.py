"""Auxiliary guide sites (a joint draw that sets the model's latents through Delta sites) in
the per-datapoint estimators: counted exactly by estimator A, IWAE and log q at given
latents (when the site declares which latents it holds), refused by estimator B."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from marginal_helpers import PPCA

from pyro_aevb import AnalyticKLError, elbo_per_datapoint
from pyro_aevb.evaluate import iwae_log_weights
from pyro_aevb.mcmc import PerDatapointPotential
from pyro_aevb.poutine import UNCONSTRAINED_OF, ConditionAuxiliary


def _aux_guide(ppca, declare):
    def guide(x):
        mean, cov = ppca.posterior(x)
        infer = {"is_auxiliary": True}
        if declare:
            infer[UNCONSTRAINED_OF] = ("z",)
        with pyro.plate("data", x.shape[0]):
            u = pyro.sample("u", dist.MultivariateNormal(mean, cov), infer=infer)
            pyro.sample("z", dist.Delta(u, event_dim=1))

    return guide


@pytest.mark.parametrize("declare", [True, False])
def test_an_auxiliary_exact_posterior_gives_log_p_x_for_every_draw(ppca, declare):
    x = ppca.simulate(20)
    guide = _aux_guide(ppca, declare)
    exact = ppca.log_marginal(x)
    assert torch.allclose(elbo_per_datapoint(ppca.model, guide, x, estimator="A"), exact)
    log_w = iwae_log_weights(ppca.model, guide, x, 30)
    assert torch.allclose(log_w, exact.expand(30, -1), atol=1e-9, rtol=0)
    with pytest.raises(AnalyticKLError, match="auxiliary site 'u'"):
        elbo_per_datapoint(ppca.model, guide, x, estimator="B")
    pot = PerDatapointPotential(ppca.model, x, guide=guide)
    u = torch.randn(20, 2, dtype=torch.float64)
    if declare:
        mean, cov = ppca.posterior(x)
        expected = dist.MultivariateNormal(mean, cov).log_prob(u)
        assert torch.allclose(pot.log_guide(u), expected, atol=1e-10, rtol=0)
    else:
        with pytest.raises(ValueError, match=r"auxiliary site 'u' does not declare"):
            pot.log_guide(u)


def test_condition_auxiliary_refuses_latents_the_model_does_not_have():
    ppca = PPCA()
    x = ppca.simulate(4)
    pot = PerDatapointPotential(ppca.model, x, guide=_aux_guide(ppca, True))
    position = torch.zeros(4, 2, dtype=torch.float64)
    values = pot.layout.unflatten_constrained(position)

    def guide(x):
        with pyro.plate("data", 4):
            pyro.sample("w", dist.Normal(torch.zeros(4, 2), 1.0).to_event(1),
                        infer={"is_auxiliary": True, UNCONSTRAINED_OF: ("w",)})  # fmt: skip

    with pytest.raises(ValueError, match=r"declares the latents \['w'\].*not local latent"):
        ConditionAuxiliary(pot.layout, position, values)(guide)(x)
