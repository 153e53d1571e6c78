"""A guide whose support differs from the model's is said at set-up, in training and in
evaluation; matching supports written differently are not."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import biject_to, constraints
from torch.distributions.transforms import ExpTransform, SigmoidTransform

from pyro_aevb import fit, log_marginal
from pyro_aevb.poutine.plates import ProgramContractError
from pyro_aevb.poutine.supports import support_interval


def _pair(prior, guide_dist):
    """A model with a per-datapoint latent ``z ~ prior(n)`` and ``x | z ~ N(z, 1)``, and a
    guide drawing ``z ~ guide_dist(n)``."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", prior(x.shape[0]))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.tensor(0.5))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", guide_dist(loc, x.shape[0]))

    return model, guide


def _support_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "narrower support" in str(w.message)]


def test_support_interval_reads_interval_supports_and_leaves_others():
    assert support_interval(constraints.real) == (float("-inf"), float("inf"))
    assert support_interval(constraints.independent(constraints.positive, 1))[0] == 0.0
    assert support_interval(dist.Uniform(-1.0, 2.0).support) == (-1.0, 2.0)
    assert support_interval(constraints.less_than(3.0))[1] == 3.0
    assert support_interval(constraints.simplex) is None
    assert support_interval(constraints.nonnegative_integer) is None


def test_a_guide_drawing_outside_the_models_support_is_an_error_with_validation_off_too():
    model, guide = _pair(
        lambda n: dist.Exponential(torch.ones(n)), lambda loc, n: dist.Normal(loc.expand(n), 1.0)
    )
    x = torch.rand(40)
    match = r"guide draws of latent site 'z' lie outside the model's support GreaterThanEq"
    for validate in (True, False):
        pyro.clear_param_store()
        with pyro.validation_enabled(validate):
            with pytest.raises(ProgramContractError, match=match):
                fit(model, x, guide=guide, num_samples=40, batch_size=40, progress=False)
            with pytest.raises(ProgramContractError, match=match):
                log_marginal(model, guide, x, method="iwae", num_particles=8)


def test_a_guide_narrower_than_the_model_is_said():
    pyro.clear_param_store()
    model, guide = _pair(
        lambda n: dist.Normal(torch.zeros(n), 1.0),
        lambda loc, n: dist.LogNormal(loc.expand(n), 1.0),
    )
    with pytest.warns(UserWarning, match=r"'z' \(model \(-inf, inf\), guide \(0, inf\)\) has a na"):
        log_marginal(model, guide, torch.rand(4), method="iwae", num_particles=8)


@pytest.mark.parametrize(
    "prior, guide_dist",
    [
        # nonnegative (Gamma) against positive (LogNormal): the same interval
        (lambda n: dist.Gamma(torch.ones(n), 1.0), lambda loc, n: dist.LogNormal(loc.expand(n), 1)),
        (
            lambda n: dist.Beta(torch.ones(n), 2.0),
            lambda loc, n: dist.TransformedDistribution(
                dist.Normal(loc.expand(n), 1.0), SigmoidTransform()
            ),
        ),
        (
            lambda n: dist.HalfNormal(torch.ones(n)),
            lambda loc, n: dist.TransformedDistribution(
                dist.Normal(loc.expand(n), 1.0), ExpTransform()
            ),
        ),
        (
            lambda n: dist.Uniform(torch.zeros(n), 3.0),
            lambda loc, n: dist.TransformedDistribution(
                dist.Normal(loc.expand(n), 1.0), biject_to(constraints.interval(0.0, 3.0))
            ),
        ),
        # a point mass: its declared support (real) says nothing of where it puts the point
        (lambda n: dist.Exponential(torch.ones(n)), lambda loc, n: dist.Delta(loc.exp().expand(n))),
    ],
)
def test_matching_supports_written_differently_are_not_flagged(prior, guide_dist):
    pyro.clear_param_store()
    model, guide = _pair(prior, guide_dist)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit(model, torch.rand(20), guide=guide, estimator="A", num_samples=20, progress=False)
    assert _support_warnings(record) == []
