"""Latents whose support has tensor bounds (from another latent, from the data): their
transform is taken where the model runs, so positions map to the model's own support."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints
from user_models import bounded_by_latent

from pyro_aevb.poutine import (
    LatentLayout,
    UnconstrainedCondition,
    constrain_in_model,
    flatten_in_model,
)
from pyro_aevb.poutine.layout import fixed_support, support_has_tensors
from pyro_aevb.poutine.plates import ProgramContractError


def _layout(model, x):
    with torch.no_grad():
        return LatentLayout.from_trace(pyro.poutine.trace(model).get_trace(x))


def test_fixed_support_collapses_one_valued_bounds_and_refuses_per_row_bounds():
    assert fixed_support(constraints.positive) is constraints.positive
    one = constraints.independent(constraints.interval(torch.zeros(4), torch.ones(4)), 1)
    fixed = fixed_support(one)
    assert fixed.base_constraint.lower_bound.shape == ()
    assert float(fixed.base_constraint.upper_bound) == 1.0
    assert one.base_constraint.lower_bound.shape == (4,)  # the original is left as it was
    assert fixed_support(constraints.interval(0.0, torch.tensor([1.0, 2.0]))) is None
    assert support_has_tensors(one) and not support_has_tensors(constraints.unit_interval)


def test_positions_map_through_the_support_each_row_has_where_the_model_runs():
    x = torch.randn(5)
    layout = _layout(bounded_by_latent, x)
    s_site, z_site = layout.sites
    assert not s_site.runtime and s_site.fixed
    assert z_site.runtime and not z_site.fixed
    u = torch.randn(5, 2, dtype=torch.float64).float()
    values, log_jac = constrain_in_model(bounded_by_latent, x, layout, u)
    s = u[:, 0].exp()
    sig = torch.sigmoid(u[:, 1])
    torch.testing.assert_close(values["s"], s)
    torch.testing.assert_close(values["z"], s * sig)
    torch.testing.assert_close(log_jac["s"], u[:, 0])
    torch.testing.assert_close(log_jac["z"], torch.log(s * sig * (1 - sig)))
    # and back: each row's own bounds
    torch.testing.assert_close(flatten_in_model(bounded_by_latent, x, layout, values), u)


def test_the_condition_messenger_conditions_like_pyro_and_reports_what_it_set():
    x = torch.randn(3)
    layout = _layout(bounded_by_latent, x)
    u = torch.zeros(3, 2)
    cond = UnconstrainedCondition(layout, u)
    trace = pyro.poutine.trace(cond(bounded_by_latent)).get_trace(x)
    assert trace.nodes["z"]["is_observed"] and trace.nodes["s"]["is_observed"]
    torch.testing.assert_close(trace.nodes["z"]["value"], torch.full((3,), 0.5))
    assert set(cond.values) == set(cond.log_jac) == {"s", "z"}


def test_per_row_bounds_outside_a_model_run_are_an_error_naming_the_site():
    x = torch.randn(4)
    layout = _layout(bounded_by_latent, x)
    with pytest.raises(ProgramContractError, match=r"site 'z' has a support whose bounds"):
        layout.unflatten(torch.zeros(4, 2))
    with pytest.raises(ProgramContractError, match=r"site 'z'.*supports="):
        layout.flatten({"s": torch.ones(4), "z": torch.full((4,), 0.5)})


def test_one_valued_tensor_bounds_fit_any_number_of_rows():
    def model(x):
        n = x.shape[0]
        with pyro.plate("data", n):
            pyro.sample("z", dist.Uniform(torch.zeros(n), torch.full((n,), 2.0)))

    layout = _layout(model, torch.randn(4))
    (site,) = layout.sites
    assert site.runtime and site.fixed
    values, _ = layout.unflatten(torch.zeros(7, 1))  # the first trace had 4 rows
    torch.testing.assert_close(values["z"], torch.ones(7))
