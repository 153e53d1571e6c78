import pytest
import torch
from pyro.infer.mcmc.adaptation import WarmupAdapter
from pyro.ops.dual_averaging import DualAveraging

from pyro_aevb.mcmc.adaptation import (
    step_size_adapt_final,
    step_size_adapt_init,
    step_size_adapt_update,
    warmup_windows,
)


def test_dual_averaging_is_pyros_applied_per_chain():
    eps0 = torch.tensor([0.1, 1.0, 0.01])
    accepts = torch.rand(30, 3, generator=torch.Generator().manual_seed(0))
    state = step_size_adapt_init(eps0, target_accept=0.9)
    for a in accepts:
        state = step_size_adapt_update(state, a)
    for c in range(3):
        scalar = DualAveraging(prox_center=float(torch.log(10 * eps0[c])))
        for a in accepts[:, c]:
            scalar.step(0.9 - float(a))
        x_t, x_avg = scalar.get_state()
        assert float(state.step_size[c]) == pytest.approx(torch.tensor(x_t).exp().item(), rel=1e-5)
        assert float(step_size_adapt_final(state)[c]) == pytest.approx(
            torch.tensor(x_avg).exp().item(), rel=1e-5
        )


def test_update_is_pure_and_nan_counts_as_rejection():
    state = step_size_adapt_init(torch.tensor([0.5, 0.5]), target_accept=0.8)
    before = state.step_size.clone()
    new = step_size_adapt_update(state, torch.tensor([float("nan"), 0.0]))
    torch.testing.assert_close(state.step_size, before)
    assert state.scheme._t == 0 and new.scheme._t == 1
    torch.testing.assert_close(new.step_size[0], new.step_size[1])
    # low acceptance shrinks the step size relative to the prox-center 10 * eps0
    assert bool((new.step_size < 5.0).all())


def test_step_size_adapt_validates_target():
    with pytest.raises(ValueError, match=r"target_accept must be in \(0, 1\), got 1.5"):
        step_size_adapt_init(torch.ones(2), target_accept=1.5)


def test_warmup_windows_follow_pyro():
    adapter = WarmupAdapter(adapt_step_size=True, adapt_mass_matrix=True)
    adapter.configure(200, initial_step_size=1.0, mass_matrix_shape={("u",): (1,)})
    assert warmup_windows(200) == list(adapter.adaptation_schedule)
    assert warmup_windows(200, adapt_mass=False) == [(0, 199)]
    assert warmup_windows(0) == []
    with pytest.raises(ValueError, match="num_warmup must be an int >= 0"):
        warmup_windows(-1)
