"""Bad input, API and CLI: every malformed argument, mismatched model/guide pair or hostile
value is a ValueError or TypeError that names the argument, site or file; never a bare
KeyError, a raw torch/Pyro error or a silent truncation.

The property-based cases (hypothesis) run a few examples each here; ``make reliability``
runs them with many more (``PYRO_AEVB_RELIABILITY_SCALE``).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_helpers import binary_data, tiny_vae

from pyro_aevb import (
    WakeSleep,
    elbo_per_datapoint,
    evaluate_bound,
    fit,
    log_marginal,
    mlp_vae,
)
from pyro_aevb.cli import main
from pyro_aevb.evaluate import METHOD_OPTIONS

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
    "evaluate --n -1": (["evaluate", "run", "--n=-1"], "--n: expected an integer >= 1"),
    "evaluate --n 0": (["evaluate", "run", "--n", "0"], "--n: expected an integer >= 1"),
    "evaluate --seed 1.7": (["evaluate", "run", "--seed", "1.7"], "--seed: expected an integer"),
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

HOSTILE = st.sampled_from(
    [-1, 0, 1.7, -2.5, math.nan, math.inf, -math.inf, "x", "", None, True, [], [3], 10**30]
)


def assert_clear(err: BaseException, names) -> None:
    """A clear error: ValueError/TypeError whose message names one of ``names``."""
    assert type(err) is not KeyError and isinstance(err, ValueError | TypeError), repr(err)
    message = str(err)
    assert any(n in message for n in names), f"{err!r} does not name {names}"


FIT_ARGS = {
    "batch_size": 16,
    "lr": 0.05,
    "num_samples": 48,
    "seed": 0,
    "eval_every": 48,
    "eval_size": 16,
    "checkpoint_every": 16,
    "checkpoint_every_seconds": 60.0,
    "estimator": "B",
    "num_particles": 1,
    "optimizer": "adam",
    "plate_name": "data",
    "fast": "auto",
}


def examples(n: int):
    """Hypothesis settings: ``n`` examples, deterministic, no deadline."""
    return settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        derandomize=True,
    )


# Each property is a plain function, run here on a few examples and by the long suite
# (test_long.py) on many; it returns what happened, for the results file.


def check_fit_arguments(directory, name: str, value) -> str:
    kwargs = {**FIT_ARGS, name: value}
    try:
        fit(tiny_vae(), binary_data(n=64), out_dir=directory, progress=False, **kwargs)
    except Exception as err:  # noqa: BLE001 - the property is about which exceptions
        assert_clear(err, [name, "budget"])
        return "clear error"
    return "accepted (valid value)"


FIT_STRATEGY = dict(name=st.sampled_from(sorted(FIT_ARGS)), value=HOSTILE)


@examples(12)
@given(**FIT_STRATEGY)
def test_fit_arguments(tmp_path_factory, name: str, value) -> None:
    check_fit_arguments(tmp_path_factory.mktemp("fit"), name, value)


def check_log_marginal_options(method: str, key: str, value) -> str:
    vae = tiny_vae()
    small = {"num_particles": 4, "num_chains": 2, "num_temps": 3, "num_samples": 3}
    options = {k: v for k, v in small.items() if k in METHOD_OPTIONS[method]}
    if method == "appendix_d":
        options.update(num_warmup=4)
    if key in METHOD_OPTIONS[method] or key == "seed":
        options[key] = value
    try:
        log_marginal(vae.model, vae.guide, binary_data(n=3), method=method, **options)
    except Exception as err:  # noqa: BLE001
        assert_clear(err, [key, method])
        return "clear error"
    return "accepted (valid value)"


LOG_MARGINAL_STRATEGY = dict(
    method=st.sampled_from(sorted(METHOD_OPTIONS)),
    key=st.sampled_from(["num_particles", "num_chains", "num_temps", "num_samples", "seed"]),
    value=HOSTILE,
)


@examples(10)
@given(**LOG_MARGINAL_STRATEGY)
def test_log_marginal_options(method: str, key: str, value) -> None:
    check_log_marginal_options(method, key, value)


BAD_X = [
    torch.zeros(0, 12),
    torch.zeros(3, 11),
    torch.zeros(12),
    torch.tensor(0.5),
    torch.full((3, 12), math.nan),
    torch.full((3, 12), 2.0),
    torch.ones(3, 12, dtype=torch.int64),
    torch.ones(3, 12, dtype=torch.bool),
    torch.ones(3, 12, dtype=torch.complex64),
    [[0.0] * 12],
    None,
]


def check_bad_data(x: int, entry: int) -> str:
    vae = tiny_vae()
    data = BAD_X[x]
    calls = [
        lambda: evaluate_bound(vae, data),
        lambda: elbo_per_datapoint(vae.model, vae.guide, data),
        lambda: log_marginal(vae.model, vae.guide, data, method="iwae", num_particles=2),
        lambda: fit(vae, data, num_samples=16, progress=False),
    ]
    with pytest.raises((ValueError, TypeError)) as info:
        calls[entry]()
    assert_clear(info.value, ["x", "train", "data"])
    return "clear error"


BAD_DATA_STRATEGY = dict(x=st.sampled_from(range(len(BAD_X))), entry=st.sampled_from(range(4)))


@examples(12)
@given(**BAD_DATA_STRATEGY)
def test_bad_data_is_named(x: int, entry: int) -> None:
    check_bad_data(x, entry)


def check_model_arguments(name: str, value) -> str:
    kwargs = {"data_dim": 12, "latent_dim": 2, "hidden_dims": 8, name: value}
    try:
        mlp_vae(**kwargs)
    except Exception as err:  # noqa: BLE001
        assert_clear(err, [name])
        return "clear error"
    return "accepted (valid value)"


MODEL_STRATEGY = dict(
    name=st.sampled_from(
        ["data_dim", "latent_dim", "hidden_dims", "likelihood", "weight_prior_std", "init_std"]
    ),
    value=HOSTILE,
)


@examples(12)
@given(**MODEL_STRATEGY)
def test_model_arguments(name: str, value) -> None:
    check_model_arguments(name, value)
