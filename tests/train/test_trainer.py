"""AEVB training: real-data improvement, exact resume, failure handling, input validation."""

import io
import json
import os
import pickle

import pytest
import torch

from pyro_aevb import VAE, NonFiniteLossError, fit, load_dataset, mlp_vae
from pyro_aevb.train.checkpoint import CorruptCheckpointError, load_checkpoint, save_checkpoint
from pyro_aevb.train.integrity import seal
from pyro_aevb.train.runs import load_run
from pyro_aevb.train.trainer import Trainer, eval_schedule


def binary_data(n=500, d=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) < 0.3).float()


def tiny_vae(seed=0, d=30):
    torch.manual_seed(seed)
    return mlp_vae(d, 3, (16,), init_std=0.1)


def test_training_on_real_mnist_improves_the_test_bound():
    ds = load_dataset("mnist" if os.environ.get("PYRO_AEVB_DATA") else "embedded-mnist").subset(
        5000, 1000
    )
    vae = mlp_vae(784, 5, 100)
    result = fit(vae, ds, num_samples=30_000, lr=0.05, eval_every=5000, progress=False)
    first, last = result.history[0], result.history[-1]
    assert last["samples"] == 30_000 and result.samples == 30_000
    assert last["test_bound"] > first["test_bound"] + 20
    assert last["test_bound"] > -210  # far above the untrained ~ -543 (784 log 2)
    assert last["test_bound_stderr"] < 2


@pytest.mark.parametrize("fast", ["auto", "off"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, fast):
    x = binary_data()
    kwargs = dict(batch_size=64, lr=0.05, seed=7, eval_every=400, fast=fast, progress=False)
    straight = fit(
        tiny_vae(0), x[:400], x[400:], num_samples=2000, out_dir=tmp_path / "a", **kwargs
    )
    # Stop part-way through an epoch, then continue in a fresh module from the checkpoint.
    fit(tiny_vae(0), x[:400], x[400:], num_samples=1000, out_dir=tmp_path / "b", **kwargs)
    resumed_module = tiny_vae(seed=123)  # different init: everything must come from the file
    resumed = fit(
        resumed_module,
        x[:400],
        x[400:],
        num_samples=2000,
        out_dir=tmp_path / "b",
        resume=True,
        **kwargs,
    )
    for p, q in zip(straight.module.parameters(), resumed_module.parameters()):
        assert torch.equal(p, q)
    by_samples = {h["samples"]: h for h in resumed.history}
    for h in straight.history:
        assert by_samples[h["samples"]]["test_bound"] == h["test_bound"]
    assert resumed.steps == straight.steps


def test_run_directory_files_and_load_run(tmp_path):
    x = binary_data()
    fit(tiny_vae(), x, num_samples=600, out_dir=tmp_path, progress=False, eval_every=300)
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["samples"] for h in history] == [300, 600]
    config = json.loads((tmp_path / "config.json").read_text())
    assert (
        config["training"]["objective"]["estimator"] == "B" and config["model"]["latent_dim"] == 3
    )
    assert config["path"] == "fast" and config["training"]["plate_name"] == "data"
    run = load_run(tmp_path)
    assert run.history == history
    assert isinstance(run.module, VAE)
    assert run.samples == 600
    # a checkpoint written after the last evaluation (interrupted, checkpoint_every): the
    # parameters are the checkpoint's, and so is the count of samples behind them
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    payload["progress"]["samples"] = 700
    save_checkpoint(tmp_path / "checkpoint.pt", payload)
    assert load_run(tmp_path).samples == 700


