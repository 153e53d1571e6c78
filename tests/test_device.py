"""``device=`` and ``dtype=`` through the whole API on the CPU, and the checks at the boundary.

(The same API on a GPU: ``tests/test_cuda.py``, skipped without one.)"""

import pytest
import torch

from pyro_aevb import fit, log_marginal, mlp_vae
from pyro_aevb.cli import main
from pyro_aevb.device import (
    check_generator,
    fork_rng,
    make_generator,
    place,
    resolve_device,
    resolve_dtype,
)
from pyro_aevb.evaluate import ais, appendix_d, iwae
from pyro_aevb.mcmc import sample
from pyro_aevb.mcmc.potential import PerDatapointPotential

SMALL = {
    "elbo": {"num_particles": 3},
    "iwae": {"num_particles": 20},
    "appendix_d": {"num_samples": 10, "num_warmup": 10},
    "ais": {"num_chains": 2, "num_temps": 5, "pilot_chains": 1},
    "bdmc": {"num_chains": 2, "num_temps": 5, "pilot_chains": 1},
}


def binary(n=120, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) < 0.3).float()


def test_fit_on_cpu_in_float64_converts_model_and_data(tmp_path):
    torch.manual_seed(0)
    vae = mlp_vae(12, 2, (8,))
    result = fit(
        vae,
        binary(),
        device="cpu",
        dtype="float64",
        num_samples=240,
        batch_size=40,
        eval_every=240,
        out_dir=tmp_path,
        progress=False,
    )
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in vae.parameters())
    assert result.config["device"] == "cpu" and result.path == "fast"
    assert "data_parallel" not in result.config  # one process, nothing sharded
    # the checkpoint resumes, also when asked for float64 explicitly again
    more = fit(
        vae, binary(), device=torch.device("cpu"), dtype=torch.float64, num_samples=480,
        batch_size=40, eval_every=240, out_dir=tmp_path, resume=True, progress=False,
    )  # fmt: skip
    assert more.samples == 480


@pytest.mark.parametrize("method", sorted(SMALL))
def test_log_marginal_with_device_cpu_equals_the_default(method):
    torch.manual_seed(0)
    vae = mlp_vae(12, 2, (8,))
    x = binary(5)
    options = dict(SMALL[method])
    if method == "bdmc":
        from pyro_aevb.evaluate import simulate_data

        x, options["z"] = simulate_data(vae.model, x)
    default = log_marginal(vae.model, vae.guide, x, method, seed=1, **options)
    on_cpu = log_marginal(vae.model, vae.guide, x, method, seed=1, device="cpu", **options)
    assert torch.equal(default.estimate, on_cpu.estimate)
    assert on_cpu.estimate.device.type == "cpu" and torch.isfinite(on_cpu.estimate).all()
    in64 = log_marginal(vae.model, vae.guide, x, method, seed=1, dtype=torch.float64, **options)
    assert in64.estimate.dtype == torch.float64 and next(vae.parameters()).dtype == torch.float64


def test_estimators_sampler_and_ais_take_device():
    torch.manual_seed(0)
    vae = mlp_vae(12, 2, (8,))
    x = binary(4)
    est, se, _ = iwae(vae.model, vae.guide, x, 10, device="cpu")
    assert est.shape == (4,) and torch.isfinite(se).all()
    g = make_generator(0, torch.device("cpu"))
    res = ais(vae.model, vae.guide, x, num_chains=2, num_temps=4, generator=g, device="cpu")
    assert res.estimate.shape == (4,)
    est, _, _ = appendix_d(vae.model, vae.guide, x, num_samples=6, num_warmup=4, device="cpu")
    assert est.shape == (4,)
    pot = PerDatapointPotential(vae.model, x, guide=vae.guide)
    init = pot.sample_guide()[0]
    draws = sample(pot, init, num_samples=3, num_warmup=2, generator=g, device="cpu")
    assert draws.samples.shape == (3, 4, 2) and draws.samples.device.type == "cpu"


def test_bad_devices_dtypes_and_generators_are_named():
    assert resolve_device(None) is None and resolve_dtype(None) is None
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("float64") is torch.float64
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda'"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("float16")
    with pytest.raises(ValueError, match="generator lives on cpu but the computation runs on"):
        check_generator(torch.Generator(), torch.device("cuda", 0))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda' but CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            fit(mlp_vae(12, 2, (8,)), binary(), device="cuda", num_samples=10, progress=False)
        with pytest.raises(ValueError, match="CUDA is not available"):
            log_marginal(lambda x: None, None, binary(2), "ais", device="cuda:0")


def test_place_moves_owner_modules_and_data():
    vae = mlp_vae(12, 2, (8,))
    x, device = place(binary(3).double(), (vae.model, vae.guide), dtype=torch.float32)
    assert device.type == "cpu" and x.dtype == torch.float32
    x, _ = place(x, (vae.model,), dtype="float64")
    assert next(vae.parameters()).dtype == torch.float64 and x.dtype == torch.float64


def test_fork_rng_restores_the_global_stream():
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    with fork_rng():
        torch.rand(5)
    assert torch.equal(torch.rand(2), expected)


def test_cli_train_with_device_cpu(tmp_path, capsys):
    args = ["train", "--dataset", "embedded-mnist", "--latent-dim", "2", "--hidden", "8"]
    args += ["--num-samples", "300", "--eval-size", "50", "--no-progress", "--no-figures"]
    assert main([*args, "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert "test bound" in capsys.readouterr().out
    assert main([*args, "--device", "nope", "--out", str(tmp_path / "b")]) == 2
    assert "device must be" in capsys.readouterr().err


def test_float64_data_meets_a_float32_users_model_in_its_dtype():
    """Bound-method programs: the data takes the modules' dtype (fit and log_marginal give
    what float32 data gives); plain functions, whose modules cannot be found: a named hint."""
    import pyro
    import pyro.distributions as dist
    from user_models import GlobalNoiseModel

    torch.manual_seed(0)
    m = GlobalNoiseModel()
    x = torch.randn(12, 6)
    pyro.clear_param_store()
    torch.manual_seed(1)
    want = log_marginal(m.model, m.guide, x, method="iwae", num_particles=10).estimate
    pyro.clear_param_store()
    torch.manual_seed(1)
    got = log_marginal(m.model, m.guide, x.double(), method="iwae", num_particles=10).estimate
    assert got.dtype == torch.float32
    assert torch.equal(got, want)
    res = fit(m.model, x.double(), guide=m.guide, num_samples=24, batch_size=12, progress=False)
    assert res.history[-1]["samples"] == 24

    net = torch.nn.Linear(6, 6)

    def model(x):
        pyro.module("net", net)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 6), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(net(z), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("net", net)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(net(x), 1.0).to_event(1))

    with pytest.raises(ValueError, match=r"The data x is torch.float64: the programs' param"):
        fit(model, x.double(), guide=guide, num_samples=24, progress=False)
