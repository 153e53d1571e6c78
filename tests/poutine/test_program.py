"""Per-datapoint preparation: data-plate rows, globals conditioned, model/guide matching."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_aevb import PerDatapointProgram, elbo_per_datapoint, log_marginal
from pyro_aevb.poutine import global_point_estimate


def model(x):
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), 1.0))
        pyro.sample("x", dist.Normal(z, s), obs=x)


def guide(x):
    pyro.sample("s", dist.LogNormal(torch.tensor(0.3), 0.2))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2, 0.7))


def test_globals_are_conditioned_on_the_guide_median_and_reported():
    x = torch.randn(6)
    program = PerDatapointProgram(model, guide, x)
    assert program.local_names == ("z",) and program.global_names == ("s",)
    torch.testing.assert_close(program.global_values["s"], torch.tensor(0.3).exp())
    assert program.settings["globals_conditioned_on"]["s"] == pytest.approx(0.3**0 * 1.3498588)
    res = log_marginal(model, guide, x, "iwae", num_particles=20000)
    exact = dist.Normal(0.0, (1 + torch.tensor(0.3).exp() ** 2).sqrt()).log_prob(x)
    torch.testing.assert_close(res.estimate, exact, atol=0.02, rtol=0)
    assert "globals_conditioned_on" in res.settings
    given = log_marginal(model, guide, x, "iwae", num_particles=5, global_values={"s": 2.0})
    assert given.settings["globals_conditioned_on"]["s"] == 2.0


def test_point_estimates_of_hand_written_and_transformed_sites():
    def g(x):
        pyro.sample("a", dist.Gamma(4.0, 2.0))
        pyro.sample("b", dist.Delta(torch.tensor(3.0)))
        pyro.sample("c", dist.Normal(1.5, 2.0))

    est = global_point_estimate(g, torch.zeros(1), ["a", "b", "c"])
    assert est["b"] == 3.0 and est["c"] == 1.5
    # Gamma has no closed-form median here: the image of the mean of log-draws, exp(E log a)
    expected = torch.exp(torch.digamma(torch.tensor(4.0)) - torch.log(torch.tensor(2.0)))
    assert abs(float(est["a"]) - float(expected)) < 0.05


def test_self_subsampling_plates_and_mismatched_guides_are_refused_by_name():
    x = torch.randn(50)

    def subsampling(x):
        with pyro.plate("data", x.shape[0], subsample_size=20) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(20), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])

    def subsampling_guide(x):
        with pyro.plate("data", x.shape[0], subsample_size=20):
            pyro.sample("z", dist.Normal(torch.zeros(20), 1.0))

    for method in ("elbo", "iwae"):
        with pytest.raises(ValueError, match="subsamples 20 of its 50 rows"):
            log_marginal(subsampling, subsampling_guide, x, method, num_particles=3)
    with pytest.raises(ValueError, match="subsamples 20 of its 50 rows"):
        elbo_per_datapoint(subsampling, subsampling_guide, x)

    def extra_guide(x):
        guide(x)
        pyro.sample("w", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"guide site\(s\) \['w'\] are not in the model"):
        elbo_per_datapoint(model, extra_guide, x)

    def missing_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, 0.7))

    with pytest.raises(ValueError, match=r"model latent site\(s\) \['s'\] have no site"):
        elbo_per_datapoint(model, missing_guide, x)


def test_a_scale_inside_the_data_plate_is_reported_not_silently_dropped():
    """Per-datapoint quantities are each datapoint's unscaled densities: a user's
    poutine.scale there (a tempered likelihood, a KL weight) is not applied, and said so."""
    import warnings

    import pyro
    import pyro.distributions as dist
    from pyro import poutine

    from pyro_aevb.poutine import PerDatapointProgram

    def model(x, scale):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0))
            with poutine.scale(scale=scale):
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    x = torch.randn(4)
    with pytest.warns(UserWarning, match=r"scaled \('x' by 0.5: poutine.scale\).*not applied"):
        PerDatapointProgram(lambda x: model(x, 0.5), None, x)
    with pytest.warns(UserWarning, match=r"'x' by a tensor"):
        PerDatapointProgram(lambda x: model(x, torch.full((4,), 2.0)), None, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PerDatapointProgram(lambda x: model(x, 1.0), None, x)


def _feature_subsampling(x):
    # the data plate in full, a feature plate inside it subsampled (legitimate for SVI)
    with pyro.plate("data", x.shape[0], dim=-2):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("feat", x.shape[1], subsample_size=3, dim=-1) as idx:
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, idx])


def _feature_guide(x):
    a = pyro.param("a", torch.tensor(0.1))
    with pyro.plate("data", x.shape[0], dim=-2):
        pyro.sample("z", dist.Normal(a * x.sum(-1, keepdim=True), 1.0))


def test_another_plate_that_subsamples_is_refused_for_densities_and_trained_without_a_bound():
    from pyro_aevb import fit
    from pyro_aevb.mcmc.potentials import make_potential
    from pyro_aevb.poutine.plates import SubsampledPlateError

    x = torch.randn(40, 6)
    # a random subset of the features would make each density a random estimate of it
    # (HMC, AIS targeting another density at every step), with its 6/3 scale not applied
    with pytest.raises(SubsampledPlateError, match=r"site 'x' is inside the plate 'feat', wh"):
        make_potential(_feature_subsampling, x)
    with pytest.raises(SubsampledPlateError, match=r"subsamples 3 of 6"):
        log_marginal(_feature_subsampling, _feature_guide, x, "iwae", num_particles=3)
    with pytest.raises(SubsampledPlateError):
        fit(_feature_subsampling, x, guide=_feature_guide, objective="iwae", epochs=1)
    # SVI trains it, as stock Pyro does: the history says why it has no bound
    pyro.clear_param_store()
    with pytest.warns(UserWarning, match="no train/test bound: site 'x' is inside"):
        res = fit(
            _feature_subsampling, x, guide=_feature_guide, estimator="A", epochs=2, batch_size=20
        )
    assert "train_bound" not in res.history[-1] and res.history[-1]["loss"] is not None
    assert float(pyro.param("a").detach()) != 0.1


def test_deterministic_sites_in_the_data_plate_are_records_not_densities():
    from pyro_aevb.mcmc.potentials import make_potential

    def with_record(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.deterministic("z2", 2 * z)  # default event_dim: every dim of the value
            pyro.sample("x", dist.Normal(z.unsqueeze(-1), 0.7).to_event(1), obs=x)

    def without(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z.unsqueeze(-1), 0.7).to_event(1), obs=x)

    def g(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    x = torch.randn(5, 3)
    a = log_marginal(with_record, g, x, "iwae", num_particles=10, seed=1)
    b = log_marginal(without, g, x, "iwae", num_particles=10, seed=1)
    torch.testing.assert_close(a.estimate, b.estimate)
    u = torch.randn(10, 1)
    for fast in ("auto", "off"):
        pot = make_potential(with_record, x, num_chains=2, fast=fast)
        torch.testing.assert_close(pot(u), make_potential(without, x, num_chains=2)(u))


def test_masked_latents_need_a_guide_that_masks_the_same_entries():
    """Pyro's obs_mask makes a latent site 'x_unobserved' whose observed entries carry no
    density: a guide must mask the same entries, or its density of them is counted; Appendix
    D and the amortized autoguides refuse such sites, AIS from the prior and IWAE/AIS from a
    masking guide are exact."""
    from pyro_aevb import AmortizedNormal
    from pyro_aevb.poutine.plates import ProgramContractError

    torch.manual_seed(5)
    b, d = 4, 4
    x = torch.randn(b, 1) + torch.randn(b, d)  # z ~ N(0, 1), x_j ~ N(z, 1)
    obs = torch.rand(b, d) > 0.35
    obs[:, 0] = True
    cov = torch.ones(d, d) + torch.eye(d)
    exact = torch.stack(
        [
            dist.MultivariateNormal(torch.zeros(int(m.sum())), cov[m][:, m]).log_prob(x[i, m])
            for i, m in enumerate(obs)
        ]
    )

    def model(x):
        mask = obs.repeat(len(x) // b, 1)  # rows are replicated per chain
        with pyro.plate("data", len(x), dim=-2):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            with pyro.plate("feat", d, dim=-1):
                pyro.sample("x", dist.Normal(z, 1.0), obs=x, obs_mask=mask)

    def guide(x, masked=True):  # the exact posterior of z
        mask = obs.repeat(len(x) // b, 1)
        prec = 1 + mask.sum(-1, keepdim=True)
        with pyro.plate("data", len(x), dim=-2):
            z = pyro.sample("z", dist.Normal((x * mask).sum(-1, keepdim=True) / prec, prec**-0.5))
            with pyro.plate("feat", d, dim=-1), pyro.poutine.mask(mask=~mask if masked else True):
                pyro.sample("x_unobserved", dist.Normal(z.expand(-1, d), 1.0))

    for method, options in (("iwae", {"num_particles": 50}), ("ais", {"num_temps": 20})):
        res = log_marginal(model, guide, x, method, seed=0, **options)
        torch.testing.assert_close(res.estimate, exact, atol=1e-4, rtol=0)
    res = log_marginal(model, None, x, "ais", seed=0, num_chains=32, num_temps=200)
    assert bool(((res.estimate - exact).abs() < 4 * res.stderr + 1e-3).all())

    def unmasked(x):
        guide(x, masked=False)

    with pytest.raises(ProgramContractError, match=r"'x_unobserved' is masked in the model"):
        log_marginal(model, unmasked, x, "iwae", num_particles=5)
    with pytest.raises(ValueError, match=r"\['x_unobserved'\] are masked.*use method 'ais'"):
        log_marginal(model, None, x, "appendix_d", num_samples=5, num_warmup=5)
    with pytest.raises(ProgramContractError, match=r"site 'x_unobserved' is masked"):
        AmortizedNormal(model)(x)


def test_sites_outside_the_data_plate_that_hold_the_rows_are_refused_by_name():
    """An observation sampled after the plate, or in a second plate over the same rows, would
    be left out of every per-datapoint density and of the N/M scale; a per-row latent
    outside the plate would be conditioned on as a global. Each is an error naming the site,
    in evaluation and in training; a true global (its shape independent of the rows) is not."""
    from pyro_aevb import fit
    from pyro_aevb.poutine.plates import ProgramContractError

    def guide(x):
        loc = pyro.param("loc", torch.zeros(2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))

    def obs_after_plate(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True).expand_as(x), 1.0).to_event(2), obs=x)

    def obs_in_second_plate(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
        with pyro.plate("rows", x.shape[0]):
            pyro.sample(
                "x", dist.Normal(z.sum(-1, keepdim=True).expand_as(x), 1.0).to_event(1), obs=x
            )

    def latent_outside(x):
        z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample(
                "x", dist.Normal(z.sum(-1, keepdim=True).expand_as(x), 1.0).to_event(1), obs=x
            )

    def guide_outside(x):
        loc = pyro.param("loc", torch.zeros(2))
        pyro.sample("z", dist.Normal(loc.expand(x.shape[0], 2), 1.0).to_event(2))

    def true_global(x):
        s = pyro.sample("s", dist.LogNormal(torch.zeros(3), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True) + s, 1.0).to_event(1), obs=x)

    def global_guide(x):
        guide(x)
        pyro.sample("s", dist.LogNormal(torch.zeros(3), 1.0).to_event(1))

    x = torch.randn(12, 3)
    cases = [
        (obs_after_plate, guide, "observed site 'x' is outside the data plate 'data'"),
        (obs_in_second_plate, guide, "observed site 'x' is outside the data plate 'data'"),
        (latent_outside, guide_outside, "latent site 'z' is outside the data plate 'data'"),
    ]
    for model, g, match in cases:
        pyro.clear_param_store()
        with pytest.raises(ProgramContractError, match=match):
            log_marginal(model, g, x, method="iwae", num_particles=4)
        with pytest.raises(ProgramContractError, match=match):
            fit(model, x, guide=g, estimator="A", num_samples=12, batch_size=4, progress=False)
    # on the whole data set at once SVI is right (no N/M scale); only the bound is undefined
    pyro.clear_param_store()
    with pytest.warns(UserWarning, match="the history will hold no train/test bound"):
        res = fit(
            obs_after_plate,
            x,
            guide=guide,
            estimator="A",
            num_samples=24,
            batch_size=12,
            progress=False,
        )
    assert res.history[-1]["samples"] == 24 and "train_bound" not in res.history[-1]
    pyro.clear_param_store()
    log_marginal(true_global, global_guide, x, method="iwae", num_particles=4)
    fit(
        true_global,
        x,
        guide=global_guide,
        estimator="A",
        num_samples=12,
        batch_size=4,
        progress=False,
    )


def test_a_mask_sized_to_the_data_outside_the_program_is_named_when_rows_are_stacked():
    """AIS runs the model on chains x rows stacked: a mask held in a closure with one entry
    per row of x cannot follow them, and the error says which site and why."""
    from pyro import poutine

    from pyro_aevb.poutine.plates import ProgramContractError

    x = torch.randn(6)
    keep = torch.ones(6, dtype=torch.bool)
    keep[:2] = False

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), 1.0))
            with poutine.mask(mask=keep):
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(ProgramContractError, match=r"the mask of site 'x' has shape \(6,\)"):
        log_marginal(model, None, x, method="ais", num_chains=2, num_temps=3, pilot_chains=1)


def test_a_mask_that_broadcasts_the_log_density_to_more_entries_is_named():
    """A (B, 1) mask on a (B,) site: (B, B) copies of the terms, each row's bound summed with
    every other row's (IWAE gave -7575 for an exact -7.4). The error names the shapes."""
    from pyro import poutine

    from pyro_aevb.poutine.plates import ProgramContractError

    x = torch.randn(4, 3)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0))
            with poutine.mask(mask=torch.ones(x.shape[0], 1, dtype=torch.bool)):
                pyro.sample("x", dist.Normal(z.unsqueeze(-1), 1.0).to_event(1), obs=x)

    # (the rows may be stacked copies: a prior start resamples 1000 draws per datapoint)
    says = r"the mask of site 'x' has shape \((\d+), 1\), which broadcasts .* \(\1,\) to \(\1, \1\)"
    for method in ("iwae", "appendix_d"):
        with pytest.raises(ProgramContractError, match=says):
            log_marginal(model, None if method == "appendix_d" else _prior_guide, x, method)


def test_a_global_set_from_an_auxiliary_draw_is_conditioned_on_its_point_estimate():
    """A guide of the user's that runs Pyro's AutoNormal for the global (a Delta set from an
    auxiliary draw) and an encoder for the locals has no .median: the global's point
    estimate is the auxiliary's, AutoNormal's median, not one seeded draw."""
    from pyro import poutine
    from pyro.infer.autoguide import AutoNormal
    from user_models import GlobalNoiseModel

    torch.manual_seed(3)
    m = GlobalNoiseModel()
    x = torch.randn(5, m.d)
    pyro.clear_param_store()
    auto = AutoNormal(poutine.block(m.model, expose=["sigma"]), init_scale=0.5)

    def guide(x):
        auto(x)
        with pyro.plate("data", x.shape[0]):
            mu, lv = m.enc(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(mu, torch.exp(0.5 * lv)).to_event(1))

    guide(x)
    want = auto.median(x)["sigma"]
    assert torch.allclose(PerDatapointProgram(m.model, guide, x).global_values["sigma"], want)


def _prior_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0))
