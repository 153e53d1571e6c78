"""Semi-amortized training: one step's gradients are the refined bound's for the decoder and
the amortized bound's for the encoder, on the same draws; refinement raises the bound; fit
trains with it."""

import pyro
import pytest
import torch
from marginal_helpers import bound_objective
from pyro.infer import Trace_ELBO

from pyro_aevb import LinearGaussian, SemiAmortized, fit
from pyro_aevb.poutine import bind_num_data


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = LinearGaussian(4, 2, sigma=0.5, init_scale=1.0).double()
    with torch.no_grad():
        m.enc_A.normal_(0.0, 0.1)
        m.enc_log_var.fill_(0.5)
    return m


def grads_of(loss, params):
    return torch.autograd.grad(loss, params, allow_unused=True)


def test_one_step_is_the_refined_bound_for_the_decoder_and_the_amortized_one_for_the_encoder(
    model,
):
    x = model.marginal().sample((20,)).detach()
    objective = bound_objective(SemiAmortized(refine_steps=5, refine_lr=0.1), model, 200, x)
    decoder = [model.W, model.b, model.log_sigma]
    encoder = [model.enc_A, model.enc_c, model.enc_log_var]
    torch.manual_seed(7)
    objective.loss_and_grads(x)
    got_dec = [p.grad.clone() for p in decoder]
    got_enc = [p.grad.clone() for p in encoder]
    # the same computation by hand, on the same draws
    elbo = Trace_ELBO()
    model_n = bind_num_data(model.model, 200)
    torch.manual_seed(7)
    start = model.local_params(x)
    refined = objective.refine(x, start)
    loss_dec = elbo.differentiable_loss(model_n, bind_num_data(model.local_guide(refined), 200), x)
    want_dec = grads_of(loss_dec, decoder)
    loss_enc = elbo.differentiable_loss(model_n, bind_num_data(model.local_guide(start), 200), x)
    want_enc = grads_of(loss_enc, encoder)
    for g, w in zip(got_dec, want_dec, strict=True):
        torch.testing.assert_close(g, w)
    # the encoder's parameters also feel the decoder loss through nothing but their own
    # bound: LinearGaussian has no weight prior, so the grads are exactly the amortized ones
    for g, w in zip(got_enc, want_enc, strict=True):
        torch.testing.assert_close(g, w)


def test_refinement_raises_the_bound_and_fit_trains_with_it(model):
    x = model.marginal().sample((200,)).detach()
    objective = bound_objective(SemiAmortized(refine_steps=10, refine_lr=0.1), model, 200, x)
    torch.manual_seed(1)
    start = model.local_params(x)
    refined = objective.refine(x, start)
    elbo = Trace_ELBO(num_particles=20)
    with torch.no_grad():
        before = -elbo.loss(model.model, model.local_guide(start), x)
        after = -elbo.loss(model.model, model.local_guide(refined), x)
    assert after > before + 10  # nats over the 200 rows
    pyro.clear_param_store()
    result = fit(model, x, objective=SemiAmortized(refine_steps=3), optimizer="adam", lr=0.02,
                 num_samples=2000, batch_size=50, eval_every=1000, progress=False)  # fmt: skip
    assert result.path == "semi-amortized"
    assert result.history[-1]["train_bound"] > result.history[0]["train_bound"]


def test_semi_amortized_needs_a_refinable_guide(ppca):
    with pytest.raises(ValueError, match="local_params"):
        fit(ppca.model, ppca.simulate(20), guide=ppca.guide, objective=SemiAmortized(),
            num_samples=20, batch_size=10, progress=False)  # fmt: skip


def test_semi_amortized_refuses_fast_on_which_it_has_no_path_for():
    m = LinearGaussian(4, 2)
    with pytest.raises(ValueError, match="fast='on' but semi-amortized training has no fast"):
        fit(m, torch.randn(20, 4), objective=SemiAmortized(), fast="on", num_samples=20,
            batch_size=10, progress=False)  # fmt: skip