def test_refuses_to_overwrite_an_existing_run(tmp_path):
    x = binary_data()
    fit(tiny_vae(), x, num_samples=200, out_dir=tmp_path, progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match="resume=True"):
        fit(tiny_vae(), x, num_samples=200, out_dir=tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    with pytest.raises(ValueError, match="lr"):
        fit(tiny_vae(), x, num_samples=400, out_dir=tmp_path, resume=True, lr=0.5, progress=False)


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    x = binary_data()
    vae = tiny_vae()
    trainer = Trainer(
        vae, x, num_samples=5000, batch_size=50, out_dir=tmp_path, eval_every=500, progress=False
    )
    calls = {"n": 0}
    real = trainer.objective.loss_and_grads

    def failing(xb):
        calls["n"] += 1
        loss = real(xb)
        return loss * float("nan") if calls["n"] == 15 else loss

    monkeypatch.setattr(trainer.objective, "loss_and_grads", failing)
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite loss \(nan\) at step 15.*500 samples"
    ):
        trainer.run()
    assert trainer.step == 14 and all(torch.isfinite(p).all() for p in vae.parameters())
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["progress"]["samples"] == 500
    assert json.loads((tmp_path / "history.json").read_text())[-1]["samples"] == 500


@pytest.mark.parametrize(
    "data, kwargs, error, match",
    [
        (torch.rand(0, 30), {}, ValueError, "train is empty"),
        (torch.full((5, 30), float("nan")), {}, ValueError, "non-finite"),
        (torch.rand(5, 30) * 2, {}, ValueError, r"\[0, 1\]"),
        (torch.rand(5, 29), {}, ValueError, r"shape \(batch, \*\(30,\)\)"),
        (torch.rand(5, 30), {"epochs": 1}, ValueError, "exactly one training budget"),
        (torch.rand(5, 30), {"batch_size": 0}, ValueError, "batch_size"),
        (torch.rand(5, 30), {"estimator": "C"}, ValueError, "estimator"),
        (torch.rand(5, 30), {"optimizer": "sgd"}, ValueError, "optimizer"),
        (torch.rand(5, 30), {"lr": -1.0}, ValueError, "lr"),
    ],
)
def test_fit_rejects_bad_input(data, kwargs, error, match):
    with pytest.raises(error, match=match):
        fit(tiny_vae(), data, num_samples=100, progress=False, **kwargs)


def test_fit_rejects_a_module_without_pyro_programs():
    with pytest.raises(TypeError, match="module.model"):
        fit(torch.nn.Linear(3, 3), torch.rand(4, 3), num_samples=10)


def test_checkpoints_refuse_arbitrary_pickled_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    buffer = io.BytesIO()
    torch.save({"format": "pyro-aevb-checkpoint", "version": 1, "x": Evil()}, buffer)
    (tmp_path / "c.pt").write_bytes(buffer.getvalue())  # no seal: refused before unpickling
    with pytest.raises(CorruptCheckpointError, match="does not end with a pyro-aevb SHA-256"):
        load_checkpoint(tmp_path / "c.pt")
    # with a valid seal (anyone can compute one) weights_only loading still refuses it
    (tmp_path / "c.pt").write_bytes(seal(buffer.getvalue()))
    with pytest.raises(ValueError, match="could not be read safely"):
        load_checkpoint(tmp_path / "c.pt")
    (tmp_path / "d.pt").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError):
        load_checkpoint(tmp_path / "d.pt")
    save_checkpoint(tmp_path / "ok.pt", {"t": torch.ones(2)})
    assert torch.equal(load_checkpoint(tmp_path / "ok.pt")["t"], torch.ones(2))


def test_eval_schedule():
    assert eval_schedule(1200, "log") == [100, 200, 500, 1000, 1200]
    assert eval_schedule(1000, 300) == [300, 600, 900, 1000]


def test_non_finite_gradients_are_reported_as_divergence(tmp_path, monkeypatch):
    """A finite loss with a NaN gradient would poison the parameters: on the stock-Pyro path
    the gradients are checked before the update, which is refused with NonFiniteLossError
    (not Pyro's validation error a step later); the parameters and the last checkpoint stay."""
    x = binary_data()
    vae = tiny_vae()
    trainer = Trainer(
        vae,
        x,
        num_samples=5000,
        batch_size=50,
        out_dir=tmp_path,
        eval_every=500,
        progress=False,
        fast="off",
    )
    calls = {"n": 0}
    real = trainer.objective.loss_and_grads

    def poisoned(xb):
        calls["n"] += 1
        loss = real(xb)
        if calls["n"] == 12:
            for p in trainer.objective.params:
                p.grad.fill_(float("nan"))
        return loss

    monkeypatch.setattr(trainer.objective, "loss_and_grads", poisoned)
    with pytest.raises(NonFiniteLossError, match="non-finite gradient at step 12"):
        trainer.run()
    assert trainer.step == 11 and all(torch.isfinite(p).all() for p in vae.parameters())
    assert load_checkpoint(tmp_path / "checkpoint.pt")["progress"]["samples"] == 500


