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
# The warnings above come from IWAE's diagnostics: for some test digits the encoder is a
# poor importance proposal, one or a few of the 5000 weights carry the estimate (fewer than
# 2 effective weights, or a weight Pareto `k` above 0.7), and the delta-method standard error
# of those digits means little. Their estimates stay lower bounds; `r.diagnostics["ess"]`
# and `["pareto_k"]` hold the per-digit values, and AIS is the estimate to trust there.
#
# Per datapoint, against AIS (the tightest estimate here): the ELBO sits below by the gap
# `KL(q || p)`, IWAE and the Appendix-D estimator in between or on top, each point a test digit.

# %%
import matplotlib.pyplot as plt

ref_ais = results["ais"].estimate
fig, ax = plt.subplots(figsize=(7, 3.4))
for i, method in enumerate(["elbo", "iwae", "appendix_d"]):
    diff = (results[method].estimate - ref_ais).numpy()
    ax.scatter(i + 0.25 * (torch.rand(len(diff)).numpy() - 0.5), diff, s=8, alpha=0.6)
    ax.plot([i - 0.2, i + 0.2], [diff.mean()] * 2, color="k", lw=2)
ax.axhline(0.0, color="grey", lw=1)
ax.set_xticks(range(3), ["ELBO", "IWAE", "Appendix D"])
ax.set_ylabel("estimate - AIS (nats)")
ax.set_title("per test digit (bar: mean)")
fig.tight_layout()
plt.show()

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

fig, ax = plt.subplots(figsize=(7, 3.0))
idx = range(len(x_sim))
ax.errorbar(idx, sandwich.estimate.numpy(), yerr=2 * sandwich.stderr.numpy(), fmt="o",
            label="forward AIS (lower bound)")  # fmt: skip
ax.errorbar(idx, sandwich.upper.numpy(), yerr=2 * sandwich.upper_stderr.numpy(), fmt="s",
            label="reverse AIS (upper bound)")  # fmt: skip
ax.set_xlabel("simulated datapoint")
ax.set_ylabel("log p(x) (nats)")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# In the full run the two bounds meet: on the 10 simulated points the reverse-AIS upper bound
# and the forward-AIS lower bound differ by 0.02 nats on average (at most 0.06), within their
# Monte Carlo errors (a stochastic upper bound can fall a little below a stochastic lower one
# by chance). AIS with these settings is exact to a few hundredths of a nat for this model;
# above, the ELBO is 1.8 nats below it, IWAE (K = 5000) 0.27 and the Appendix-D estimator
# 0.08.

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
