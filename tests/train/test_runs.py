"""load_run with a model passed in: a model whose recorded config differs from the run's is
refused by setting (as on resume); one without a config of its own is checked by shapes."""

import pyro
import pytest
import torch

from pyro_aevb import AmortizedNormal, evaluate_bound, fit, load_run, mlp_vae
from pyro_aevb.models import LinearGaussian
from pyro_aevb.train.payload import MalformedCheckpointError

KW = dict(num_samples=200, batch_size=50, eval_every=200, progress=False)


def _data():
    return (torch.rand(100, 20, generator=torch.Generator().manual_seed(0)) < 0.3).float()


@pytest.fixture
def vae_run(tmp_path):
    torch.manual_seed(0)
    vae = mlp_vae(20, 2, 8)  # tanh, weight prior N(0, 1)
    fit(vae, _data(), out_dir=tmp_path, **KW)
    return vae, tmp_path


def _same_weights(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_a_model_built_with_other_options_is_refused_naming_each_setting(vae_run):
    vae, run_dir = vae_run
    other = mlp_vae(20, 2, 8, activation="relu", weight_prior_std=None)
    before = [p.detach().clone() for p in other.parameters()]
    with pytest.raises(ValueError) as err:
        load_run(run_dir, model=other)
    message = str(err.value)
    assert "model.activation (checkpoint: 'tanh'; now: 'relu')" in message
    assert "model.weight_prior_std (checkpoint: 1.0; now: None)" in message
    assert "init_std" not in message
    # refused before anything was loaded
    assert all(torch.equal(a, p) for a, p in zip(before, other.parameters(), strict=True))
    # a bound method of such a model is refused the same way
    with pytest.raises(ValueError, match="model.activation"):
        load_run(run_dir, model=other.model, guide=other.guide)


def test_the_same_options_load_whatever_the_initialisation(vae_run):
    vae, run_dir = vae_run
    same = mlp_vae(20, 2, 8, init_std=0.5)  # the checkpoint overwrites the initialisation
    run = load_run(run_dir, model=same)
    assert run.module is same and _same_weights(same, vae)
    x = _data()[:30]
    torch.manual_seed(1)
    expected = evaluate_bound(vae.eval(), x)
    torch.manual_seed(1)
    assert torch.equal(evaluate_bound(same, x), expected)


def test_an_autoguide_built_with_other_options_is_refused(tmp_path):
    torch.manual_seed(0)
    vae = mlp_vae(20, 2, 8)
    fit(vae, _data(), guide=AmortizedNormal(vae.model, hidden_dims=8), out_dir=tmp_path, **KW)
    pyro.clear_param_store()
    model = mlp_vae(20, 2, 8)
    guide = AmortizedNormal(model.model, hidden_dims=8, activation="relu")
    with pytest.raises(ValueError, match=r"guide\.activation"):
        load_run(tmp_path, model=model, guide=guide)


def test_a_model_without_a_config_is_checked_by_parameter_shapes(tmp_path):
    torch.manual_seed(0)
    trained = LinearGaussian(5, 2)
    assert getattr(trained, "config", None) is None
    x = trained.marginal().sample((60,))
    fit(trained, x, out_dir=tmp_path, **KW)
    again = LinearGaussian(5, 2)
    assert load_run(tmp_path, model=again).module is again and _same_weights(again, trained)
    with pytest.raises(MalformedCheckpointError):
        load_run(tmp_path, model=LinearGaussian(5, 3))


@pytest.mark.parametrize("with_guide", [False, True])
def test_a_float64_run_of_a_preset_loads_in_float64_with_its_weights(tmp_path, with_guide):
    """fit(dtype=torch.float64) saves float64 weights: load_run rebuilds the preset (and its
    autoguide) in that dtype, not the float32 default, and holds the trained weights."""
    x = (torch.rand(120, 30, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    vae = mlp_vae(30, 2, (8,))
    guide = AmortizedNormal(vae.model, hidden_dims=(8,)) if with_guide else None
    fit(
        vae,
        x,
        guide=guide,
        dtype=torch.float64,
        num_samples=120,
        batch_size=40,
        progress=False,
        out_dir=tmp_path,
    )
    run = load_run(tmp_path)
    for (name, p), q in zip(vae.named_parameters(), run.module.parameters(), strict=True):
        assert q.dtype == torch.float64, name
        assert torch.equal(p, q), name
    if with_guide:
        assert all(p.dtype == torch.float64 for p in run.guide.parameters())


def test_run_files_that_are_not_the_checkpoints_own_are_named(tmp_path):
    import json
    import shutil
    import warnings

    torch.manual_seed(0)
    fit(mlp_vae(20, 2, 8), _data(), out_dir=tmp_path / "a", **KW)
    fit(mlp_vae(20, 3, 8), _data(), out_dir=tmp_path / "b", **KW)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a run as written: nothing to say
        assert load_run(tmp_path / "a").module.latent_dim == 2
    # another run's (valid, sealed) checkpoint copied in: it is loaded, and the mismatch said
    shutil.copy(tmp_path / "b" / "checkpoint.pt", tmp_path / "a" / "checkpoint.pt")
    with pytest.warns(UserWarning, match=r"config.json differs from the checkpoint's own copy "
                      r"in .*'model'"):  # fmt: skip
        assert load_run(tmp_path / "a").module.latent_dim == 3
    history = tmp_path / "b" / "history.json"
    history.write_text(json.dumps(json.loads(history.read_text())[:-1]))  # edited by hand
    with pytest.warns(UserWarning, match="history.json differs from the checkpoint's own copy"):
        load_run(tmp_path / "b")
