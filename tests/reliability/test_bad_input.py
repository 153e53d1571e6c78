"""Bad input, API and CLI: every malformed argument, mismatched model/guide pair or hostile
value is a ValueError or TypeError that names the argument, site or file; never a bare
KeyError, a raw torch/Pyro error or a silent truncation.

The property-based cases (hypothesis) run a few examples each here; ``make reliability``
runs them with many more (``PYRO_AEVB_RELIABILITY_SCALE``).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import given
from reliability_helpers import binary_data, tiny_vae
from reliability_properties import (
    BAD_DATA_STRATEGY,
    FIT_STRATEGY,
    LOG_MARGINAL_STRATEGY,
    MODEL_STRATEGY,
    check_bad_data,
    check_fit_arguments,
    check_log_marginal_options,
    check_model_arguments,
    examples,
)

from pyro_aevb import (
    WakeSleep,
    elbo_per_datapoint,
    evaluate_bound,
    fit,
    log_marginal,
)
from pyro_aevb.cli import main

# --------------------------------------------------------------------------- model/guide

W = torch.nn.Linear(4, 6)
E = torch.nn.Linear(6, 4)


def model(x):
    pyro.module("W", W)
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 2), 1.0).to_event(1))
        z2 = pyro.sample("z2", dist.Normal(torch.zeros(len(x), 2), 1.0).to_event(1))
        logits = W(torch.cat([z, z2], -1)) + w
        pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


def _encoder(x):
    h = E(x)
    return h[:, :2], h[:, 2:].exp()


def guide_without_global(x):
    pyro.module("E", E)
    with pyro.plate("data", len(x)):
        loc, scale = _encoder(x)
        pyro.sample("z", dist.Normal(loc, scale).to_event(1))
        pyro.sample("z2", dist.Normal(loc, scale).to_event(1))


def guide_without_local(x):
    pyro.module("E", E)
    pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        loc, scale = _encoder(x)
        pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def guide_with_extra(x):
    pyro.module("E", E)
    pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        loc, scale = _encoder(x)
        pyro.sample("z", dist.Normal(loc, scale).to_event(1))
        pyro.sample("z2", dist.Normal(loc, scale).to_event(1))
        pyro.sample("aux", dist.Normal(loc, scale).to_event(1))


def guide_local_outside_plate(x):
    pyro.module("E", E)
    pyro.sample("w", dist.Normal(0.0, 1.0))
    loc, scale = _encoder(x)
    pyro.sample("z", dist.Normal(loc, scale).to_event(2))
    with pyro.plate("data", len(x)):
        pyro.sample("z2", dist.Normal(loc, scale).to_event(1))


MISMATCHES = {
    "missing global": (guide_without_global, r"\['w'\] have no site in the guide"),
    "missing local": (guide_without_local, r"\['z2'\] have no site in the guide"),
    "extra site": (guide_with_extra, r"guide site\(s\) \['aux'\] are not in the model"),
    "local outside plate": (guide_local_outside_plate, "latent site 'z' is inside the data"),
}

ENTRY_POINTS = {
    "fit A": lambda g, x: fit(model, x, guide=g, estimator="A", num_samples=64, progress=False),
    "fit B": lambda g, x: fit(model, x, guide=g, estimator="B", num_samples=64, progress=False),
    "fit wake-sleep": lambda g, x: fit(
        model, x, guide=g, objective=WakeSleep(), num_samples=64, progress=False
    ),
    "elbo_per_datapoint": lambda g, x: elbo_per_datapoint(model, g, x),
    "log_marginal elbo": lambda g, x: log_marginal(model, g, x, method="elbo"),
    "log_marginal iwae": lambda g, x: log_marginal(model, g, x, method="iwae", num_particles=4),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("mismatch", sorted(MISMATCHES))
def test_model_guide_mismatches_name_the_site(entry: str, mismatch: str) -> None:
    guide, match = MISMATCHES[mismatch]
    x = binary_data(n=32, d=6)
    with pytest.raises(ValueError, match=match):
        ENTRY_POINTS[entry](guide, x)


def test_float64_data_is_converted_at_the_boundary_everywhere() -> None:
    vae = tiny_vae()
    x32 = binary_data(n=40)
    x64 = x32.double()
    torch.manual_seed(1)
    a = evaluate_bound(vae, x32)
    torch.manual_seed(1)
    b = evaluate_bound(vae, x64)
    assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)
    r32 = log_marginal(vae.model, vae.guide, x32, method="iwae", num_particles=8, seed=2)
    r64 = log_marginal(vae.model, vae.guide, x64, method="iwae", num_particles=8, seed=2)
    assert torch.equal(r32.estimate, r64.estimate)
    trace = pyro.poutine.trace(vae.guide).get_trace(x64)
    assert trace.nodes["z"]["value"].dtype == torch.float32
    f32 = fit(tiny_vae(), x32, num_samples=64, batch_size=16, progress=False, eval_every=64)
    f64 = fit(tiny_vae(), x64, num_samples=64, batch_size=16, progress=False, eval_every=64)
    assert f32.history[-1]["train_bound"] == f64.history[-1]["train_bound"]


# --------------------------------------------------------------------------- CLI

CLI_BAD = {
    "--num-samples inf": (["train", "--num-samples", "inf"], "--num-samples: expected a positive"),
    "--num-samples 1.5": (["train", "--num-samples", "1.5"], "--num-samples: expected a positive"),
    "--num-samples -1e6": (["train", "--num-samples=-1e6"], "--num-samples: expected a positive"),
    "--threads -1": (["--threads", "-1", "train"], "--threads: expected an integer >= 1"),
    "--threads 0": (["--threads", "0", "train"], "--threads: expected an integer >= 1"),
    "--epochs 0": (["train", "--epochs", "0"], "--epochs: expected a finite number > 0"),
    "--epochs nan": (["train", "--epochs", "nan"], "--epochs: expected a finite number > 0"),
    "--seed 1.7": (["train", "--seed", "1.7"], "--seed: expected an integer >= 0"),
    "--seed -1": (["train", "--seed=-1"], "--seed: expected an integer >= 0"),
    "--seed 1e30": (["train", "--seed", str(10**30)], "--seed: expected an integer >= 0 and <="),
    "--lr nan": (["train", "--lr", "nan"], "--lr: expected a finite number > 0"),
    "--lr -1": (["train", "--lr=-1"], "--lr: expected a finite number > 0"),
    "--batch-size 0": (["train", "--batch-size", "0"], "--batch-size: expected an integer >= 1"),
    "--eval-size -3": (["train", "--eval-size=-3"], "--eval-size: expected an integer >= 1"),
    "--latent-dim 0": (["train", "--latent-dim", "0"], "--latent-dim: expected an integer >= 1"),
    "--hidden x": (["train", "--hidden", "x"], "--hidden: expected an integer >= 1"),
    "--checkpoint-minutes 0": (
        ["train", "--checkpoint-minutes", "0"],
        "--checkpoint-minutes: expected a finite number > 0",
    ),
    "evaluate --n -1": (
        ["evaluate", "run", "--n=-1"],
        "--n/--num-points: expected an integer >= 1",
    ),
    "evaluate --n 0": (
        ["evaluate", "run", "--n", "0"],
        "--n/--num-points: expected an integer >= 1",
    ),
    "evaluate --seed 1.7": (["evaluate", "run", "--seed", "1.7"], "--seed: expected an integer"),
    "gap --seed 2**64": (["gap", "run", "--seed", str(2**64)], "--seed: expected an integer"),
}


@pytest.mark.parametrize("case", sorted(CLI_BAD))
def test_cli_bad_options_are_usage_errors(case: str, capsys) -> None:
    argv, says = CLI_BAD[case]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_cli_errors_of_the_run_are_one_line(tmp_path, capsys) -> None:
    assert main(["evaluate", str(tmp_path / "none")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    out = tmp_path / "run"
    base = ["train", "--dataset", "embedded-mnist", "--out", str(out), "--no-progress"]
    base += ["--no-figures", "--latent-dim", "2", "--hidden", "8", "--num-samples", "200"]
    assert main([*base, "--mcem-num-leapfrog", "0", "--algorithm", "mcem"]) == 2
    assert "num_leapfrog" in capsys.readouterr().err
    assert main(base) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--n", "5", "--option", "num_particles=-3"]) == 2
    assert "num_particles" in capsys.readouterr().err
    assert main(["evaluate", str(out), "--n", "5", "--option", "num_particles"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


# --------------------------------------------------------------------------- properties


@examples(12)
@given(**FIT_STRATEGY)
def test_fit_arguments(tmp_path_factory, name: str, value) -> None:
    check_fit_arguments(tmp_path_factory.mktemp("fit"), name, value)


@examples(10)
@given(**LOG_MARGINAL_STRATEGY)
def test_log_marginal_options(method: str, key: str, value) -> None:
    check_log_marginal_options(method, key, value)


@examples(12)
@given(**BAD_DATA_STRATEGY)
def test_bad_data_is_named(x: int, entry: int) -> None:
    check_bad_data(x, entry)


@examples(12)
@given(**MODEL_STRATEGY)
def test_model_arguments(name: str, value) -> None:
    check_model_arguments(name, value)