def test_budget_is_met_and_a_finished_run_resumes_as_a_no_op(tmp_path):
    x = binary_data(n=130)  # epochs of 64 + 64 + 2 rows
    result = fit(tiny_vae(), x, num_samples=1000, batch_size=64, out_dir=tmp_path, progress=False)
    assert 1000 <= result.samples < 1000 + 64
    assert result.history[-1]["samples"] == result.samples
    again = fit(
        tiny_vae(),
        x,
        num_samples=1000,
        batch_size=64,
        out_dir=tmp_path,
        resume=True,
        progress=False,
    )
    assert again.steps == result.steps and again.history == result.history


class _BatchNormVAE(torch.nn.Module):
    """Pyro-style programs with BatchNorm and dropout in the encoder."""

    def __init__(self, d=30):
        super().__init__()
        from torch import nn

        self.enc = nn.Sequential(
            nn.Linear(d, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 4)
        )
        self.dec = nn.Linear(2, d)

    def model(self, x):
        import pyro
        import pyro.distributions as dist

        pyro.module("bn_vae", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x)

    def guide(self, x):
        import pyro
        import pyro.distributions as dist

        pyro.module("bn_vae", self)
        h = self.enc(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(h[:, :2], h[:, 2:].exp()).to_event(1))


@pytest.mark.parametrize("fast", ["auto", "off"])
def test_evaluation_runs_as_a_validation_pass_and_never_changes_the_training(fast):
    """Only training steps update BatchNorm's statistics (once each, as a stock SVI loop);
    the bounds in the history are computed in eval mode; the modules stay in train mode."""
    import pyro

    from pyro_aevb import evaluate_bound

    x = binary_data(100)
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = _BatchNormVAE()
    result = fit(
        vae, x, num_samples=400, batch_size=20, eval_every=100, progress=False, fast=fast, seed=1
    )
    bn = vae.enc[1]
    assert int(bn.num_batches_tracked) == 20 and vae.training and bn.training
    assert [r["samples"] for r in result.history] == [100, 200, 300, 400]
    vae.eval()
    torch.manual_seed(0)
    # the last record's bound is the eval-mode bound (no dropout: deterministic per draw)
    again = evaluate_bound(vae.model, x[:100], guide=vae.guide).mean()
    assert abs(float(again) - result.history[-1]["train_bound"]) < 1.0


def test_per_datapoint_estimates_warn_about_layers_that_couple_rows():
    import pyro

    from pyro_aevb import log_marginal

    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = _BatchNormVAE()
    x = binary_data(6)
    bn = vae.enc[1]
    before = [b.clone() for b in bn.buffers()]
    for method in ("iwae", "elbo"):
        with pytest.warns(UserWarning, match="BatchNorm1d, Dropout layers in training mode"):
            log_marginal(vae.model, vae.guide, x, method, num_particles=4)
    # an estimate does not change the model: the running statistics are as they were
    assert all(torch.equal(a, b) for a, b in zip(before, bn.buffers(), strict=True))
    vae.eval()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        log_marginal(vae.model, vae.guide, x, "iwae", num_particles=4)


def _plain_function_bn_programs():
    """Plain model/guide functions that reach a BatchNorm encoder through pyro.module."""
    import pyro
    import pyro.distributions as dist
    from torch import nn

    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 4))
    dec = nn.Linear(2, 5)

    def model(x):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", enc)
        h = enc(x)
        with pyro.plate("data", x.shape[0]):
            scale = torch.nn.functional.softplus(h[:, 2:])
            pyro.sample("z", dist.Normal(h[:, :2], scale).to_event(1))

    return enc, model, guide


