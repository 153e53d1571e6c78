#!/usr/bin/env python
"""Speed of the Appendix-D marginal-likelihood estimate: Pyro's NUTS per datapoint against the
batched HMC of :mod:`pyro_aevb.mcmc.hmc`, on MNIST test images.

A script, not a test. For a trained VAE with Nz = 3 latents and 100 hidden units (the model of
the paper's Figure 3), it runs the paper's estimator (Appendix D: ``--num-samples`` posterior
draws per datapoint after ``--num-warmup`` warm-up iterations, a Gaussian density estimate
fitted on the first half, ``log p(x) = -logmeanexp(log q(z) - log p(x, z))`` on the second half,
step sizes adapted toward ``--target-accept``) twice, in one process:

* ``nuts``    -- the reference path: ``pyro.infer.MCMC`` with ``NUTS``, one run per datapoint,
  on the first ``--nuts-datapoints`` test images only (it is slow), timed per datapoint;
* ``batched`` -- the fast path: one batched HMC run (``--num-steps`` leapfrog steps, per-chain
  step sizes and diagonal masses) over all ``--num-datapoints`` images at once.

Both go through :func:`pyro_aevb.evaluate.log_marginal` with ``method="appendix_d"`` and differ
only in ``sampler``; the reported seconds are the whole call (sampling, density estimate,
diagnostics). Printed: seconds per datapoint of each, their ratio, and both estimates on the
common subset (mean +- Monte Carlo standard error, and per-datapoint differences in units of
their combined standard error); with ``--ais-temps > 0`` also an AIS estimate of the subset as
a gold standard.

The model is loaded from ``--checkpoint`` (a run directory written by ``pyro_aevb.fit(...,
out_dir=...)`` / ``pyro-aevb train``, or its ``checkpoint.pt``), or trained here with
``pyro_aevb.fit`` on ``--train-samples`` MNIST training images (``--save-run`` keeps it).
Needs ``PYRO_AEVB_DATA`` pointing at a directory with ``mnist/``.

**AIS seconds per datapoint.** With ``--ais-datapoints N`` (default 100) AIS runs with the
default settings of :func:`pyro_aevb.log_marginal` (16 chains x 500 temperatures x 5 leapfrog
steps, plus the 4 pilot chains that fix the step sizes), all datapoints x chains batched,
on the first N test images with the fast potential (hand-derived for the paper's VAE,
:mod:`pyro_aevb.mcmc.vae_potential`), and on the first ``--ais-traced-datapoints`` of them
with the traced potential (``fast="off"``, a Pyro trace at every gradient): seconds per
datapoint of both, their ratio, and the largest per-datapoint difference of the estimates
(same seed). The two paths round differently, and HMC's dynamics amplify a difference of
one rounding step at every leapfrog step: the estimates agree to rounding for short runs
and, once a datapoint's chains have separated, within their Monte Carlo error, as two runs
of the same algorithm would. ``--float64-datapoints`` and ``--float64-temps`` measure that
growth in float64 (by default 3 datapoints at 20, 60, 150 and 500 temperatures). Also
reported: the gradients evaluated per datapoint, the FLOPs of their
matrix products and the arithmetic limit -- those FLOPs at the matrix-product rate measured
in this process on the same shapes -- and the fraction of it the run reaches.
``--full-test-set`` runs the same AIS on all 10,000 test images (and records every
per-datapoint estimate in the JSON). ``--arch 784-500-20`` uses the paper's MNIST model
(N_z = 20, 500 hidden units) instead of the Figure-3 model (N_z = 3, 100 hidden);
``--skip-appendix-d`` runs only the AIS parts.

Example (the numbers in the report)::

    PYRO_AEVB_DATA=/path/to/data python benchmarks/marginal_likelihood.py \\
        --num-datapoints 1000 --nuts-datapoints 10 --threads 1 --json ml.json
    PYRO_AEVB_DATA=/path/to/data python benchmarks/marginal_likelihood.py --skip-appendix-d \\
        --full-test-set --threads 2 --save-run runs/ml-784-100-3 --json ais_full.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from pyro_aevb import VAE, fit, load_dataset, mlp_vae
from pyro_aevb.evaluate import log_marginal


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-datapoints", type=int, default=1000, help="test images, batched path")
    p.add_argument("--nuts-datapoints", type=int, default=10, help="test images, NUTS path")
    p.add_argument("--num-samples", type=int, default=50, help="posterior draws per datapoint")
    p.add_argument("--num-warmup", type=int, default=200, help="warm-up iterations per chain")
    p.add_argument("--num-steps", type=int, default=4, help="leapfrog steps (batched HMC)")
    p.add_argument("--target-accept", type=float, default=0.9)
    p.add_argument("--density", choices=["gaussian", "kde"], default="gaussian")
    p.add_argument("--ais-temps", type=int, default=500, help="AIS on the subset; 0: skip")
    p.add_argument("--ais-chains", type=int, default=16)
    p.add_argument("--checkpoint", type=Path, help="run directory or its checkpoint.pt")
    p.add_argument("--train-samples", type=float, default=1e6, help="if no --checkpoint")
    p.add_argument("--save-run", type=Path, help="keep the model trained here in this run dir")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--arch", choices=sorted(ARCHS), default="784-100-3", help="the MNIST model")
    p.add_argument("--ais-datapoints", type=int, default=100, help="AIS, fast potential")
    p.add_argument("--ais-traced-datapoints", type=int, default=10, help="AIS, traced (fast=off)")
    p.add_argument("--ais-full-temps", type=int, default=500, help="AIS temperatures (timing)")
    p.add_argument(
        "--float64-datapoints", type=int, default=3, help="fast vs traced AIS in float64"
    )
    p.add_argument(
        "--float64-temps",
        type=lambda s: [int(v) for v in s.split(",")],
        default=[20, 60, 150, 500],
        help="temperatures of the float64 comparisons (comma list)",
    )
    p.add_argument("--full-test-set", action="store_true", help="AIS on all 10000 test images")
    p.add_argument("--skip-appendix-d", action="store_true", help="only the AIS timings")
    return p.parse_args(argv)


#: The MNIST models: (latent_dim, hidden units).
ARCHS = {"784-100-3": (3, 100), "784-500-20": (20, 500)}


def matmul_rate(vae, rows: int = 4096, repeats: int = 20) -> float:
    """FLOP/s of the decoder's matrix products (a gradient's forward and input-gradient
    products) on ``rows``-row chunks, in this process: the arithmetic ceiling."""
    layers = [*vae.decoder.hidden, vae.decoder.out]
    ins = [torch.randn(rows, lin.in_features) for lin in layers]
    outs = [torch.randn(rows, lin.out_features) for lin in layers]
    flops = 4 * rows * sum(lin.in_features * lin.out_features for lin in layers)
    best = math.inf
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            for lin, a, g in zip(layers, ins, outs, strict=True):
                torch.addmm(lin.bias, a, lin.weight.t())
                torch.mm(g, lin.weight)
            best = min(best, time.perf_counter() - t)
    return flops / best


def gradient_flops(vae) -> int:
    """FLOPs of the matrix products of one row's potential gradient (decoder forward and
    input gradient)."""
    layers = [*vae.decoder.hidden, vae.decoder.out]
    return 4 * sum(lin.in_features * lin.out_features for lin in layers)


@contextlib.contextmanager
def count_gradients():
    """Count the rows whose potential gradient the hand-derived VAE potential computes (a
    benchmark-only wrapper of :meth:`VAEPotential._likelihood`, removed on exit)."""
    from pyro_aevb.mcmc import vae_potential

    counter = {"rows": 0}
    original = vae_potential.VAEPotential._likelihood

    def counting(self, position, need_value, need_grad):
        if need_grad:
            counter["rows"] += position.shape[0]
        return original(self, position, need_value, need_grad)

    vae_potential.VAEPotential._likelihood = counting
    try:
        yield counter
    finally:
        vae_potential.VAEPotential._likelihood = original


def ais_timings(vae, x, args) -> dict:
    """AIS seconds per datapoint, fast and traced potentials, and the arithmetic limit."""
    n_fast, n_traced = min(args.ais_datapoints, len(x)), min(args.ais_traced_datapoints, len(x))
    opts = {"seed": args.seed, "num_temps": args.ais_full_temps}
    with count_gradients() as counter:
        fast = log_marginal(vae.model, vae.guide, x[:n_fast], "ais", **opts)
    gradients = counter["rows"] / n_fast
    traced = log_marginal(vae.model, vae.guide, x[:n_traced], "ais", fast="off", **opts)
    flops, rate = gradient_flops(vae), matmul_rate(vae)
    per_fast, per_traced = fast.seconds / n_fast, traced.seconds / n_traced
    limit = gradients * flops / rate
    # The same rows as the traced run: the chains of all rows are drawn together, so a run on
    # other rows (more of them) draws other numbers for the first ones too.
    paired = log_marginal(vae.model, vae.guide, x[:n_traced], "ais", **opts)
    diff = (paired.estimate - traced.estimate).abs()
    return {
        "settings": {**fast.settings, "datapoints": n_fast, "traced_datapoints": n_traced},
        "potential": fast.diagnostics["potential"],
        "seconds_per_datapoint": per_fast,
        "traced_seconds_per_datapoint": per_traced,
        "speedup_vs_traced": per_traced / per_fast,
        "hours_for_10000": per_fast * 10000 / 3600,
        "traced_hours_for_10000": per_traced * 10000 / 3600,
        "gradients_per_datapoint": gradients,
        "flops_per_gradient": flops,
        "matmul_gflops": rate / 1e9,
        "arithmetic_limit_seconds_per_datapoint": limit,
        "fraction_of_arithmetic_limit": limit / per_fast,
        "mean": fast.mean(),
        "mean_stderr": fast.mean_stderr(),
        "max_abs_difference_vs_traced": float(diff.max()),
        # rounding differences grow along the chains (see float64_agreement)
        "fraction_equal_to_1e-3_vs_traced": float((diff < 1e-3).double().mean()),
        "max_difference_in_stderr": float((diff / traced.stderr).max()),
        **float64_agreement(vae, x, args, opts),
    }


def float64_agreement(vae, x, args, opts) -> dict:
    """Fast against traced AIS in float64 on the first ``--float64-datapoints`` (same seed),
    for each number of temperatures in ``--float64-temps``: the largest difference of the
    estimates and the paired differences in units of their combined standard error.

    Float64 does not make the two paths' rounding identical, only smaller; HMC's dynamics
    amplify a difference of one rounding step at every leapfrog step, so the estimates agree
    to rounding for short runs and, once the chains have separated, within their Monte Carlo
    error (as two runs of the same algorithm)."""
    n = min(args.float64_datapoints, len(x))
    if n == 0:
        return {}
    vae64 = copy.deepcopy(vae).double()
    x64 = x[:n].double()
    rows = []
    for temps in args.float64_temps:
        run = {**opts, "num_temps": temps}
        fast = log_marginal(vae64.model, vae64.guide, x64, "ais", **run)
        traced = log_marginal(vae64.model, vae64.guide, x64, "ais", fast="off", **run)
        diff = fast.estimate - traced.estimate
        z = diff / (fast.stderr**2 + traced.stderr**2).sqrt()
        rows.append(
            {
                "num_temps": temps,
                "max_abs_difference": float(diff.abs().max()),
                "difference_in_stderr": z.tolist(),
            }
        )
    return {"float64_datapoints": n, "float64_vs_traced": rows}


def ais_full_test_set(vae, x, args) -> dict:
    res = log_marginal(vae.model, vae.guide, x, "ais", seed=args.seed)
    return {
        "datapoints": len(x),
        "seconds": res.seconds,
        "seconds_per_datapoint": res.seconds / len(x),
        "hours": res.seconds / 3600,
        "mean": res.mean(),
        "mean_stderr": res.mean_stderr(),
        "settings": res.settings,
        "potential": res.diagnostics["potential"],
        "per_datapoint": res.estimate.tolist(),
        "per_datapoint_stderr": res.stderr.tolist(),
    }


def get_model(args, ds) -> tuple[VAE, dict]:
    if args.checkpoint is not None:
        from pyro_aevb.train.runs import load_run

        run_dir = args.checkpoint.parent if args.checkpoint.is_file() else args.checkpoint
        run = load_run(run_dir)
        return run.module, {"checkpoint": str(run_dir), "samples": run.history[-1]["samples"]}
    latent_dim, hidden = ARCHS[args.arch]
    vae = mlp_vae(784, latent_dim, hidden, name="vae_ml_benchmark")
    t = time.perf_counter()
    res = fit(
        vae,
        ds.train,
        num_samples=int(args.train_samples),
        seed=args.seed,
        progress=False,
        eval_every=int(args.train_samples),
        eval_size=1000,
        out_dir=args.save_run,
    )
    info = {
        "trained_samples": int(args.train_samples),
        "train_seconds": time.perf_counter() - t,
        "train_bound_1000": res.history[-1].get("train_bound"),
        "training_path": res.path,
    }
    return vae, info


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.nuts_datapoints > args.num_datapoints:
        sys.exit("--nuts-datapoints must not exceed --num-datapoints")
    ds = load_dataset("mnist")
    vae, model_info = get_model(args, ds)
    vae.eval()
    x = ds.test[: args.num_datapoints]
    sub = slice(0, args.nuts_datapoints)
    common = {
        "num_samples": args.num_samples,
        "num_warmup": args.num_warmup,
        "target_accept": args.target_accept,
        "density": args.density,
    }
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "machine": platform.machine(),
    }
    print(f"model: {model_info}")
    print(f"environment: {env}")

    if args.skip_appendix_d:
        return ais_only(vae, ds, model_info, env, args)
    nuts = log_marginal(
        vae.model, vae.guide, x[sub], "appendix_d", seed=args.seed, sampler="pyro_nuts", **common
    )
    with count_gradients() as counter:
        batched = log_marginal(
            vae.model,
            vae.guide,
            x,
            "appendix_d",
            seed=args.seed,
            sampler="hmc",
            num_steps=args.num_steps,
            **common,
        )
    per_nuts = nuts.seconds / args.nuts_datapoints
    per_batched = batched.seconds / args.num_datapoints
    gradients = counter["rows"] / args.num_datapoints
    flops, rate = gradient_flops(vae), matmul_rate(vae)
    limit = gradients * flops / rate  # seconds per datapoint at the matrix-product rate
    est_b, se_b = batched.estimate[sub], batched.stderr[sub]
    diff = est_b - nuts.estimate
    z = diff / (se_b**2 + nuts.stderr**2).sqrt()

    def mean_se(se):
        return float(se.double().pow(2).sum().sqrt() / se.numel())

    out = {
        "settings": vars(args) | {"checkpoint": str(args.checkpoint), "json": str(args.json)},
        "model": model_info,
        "environment": env,
        "nuts": {
            "datapoints": args.nuts_datapoints,
            "seconds": nuts.seconds,
            "seconds_per_datapoint": per_nuts,
            "sampler_seconds": float(nuts.diagnostics["sampler_seconds"]),
            "mean": nuts.mean(),
            "mean_stderr": nuts.mean_stderr(),
            "accept_rate": float(nuts.diagnostics["accept_rate"].mean()),
            "step_size_median": float(nuts.diagnostics["step_size"].median()),
        },
        "batched": {
            "datapoints": args.num_datapoints,
            "seconds": batched.seconds,
            "seconds_per_datapoint": per_batched,
            "sampler_seconds": float(batched.diagnostics["sampler_seconds"]),
            "mean_all": batched.mean(),
            "mean_all_stderr": batched.mean_stderr(),
            "mean_subset": float(est_b.double().mean()),
            "mean_subset_stderr": mean_se(se_b),
            "accept_rate": float(batched.diagnostics["accept_rate"].mean()),
            "step_size_median": float(batched.diagnostics["step_size"].median()),
            "ess_bulk_median": float(batched.diagnostics["ess_bulk"].median()),
        },
        "speedup_per_datapoint": per_nuts / per_batched,
        "batched_gradients_per_datapoint": gradients,
        "flops_per_gradient": flops,
        "matmul_gflops": rate / 1e9,
        "batched_arithmetic_limit_seconds_per_datapoint": limit,
        "batched_fraction_of_arithmetic_limit": limit / per_batched,
        "speedup_at_the_arithmetic_limit": per_nuts / limit,
        "subset_difference": {
            "mean": float(diff.double().mean()),
            "mean_stderr": math.hypot(nuts.mean_stderr(), mean_se(se_b)),
            "max_abs_z": float(z.abs().max()),
            "num_abs_z_above_2": int((z.abs() > 2).sum()),
            "num_abs_z_above_4": int((z.abs() > 4).sum()),
        },
        "per_datapoint_subset": {
            "nuts": nuts.estimate.tolist(),
            "nuts_stderr": nuts.stderr.tolist(),
            "batched": est_b.tolist(),
            "batched_stderr": se_b.tolist(),
        },
    }
    if args.ais_temps > 0:
        ais = log_marginal(
            vae.model,
            vae.guide,
            x[sub],
            "ais",
            seed=args.seed,
            num_temps=args.ais_temps,
            num_chains=args.ais_chains,
        )
        out["ais_subset"] = {
            "mean": ais.mean(),
            "mean_stderr": ais.mean_stderr(),
            "seconds": ais.seconds,
            "num_temps": args.ais_temps,
            "num_chains": args.ais_chains,
            "per_datapoint": ais.estimate.tolist(),
        }

    print()
    print(
        f"Appendix-D estimate, {args.num_samples} posterior draws per datapoint "
        f"({args.num_warmup} warm-up), MNIST test images, Nz=3, 100 hidden units"
    )
    print(
        f"  Pyro NUTS per datapoint: {nuts.seconds:.1f} s for {args.nuts_datapoints} datapoints "
        f"(timed on this subset only) = {per_nuts:.3f} s per datapoint"
    )
    print(
        f"  batched HMC:             {batched.seconds:.1f} s for {args.num_datapoints} "
        f"datapoints = {per_batched:.4f} s per datapoint"
    )
    print(f"  speed-up per datapoint:  {out['speedup_per_datapoint']:.0f}x")
    for name, res, n in (("NUTS", nuts, args.nuts_datapoints), ("batched", batched, len(x))):
        sampler = float(res.diagnostics["sampler_seconds"])
        print(
            f"  {name}: sampler {sampler:.2f} s, density estimate and diagnostics "
            f"{res.seconds - sampler:.2f} s ({n} datapoints)"
        )
    print(
        f"  batched: {gradients:.0f} gradients per datapoint x {flops / 1e6:.3f} MFLOP at "
        f"{rate / 1e9:.0f} GFLOP/s = {limit:.4f} s "
        f"({100 * out['batched_fraction_of_arithmetic_limit']:.0f}% of this arithmetic limit; "
        f"{out['speedup_at_the_arithmetic_limit']:.0f}x NUTS at the limit)"
    )
    print(f"  on the common subset of {args.nuts_datapoints} datapoints:")
    print(f"    NUTS     mean log p(x) = {nuts.mean():.3f} +- {nuts.mean_stderr():.3f}")
    print(f"    batched  mean log p(x) = {float(est_b.mean()):.3f} +- {mean_se(se_b):.3f}")
    if "ais_subset" in out:
        a = out["ais_subset"]
        print(
            f"    AIS      mean log p(x) = {a['mean']:.3f} +- {a['mean_stderr']:.3f} "
            f"(T={args.ais_temps}, {args.ais_chains} chains)"
        )
    d = out["subset_difference"]
    print(
        f"    batched - NUTS: mean {d['mean']:.3f} +- {d['mean_stderr']:.3f}; per datapoint "
        f"max |diff|/s.e. {d['max_abs_z']:.2f} ({d['num_abs_z_above_2']} above 2, "
        f"{d['num_abs_z_above_4']} above 4)"
    )
    print(
        f"  batched on all {args.num_datapoints}: mean log p(x) = {batched.mean():.3f} +- "
        f"{batched.mean_stderr():.3f}; acceptance {out['batched']['accept_rate']:.3f}, "
        f"median bulk ESS {out['batched']['ess_bulk_median']:.1f} of {args.num_samples}"
    )
    out.update(ais_parts(vae, ds, args))
    return write(out, args)


def ais_parts(vae, ds, args) -> dict:
    out = {}
    if args.ais_datapoints > 0:
        t = ais_timings(vae, ds.test, args)
        out["ais_timing"] = t
        print(
            f"\nAIS ({args.arch}, 16 chains x {args.ais_full_temps} temperatures x 5 leapfrog "
            f"+ 4 pilot chains, {torch.get_num_threads()} thread(s)):"
        )
        print(
            f"  {t['potential']} potential: {t['seconds_per_datapoint']:.4f} s per datapoint "
            f"({t['hours_for_10000']:.2f} h for 10,000); traced: "
            f"{t['traced_seconds_per_datapoint']:.4f} s ({t['traced_hours_for_10000']:.2f} h); "
            f"{t['speedup_vs_traced']:.1f}x"
        )
        print(
            f"  {t['gradients_per_datapoint']:.0f} gradients per datapoint x "
            f"{t['flops_per_gradient'] / 1e6:.3f} MFLOP at {t['matmul_gflops']:.0f} GFLOP/s = "
            f"{t['arithmetic_limit_seconds_per_datapoint']:.4f} s: "
            f"{100 * t['fraction_of_arithmetic_limit']:.0f}% of the arithmetic limit"
        )
        print(
            f"  fast vs traced, same seed: max |difference| "
            f"{t['max_abs_difference_vs_traced']:.2e} "
            f"({t['max_difference_in_stderr']:.2f} standard errors); "
            f"{100 * t['fraction_equal_to_1e-3_vs_traced']:.0f}% of the datapoints within 1e-3"
        )
        for row in t.get("float64_vs_traced", []):
            z = ", ".join(f"{v:+.2f}" for v in row["difference_in_stderr"])
            print(
                f"  float64, {t['float64_datapoints']} datapoints, {row['num_temps']} "
                f"temperatures: max |difference| {row['max_abs_difference']:.1e} "
                f"(in standard errors: {z})"
            )
    if args.full_test_set:
        f = ais_full_test_set(vae, ds.test, args)
        out["ais_full_test_set"] = f
        print(
            f"\nAIS on all {f['datapoints']} test images: {f['hours']:.2f} h "
            f"({f['seconds_per_datapoint']:.4f} s per datapoint), mean log p(x) = "
            f"{f['mean']:.3f} +- {f['mean_stderr']:.3f}"
        )
    return out


def ais_only(vae, ds, model_info, env, args) -> dict:
    out = {
        "settings": vars(args) | {"checkpoint": str(args.checkpoint), "json": str(args.json)},
        "model": model_info,
        "environment": env,
    }
    out.update(ais_parts(vae, ds, args))
    return write(out, args)


def write(out: dict, args) -> dict:
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str))
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
