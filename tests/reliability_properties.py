"""Property-based bad-input checks over the public API (hypothesis), shared by the fast
suite (``tests/reliability/test_bad_input.py``, a few examples) and the long one
(``test_long.py``, many). Each ``check_*`` runs one example and returns what happened."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from reliability_helpers import binary_data, tiny_vae

from pyro_aevb import (
    NonFiniteLossError,
    elbo_per_datapoint,
    evaluate_bound,
    fit,
    log_marginal,
    mlp_vae,
)
from pyro_aevb.evaluate import METHOD_OPTIONS

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
        database=None,
    )


# Each property is a plain function, run here on a few examples and by the long suite
# (test_long.py) on many; it returns what happened, for the results file.


def check_fit_arguments(directory, name: str, value) -> str:
    kwargs = {**FIT_ARGS, name: value}
    try:
        fit(tiny_vae(), binary_data(n=64), out_dir=directory, progress=False, **kwargs)
    except NonFiniteLossError as err:
        # a valid but huge step size (lr=1e30): the training diverges, and the error says so
        # and names the argument to change
        assert name == "lr" and "lr" in str(err), repr(err)
        return "accepted, diverged: NonFiniteLossError naming lr"
    except Exception as err:  # noqa: BLE001 - the property is about which exceptions
        assert_clear(err, [name, "budget"])
        return "clear error"
    return "accepted (valid value)"


FIT_STRATEGY = dict(name=st.sampled_from(sorted(FIT_ARGS)), value=HOSTILE)


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
