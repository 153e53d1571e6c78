# Tutorial: estimate log p(x) of a trained VAE with every estimator pyro-aevb has.
# Source of 02_marginal_likelihood.ipynb: `make tutorials` executes it (see tutorials/README.md).

# %% [markdown]
# # How good is my VAE? Estimating log p(x)
#
# A VAE is trained by maximising a lower bound, the ELBO. How far is the bound from the
# marginal likelihood log p(x) it stands in for? `pyro_aevb.log_marginal` estimates log p(x_i)
# for every datapoint, with a standard error, by several methods:
#
# | method | what it is | bias |
# |---|---|---|
# | `elbo` | E_q[log p(x, z) - log q(z \| x)] | lower bound |
# | `iwae` | log (1/K) sum_k p(x, z_k) / q(z_k \| x), z_k ~ q | lower bound, tightens with K |
# | `appendix_d` | the paper's HMC estimator (posterior draws, fitted q) | upper, in expectation |
# | `ais` | annealed importance sampling with HMC transitions | lower bound, near-exact |
# | `bdmc` | AIS forward and backward on data simulated from the model | sandwich |
#
# The posterior samplers run one HMC chain **per datapoint**, all datapoints at once, each with
# its own step size and accept/reject: something `pyro.infer.MCMC` (one step size and one
# accept/reject for the whole state) cannot do. Pyro's own NUTS stays available as a reference.

# %%
import os

import torch

from pyro_aevb import fit, load_dataset, log_marginal, mlp_vae
from pyro_aevb.mcmc import sample_posterior_pyro

QUICK = os.environ.get("PYRO_AEVB_QUICK") == "1"
torch.manual_seed(0)
torch.set_num_threads(1)
dataset = load_dataset("mnist" if os.environ.get("PYRO_AEVB_DATA") else "embedded-mnist")
vae = mlp_vae(784, 3, 100)  # the paper's Figure 3 model: N_z = 3, 100 hidden units
fit(vae, dataset, num_samples=50_000 if QUICK else 1_000_000, progress=not QUICK)
x = dataset.test[: 20 if QUICK else 200]

# %% [markdown]
# ## Every estimator on the same test points
#
# Each result holds per-datapoint `estimate` and `stderr` tensors of shape `(batch,)`,
# diagnostics (acceptance rates, step sizes, ESS) and the settings used.

# %%
settings = {
    "elbo": {},
    "iwae": {"num_particles": 500 if QUICK else 5000},
    "appendix_d": {"num_samples": 50, "num_warmup": 100 if QUICK else 200},
    "ais": {"num_chains": 8 if QUICK else 16, "num_temps": 100 if QUICK else 500},
}
results = {
    m: log_marginal(vae.model, vae.guide, x, method=m, seed=0, **opts)
    for m, opts in settings.items()
}
for method, r in results.items():
    print(f"{method:>11}: {r.mean():9.3f} +- {r.mean_stderr():.3f}   ({r.seconds:.1f} s)")
gap = results["ais"].mean() - results["elbo"].mean()
print(f"log p(x) - ELBO ~ {gap:.2f} nats per datapoint")
assert results["elbo"].mean() <= results["iwae"].mean() + 4 * results["iwae"].mean_stderr()

# %% [markdown]
# ## A sandwich: BDMC on data simulated from the model
#
# For data drawn from the model together with its latent z, an exact posterior sample is
# known, so AIS can also be run *backwards* from it. That gives a stochastic **upper** bound;
# the forward run gives a lower bound; the true log p(x) lies between.

# %%
from pyro_aevb.evaluate import simulate_data

x_sim, z_sim = simulate_data(vae.model, x[:10])
sandwich = log_marginal(
    vae.model,
    vae.guide,
    x_sim,
    method="bdmc",
    z=z_sim,
    num_chains=4 if QUICK else 16,
    num_temps=100 if QUICK else 500,
)
print(sandwich.summary())

# %% [markdown]
# ## Pyro's NUTS as the reference sampler, with ArviZ diagnostics
#
# `sample_posterior_pyro` runs `pyro.infer.MCMC` with NUTS (or HMC) once per datapoint and
# returns an ArviZ `InferenceData` with a `datapoint` dimension; with several chains ArviZ
# reports R-hat and effective sample sizes.

# %%
import arviz as az

ref = sample_posterior_pyro(
    vae.model, x[:2], kernel="nuts", num_samples=100, num_warmup=100, num_chains=2, seed=0
)
print(az.summary(ref.inference_data, var_names=["z"]))
