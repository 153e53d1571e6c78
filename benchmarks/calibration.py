"""Are the per-datapoint standard errors of ``log_marginal`` honest? Estimates against exact
``log p(x_i)`` on two conjugate models with a constrained latent per datapoint.

* Beta-Bernoulli: ``u_i ~ Beta(2, 3)``, ``x_id | u_i ~ Bernoulli(u_i)`` (D = 8);
* Gamma-Poisson: ``l_i ~ Gamma(2, 0.5)``, ``x_id | l_i ~ Poisson(l_i)`` (D = 8);

both with a closed-form ``log p(x_i)``, an ``AmortizedNormal`` guide trained briefly (as a
user would), and each method run with several seeds on the same points. For honest standard
errors ``z = (estimate - exact) / stderr`` has mean ~0 (for the unbiased-in-the-limit
estimators) and standard deviation ~1, and ``|z| > 3`` is rare (0.3 % for a normal).

    PYRO_AEVB_DATA=../shared/data python benchmarks/calibration.py \\
        --json benchmarks/results/calibration.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import pyro
import pyro.distributions as dist
import torch
from torch.special import gammaln

from pyro_aevb import AmortizedNormal, fit, log_marginal

D = 8
BETA_A, BETA_B = 2.0, 3.0
GAMMA_A, GAMMA_B = 2.0, 0.5


def beta_model(x):
    with pyro.plate("data", x.shape[0]):
        u = pyro.sample("u", dist.Beta(x.new_full((x.shape[0],), BETA_A), BETA_B))
        pyro.sample("x", dist.Bernoulli(u.unsqueeze(-1).expand(-1, D)).to_event(1), obs=x)


def beta_exact(x):
    k = x.sum(-1)

    def log_beta(p, q):
        return gammaln(p) + gammaln(q) - gammaln(p + q)

    return log_beta(BETA_A + k, BETA_B + D - k) - log_beta(
        torch.tensor(BETA_A), torch.tensor(BETA_B)
    )


def gamma_model(x):
    with pyro.plate("data", x.shape[0]):
        lam = pyro.sample("lam", dist.Gamma(x.new_full((x.shape[0],), GAMMA_A), GAMMA_B))
        pyro.sample("x", dist.Poisson(lam.unsqueeze(-1).expand(-1, D)).to_event(1), obs=x)


def gamma_exact(x):
    s = x.sum(-1)
    a, b = torch.tensor(GAMMA_A), torch.tensor(GAMMA_B)
    return (
        a * b.log()
        - gammaln(a)
        + gammaln(a + s)
        - (a + s) * torch.log(b + D)
        - gammaln(x + 1).sum(-1)
    )


def data(name: str, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if name == "beta":
        return (torch.rand(n, 1, generator=g) > torch.rand(n, D, generator=g)).float()
    return torch.poisson(torch.rand(n, 1, generator=g).expand(n, D) * 8, generator=g)


MODELS = {
    "beta-bernoulli": (beta_model, beta_exact, "beta"),
    "gamma-poisson": (gamma_model, gamma_exact, "gamma"),
}
METHODS = {
    "iwae": {"num_particles": 1000},
    "ais": {"num_temps": 200, "num_chains": 8},
    "appendix_d": {"stderr": "ess"},
    "appendix_d (stderr='iid')": {"stderr": "iid"},
    # twice the paper's sampling, split within each chain (as the paper) or across chains
    "appendix_d (num_chains=2)": {"num_chains": 2},
    "appendix_d (num_chains=2, split='across')": {"num_chains": 2, "split": "across"},
    "appendix_d (num_chains=4, split='across')": {"num_chains": 4, "split": "across"},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=96)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = {"settings": vars(args), "results": []}
    for model_name, (model, exact_fn, kind) in MODELS.items():
        x = data(kind, args.points)
        pyro.clear_param_store()
        torch.manual_seed(0)
        guide = AmortizedNormal(model, hidden_dims=(16,))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit(
                model,
                x,
                guide=guide,
                estimator="A",
                optimizer="adam",
                lr=1e-2,
                batch_size=32,
                num_samples=32 * 150,
                progress=False,
            )
        exact = exact_fn(x)
        for method, opts in METHODS.items():
            t0 = time.perf_counter()
            z, err = [], []
            for seed in range(args.seeds):
                r = log_marginal(model, guide, x, method.split(" ")[0], seed=seed, **opts)
                err.append(r.estimate - exact)
                z.append((r.estimate - exact) / r.stderr)
            z, err = torch.cat(z), torch.cat(err)
            row = {
                "model": model_name,
                "method": method,
                "estimates": len(z),
                "mean_error_nats": float(err.mean()),
                "mean_stderr_nats": float((err / z).abs().mean()),
                "z_mean": float(z.mean()),
                "z_std": float(z.std()),
                "frac_abs_z_gt_3": float((z.abs() > 3).float().mean()),
                "seconds": time.perf_counter() - t0,
            }
            out["results"].append(row)
            print(
                f"{model_name:15s} {method:42s} mean error {row['mean_error_nats']:+.4f} "
                f"(mean stderr {row['mean_stderr_nats']:.4f})  z: mean {row['z_mean']:+.2f} "
                f"std {row['z_std']:.2f}  |z|>3 {100 * row['frac_abs_z_gt_3']:.1f}%",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
