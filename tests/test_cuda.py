"""The API on a GPU: fast path, training, checkpoints across devices, estimators, sampler, data
parallel. Skipped without CUDA; on a GPU machine it runs alone in a few minutes::

    python -m pytest -n 0 tests/test_cuda.py
"""

import json

import pytest
import torch
from distributed_helpers import case_data, gpu_train_worker, run_ranks, train_case
from marginal_helpers import bound_objective

from pyro_aevb import fit, log_marginal, mlp_vae
from pyro_aevb.cli import main
from pyro_aevb.infer.objectives import ELBO
from pyro_aevb.mcmc import sample
from pyro_aevb.mcmc.potential import PerDatapointPotential

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda", 0)
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-10}, torch.float32: {"rtol": 1e-4, "atol": 1e-4}}


def binary(n, d=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) < 0.3).float()


def tiny_vae(seed=0):
    torch.manual_seed(seed)
    return mlp_vae(30, 3, (16,), init_std=0.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("estimator", ["A", "B"])
def test_fast_path_on_cuda_computes_what_stock_pyro_computes(dtype, estimator):
    vae = tiny_vae().to(CUDA, dtype)
    x = binary(64).to(CUDA, dtype)
    fast = bound_objective(ELBO(estimator), vae, 400, x, fast="on")
    stock = bound_objective(ELBO(estimator), vae, 400, x, fast="off")
    assert fast.path == "fast" and stock.path == "pyro"
    torch.manual_seed(11)  # the same CUDA draws, in the same order, on both paths
    loss_fast = fast.loss_and_grads(x)
    grads_fast = [p.grad.clone() for p in fast.params]
    torch.manual_seed(11)
    loss_stock = stock.loss_and_grads(x)
    assert loss_fast.device == CUDA
    assert torch.allclose(loss_fast, loss_stock, **TOL[dtype])
    for g, p in zip(grads_fast, stock.params, strict=True):
        assert g.device == CUDA and torch.allclose(g, p.grad, **TOL[dtype])


def test_training_on_cuda_resumes_exactly_and_checkpoints_cross_devices(tmp_path):
    train, test = case_data("fast")
    kw = dict(batch_size=64, lr=0.05, seed=7, eval_every=400, progress=False, fast="on")
    straight = tiny_vae().double()
    fit(straight, train, test, num_samples=1200, device="cuda", out_dir=tmp_path / "s", **kw)
    assert all(p.device == CUDA for p in straight.parameters())

    # stopped at 600 and resumed on the GPU: exactly the uninterrupted run (CUDA RNG saved)
    fit(
        tiny_vae().double(),
        train,
        test,
        num_samples=600,
        device="cuda",
        out_dir=tmp_path / "h",
        **kw,
    )  # noqa: E501
    resumed = tiny_vae(5).double()
    fit(
        resumed,
        train,
        test,
        num_samples=1200,
        device="cuda",
        out_dir=tmp_path / "h",
        resume=True,
        **kw,
    )  # noqa: E501
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-12, atol=1e-12)

    # a GPU checkpoint resumes on the CPU (other draws from there on, so only statistically)
    on_cpu = tiny_vae(6).double()
    result = fit(
        on_cpu, train, test, num_samples=1600, device="cpu", out_dir=tmp_path / "s",
        resume=True, **kw,
    )  # fmt: skip
    assert all(p.device.type == "cpu" for p in on_cpu.parameters())
    assert [h["samples"] for h in result.history] == [400, 800, 1200, 1600]
    assert result.history[-1]["test_bound"] > result.history[0]["test_bound"]

    # and a CPU checkpoint resumes on the GPU
    back = tiny_vae(7).double()
    result = fit(
        back, train, test, num_samples=2000, device="cuda", out_dir=tmp_path / "s", resume=True,
        **kw,
    )  # fmt: skip
    assert all(p.device == CUDA for p in back.parameters())
    assert result.samples == 2000 and result.config["device"] == "cuda:0"


