"""Pyro's example VAE as shipped in :mod:`pyro_aevb.models.examples`: an ordinary Pyro
program whose bound is the hand-computed one."""

import pyro
import pyro.poutine as poutine
import torch
import torch.nn.functional as F

from pyro_aevb.models import PyroExampleVAE


def test_the_example_vae_is_pyros_model_and_guide():
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = PyroExampleVAE(z_dim=3, hidden_dim=8, data_dim=12, plate="batch", prefix="a_").double()
    x = (torch.rand(5, 12) < 0.4).double()
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    assert set(pyro.get_param_store().keys()) == {
        f"a_{net}$$${name}" for net in ("encoder", "decoder")
        for name, _ in getattr(vae, net).named_parameters()
    }  # fmt: skip
    frame = model_trace.nodes["latent"]["cond_indep_stack"][0]
    assert (frame.name, frame.size) == ("batch", 5)
    z = guide_trace.nodes["latent"]["value"]
    assert z.shape == (5, 3)
    # log p(x, z) - log q(z | x), computed by hand from the networks
    mu, sigma = vae.encoder(x)
    log_q = torch.distributions.Normal(mu, sigma).log_prob(z).sum(-1)
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_lik = -F.binary_cross_entropy(vae.decoder(z), x, reduction="none").sum(-1)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    log_w = (
        model_trace.nodes["latent"]["log_prob"]
        + model_trace.nodes["obs"]["log_prob"]
        - guide_trace.nodes["latent"]["log_prob"]
    )
    assert torch.allclose(log_w, log_prior + log_lik - log_q)