def test_resume_restores_buffers_of_modules_reached_only_through_pyro_module(tmp_path):
    """BatchNorm statistics of a module that plain-function programs register with
    pyro.module are part of the checkpoint: a resumed run ends where an uninterrupted one
    does, and a checkpoint whose buffers do not fit is refused before anything is loaded."""
    import pyro

    from pyro_aevb.poutine import collect_params

    data = binary_data(200, d=5, seed=1)
    kw = dict(batch_size=20, progress=False, seed=1)
    runs = {}
    for name, budgets in (("full", [2000]), ("resumed", [1000, 2000])):
        for i, budget in enumerate(budgets):
            pyro.clear_param_store()
            enc, model, guide = _plain_function_bn_programs()
            fit(model, data, guide=guide, num_samples=budget, out_dir=tmp_path / name,
                resume=i > 0, **kw)  # fmt: skip
        runs[name] = {k: v.clone() for k, v in enc[1].state_dict().items()}
    for key, value in runs["full"].items():
        assert torch.equal(runs["resumed"][key], value), key
    assert int(runs["resumed"]["num_batches_tracked"]) == 100
    # the state names the buffers; a mismatch is refused, naming them, before loading
    params = collect_params([model, guide], data[:2])
    state = params.state_dict()
    assert sorted(state["buffers"]) == ["0.num_batches_tracked", "0.running_mean", "0.running_var"]
    before = [t.clone() for t in params]
    state["buffers"]["0.running_mean"] = torch.zeros(3)
    state["store"] = {k: v + 1 for k, v in state["store"].items()}
    with pytest.raises(ValueError, match=r"buffer '0.running_mean' has shape \(8,\)"):
        params.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(params, before, strict=True))
    del state["buffers"]  # a checkpoint saved before buffers were
    with pytest.warns(UserWarning, match="holds no values for the buffers"):
        params.load_state_dict(state)


def test_a_callback_that_leaves_a_value_json_cannot_hold_is_named_and_the_run_resumes(tmp_path):
    x = binary_data(100)

    def bad(trainer, record):
        record["extra"] = torch.tensor(1.0)

    with pytest.raises(TypeError, match=r"callback left 'extra' = Tensor in the history record"):
        fit(mlp_vae(30, 2, (8,)), x, num_samples=300, batch_size=20, eval_every=100,
            out_dir=tmp_path, progress=False, callback=bad)  # fmt: skip
    # the progress was saved without that record; a resume redoes the evaluation
    assert json.loads((tmp_path / "history.json").read_text()) == []
    res = fit(mlp_vae(30, 2, (8,)), x, num_samples=300, batch_size=20, eval_every=100,
              out_dir=tmp_path, progress=False, resume=True)  # fmt: skip
    assert [r["samples"] for r in res.history] == [100, 200, 300]


@pytest.mark.parametrize("fast", ["auto", "off"])
def test_an_optimizer_state_overflowed_by_a_huge_gradient_stops_the_run(tmp_path, fast):
    """A finite gradient of 1e20 overflows Adagrad's sum of squares to inf in float32: the
    parameter's updates become zero (it stops training) while the loss stays finite. That
    state is not written to a checkpoint; the run stops with the reason."""
    import pyro
    import pyro.distributions as dist

    def model(x):
        a = pyro.param("a_huge", lambda: torch.tensor(1.0))
        pyro.factor("big", -1e20 * a)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    pyro.clear_param_store()
    with pytest.raises(NonFiniteLossError, match=r"optimizer's state became non-finite.*'sum'"):
        fit(model, torch.randn(200), guide=guide, num_samples=400, batch_size=50,
            out_dir=tmp_path, fast=fast, progress=False, eval_every=200)  # fmt: skip
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        if (tmp_path / name).exists():
            state = load_checkpoint(tmp_path / name)["optimizer_state"]["state"]
            assert all(torch.isfinite(v).all() for e in state.values() for v in e.values())