@pytest.mark.parametrize("method", ["elbo", "iwae", "appendix_d", "ais", "bdmc"])
def test_log_marginal_on_cuda(method):
    vae = tiny_vae()
    x = binary(6)
    options = {
        "elbo": {"num_particles": 20},
        "iwae": {"num_particles": 200},
        "appendix_d": {"num_samples": 20, "num_warmup": 30},
        "ais": {"num_chains": 4, "num_temps": 30},
        "bdmc": {"num_chains": 4, "num_temps": 30},
    }[method]
    if method == "bdmc":
        from pyro_aevb.evaluate import simulate_data

        x, options["z"] = simulate_data(vae.model, x)
    on_gpu = log_marginal(vae.model, vae.guide, x, method, seed=0, device="cuda", **options)
    assert next(vae.parameters()).device == CUDA
    assert on_gpu.estimate.shape == (6,) and torch.isfinite(on_gpu.estimate).all()
    on_cpu = log_marginal(vae.model, vae.guide, x, method, seed=0, device="cpu", **options)
    # other draws on the other device: the two estimates agree within their errors
    diff = (on_gpu.estimate.cpu() - on_cpu.estimate).abs()
    se = (on_gpu.stderr.cpu() ** 2 + on_cpu.stderr**2).sqrt().nan_to_num(0.0)
    assert bool((diff <= 5 * se + 0.5).all()), (diff, se)
    blocked = log_marginal(
        vae.model, vae.guide, x, method, seed=0, device="cuda", block_size=4, **options
    )
    assert blocked.estimate.shape == (6,) and blocked.settings["num_blocks"] == 2


def test_batched_hmc_takes_a_cuda_generator_and_refuses_a_cpu_one():
    vae = tiny_vae().to(CUDA)
    x = binary(5).to(CUDA)
    pot = PerDatapointPotential(vae.model, x, guide=vae.guide)
    init = pot.sample_guide()[0]
    g = torch.Generator(device=CUDA).manual_seed(0)
    res = sample(pot, init, num_samples=5, num_warmup=5, generator=g, device="cuda")
    assert res.samples.device == CUDA and res.samples.shape == (5, 5, 3)
    with pytest.raises(ValueError, match="generator lives on cpu"):
        sample(pot, init, num_samples=2, num_warmup=0, generator=torch.Generator())


def test_two_ranks_on_one_gpu_follow_one_process(tmp_path):
    """gloo with CUDA tensors (NCCL needs one GPU per rank): the explicit all-reduce of the
    fast path's GPU gradient buffers."""
    run_ranks(gpu_train_worker, tmp_path, tmp_path)
    ranks = [torch.load(tmp_path / f"gpu-rank{r}.pt", weights_only=False) for r in (0, 1)]
    single, params = train_case("fast", 1200, device="cuda")
    for name, value in params.items():
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name])
        assert torch.allclose(value.cpu(), ranks[0]["params"][name], rtol=1e-10, atol=1e-12)
    for h1, hp in zip(single.history, ranks[0]["history"], strict=True):
        assert h1["loss"] == pytest.approx(hp["loss"], rel=1e-10)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs a GPU per rank")
def test_cli_nccl_on_two_gpus(tmp_path):
    args = ["train", "--dataset", "embedded-mnist", "--latent-dim", "2", "--hidden", "16"]
    args += ["--num-samples", "2000", "--no-progress", "--no-figures", "--device", "cuda"]
    assert main([*args, "--nproc", "2", "--out", str(tmp_path / "two")]) == 0
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["data_parallel"]["backend"] == "nccl"


def test_cli_train_and_evaluate_on_cuda(tmp_path):
    args = ["train", "--dataset", "embedded-mnist", "--latent-dim", "2", "--hidden", "16"]
    args += ["--num-samples", "2000", "--no-progress", "--device", "cuda"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["device"] == "cuda:0" and summary["path"] == "fast"
    assert (tmp_path / "samples.png").is_file()
    code = main(["evaluate", str(tmp_path), "--method", "iwae", "--n", "20", "--device", "cuda",
                 "--option", "num_particles=100"])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "evaluate-iwae-test.json").read_text())
    assert len(report["estimate"]) == 20