def test_a_run_whose_checkpoint_is_gone_is_neither_overwritten_nor_resumed_silently(tmp_path):
    x = binary_data(100)
    fit(mlp_vae(30, 2, (8,)), x, num_samples=200, batch_size=20, eval_every=50,
        out_dir=tmp_path, progress=False)  # fmt: skip
    (tmp_path / "checkpoint.pt").unlink()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.startswith(".")}
    assert "checkpoint.prev.pt" in before
    with pytest.raises(FileExistsError, match=r"holds an earlier run \(checkpoint.prev.pt, his"):
        fit(mlp_vae(30, 2, (8,)), x, num_samples=200, out_dir=tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match=r"previous checkpoint checkpoint.prev.pt is th"):
        fit(mlp_vae(30, 2, (8,)), x, num_samples=400, out_dir=tmp_path, progress=False, resume=True)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.startswith(".")}
    assert after == before


def test_settings_that_cannot_apply_are_said_not_silently_dropped(caplog):
    import logging

    x = binary_data(60)
    with pytest.warns(UserWarning, match=r"batch_size=500 is larger than the 60 training rows"):
        res = fit(mlp_vae(30, 2, (8,)), x, num_samples=120, batch_size=500, progress=False)
    assert res.history[-1]["samples"] == 120
    with pytest.warns(UserWarning, match=r"checkpoint_every=60 has no effect without out_dir"):
        fit(mlp_vae(30, 2, (8,)), x, num_samples=60, checkpoint_every=60, progress=False)
    with pytest.warns(UserWarning, match=r"checkpoint_every_seconds=5.0 has no effect without"):
        fit(mlp_vae(30, 2, (8,)), x, num_samples=60, checkpoint_every_seconds=5.0, progress=False)
    with caplog.at_level(logging.WARNING, logger="pyro_aevb"):
        fit(mlp_vae(30, 2, (8,)), x, num_samples=60, batch_size=20, shards=3, progress=False)
    assert "shards=3 is not used on the paper VAE's fast path" in caplog.text


def test_mcem_diverging_within_its_first_step_is_a_divergence_not_a_raw_error():
    """MCEM makes several optimizer updates within one training step: a parameter made
    invalid by them is a divergence (NonFiniteLossError), as it is for the other objectives."""
    import pyro
    import pyro.distributions as dist

    from pyro_aevb import MonteCarloEM

    def model(x):
        a = pyro.param("a_mcem", lambda: torch.tensor(3.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z + torch.log(a), 1.0), obs=x)
        pyro.factor("pull", torch.log(a) - 5.0 * a)

    pyro.clear_param_store()
    torch.manual_seed(0)
    with pytest.raises(NonFiniteLossError, match=r"training diverged: by step 1"):
        fit(model, torch.randn(200), objective=MonteCarloEM(), optimizer="adagrad", lr=5.0,
            num_samples=2000, batch_size=20, progress=False)  # fmt: skip


def test_arguments_of_the_wrong_kind_are_named(tmp_path):
    x = binary_data(40)
    with pytest.raises(TypeError, match=r"modules must be a sequence of torch.nn.Module"):
        fit(mlp_vae(30, 2, (8,)), x, num_samples=20, modules=[1], progress=False)
    with pytest.raises(TypeError, match=r"out_dir must be a path"):
        fit(mlp_vae(30, 2, (8,)), x, num_samples=20, out_dir=5, progress=False)
    (tmp_path / "checkpoint.pt").mkdir()
    with pytest.raises(FileNotFoundError, match=r"checkpoint.pt is not a file"):
        fit(mlp_vae(30, 2, (8,)), x, num_samples=20, out_dir=tmp_path, resume=True,
            progress=False)  # fmt: skip


def test_only_the_lock_holder_removes_temporaries_of_the_run_files(tmp_path):
    """The other ranks of a data-parallel job hold no lock, and their job may have been
    refused the lock of a live run: a temporary there is that run's checkpoint being written,
    and must survive. The lock's holder removes a killed run's temporaries."""
    from pyro_aevb.train.trainer import Trainer

    x = binary_data(40)
    trainer = Trainer(mlp_vae(30, 2, (8,)), x, num_samples=40, out_dir=tmp_path, progress=False)
    live = tmp_path / ".checkpoint.pt.abc123.tmp"
    live.write_bytes(b"a checkpoint being written")
    lock, trainer._lock = trainer._lock, None  # a rank that holds no lock
    try:
        trainer._open_run(resume=False)
        assert live.exists()
        trainer._lock = lock
        trainer._open_run(resume=False)
        assert not live.exists()
    finally:
        trainer._lock = lock
        trainer.close()


def _scalar_model(x):
    """z_i ~ N(0, 1), x_i ~ N(z_i, 1): a model for guides under test."""
    import pyro
    import pyro.distributions as dist

    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def test_programs_without_a_parameter_are_refused_by_name():
    import pyro
    import pyro.distributions as dist

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, 0.7))

    pyro.clear_param_store()
    with pytest.raises(ValueError, match="the model and guide have no trainable parameter"):
        fit(_scalar_model, torch.randn(20), guide=guide, num_samples=20, progress=False)


def test_a_non_finite_initial_param_is_named():
    import pyro
    import pyro.distributions as dist

    def guide(x):
        sc = pyro.param("sc", torch.tensor(float("nan")), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, sc))

    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"The parameter\(s\) \['sc'\] of Pyro's param store"):
        fit(_scalar_model, torch.randn(20), guide=guide, num_samples=20, progress=False)


def test_a_vae_off_the_fused_path_warns_only_where_it_could_have_been_on_it(caplog):
    import warnings

    from pyro_aevb import conv_vae
    from pyro_aevb.nn import MLP

    torch.manual_seed(0)
    x = torch.rand(12, 1, 8, 8)
    conv = conv_vae((1, 8, 8), 2, channels=(4,), padded_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # conv trunks: no fused path to lose
        with caplog.at_level("INFO", logger="pyro_aevb"):
            fit(conv, x, batch_size=6, num_samples=12, eval_size=4, progress=False)
    assert "not the fused fast path" in caplog.text  # said, at INFO
    relu = mlp_vae(6, 2, (5,))
    relu.encoder = MLP(6, 5, 4, activation="relu")
    with pytest.warns(UserWarning, match="not the fused fast path.*activation is 'relu'"):
        fit(relu, torch.rand(12, 6), batch_size=6, num_samples=12, eval_size=4, progress=False)


def test_a_divergence_found_by_an_evaluation_names_the_evaluation_not_a_later_step():
    """The evaluation after step N runs before step N + 1: its divergence says so."""
    import pyro
    import pyro.distributions as dist

    from pyro_aevb.autoguide import AmortizedNormal

    def model(x):
        # the observation scale is invalid only on rows of magnitude above 2 (the test rows)
        scale = pyro.param("scale_eval", lambda: torch.tensor(2.0)) - x.abs().amax()
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z.unsqueeze(-1), scale).to_event(1), obs=x)

    pyro.clear_param_store()
    torch.manual_seed(0)
    train = 0.3 * torch.rand(40, 1)
    test = torch.full((10, 1), 5.0)
    with pytest.raises(NonFiniteLossError, match=r"at the evaluation after step 4 \(40 training"):
        fit(model, train, test, guide=AmortizedNormal(model, hidden_dims=(4,)), num_samples=40,
            batch_size=10, eval_every=40, progress=False)  # fmt: skip


def test_a_budget_below_one_minibatch_says_it_trains_one_whole_step(caplog):
    import logging

    x = binary_data(40)
    with caplog.at_level(logging.WARNING, logger="pyro_aevb"):
        result = fit(mlp_vae(30, 2, (8,)), x, num_samples=5, batch_size=20, progress=False)
    assert result.samples == 20
    assert "budget of 5 samples is less than one minibatch of 20" in caplog.text
