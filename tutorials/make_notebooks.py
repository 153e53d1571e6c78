"""Source of the tutorial notebooks: ``python tutorials/make_notebooks.py`` rewrites them.

Notebooks are stored without outputs. Each reads ``PYRO_AEVB_QUICK=1`` (set by the test
suite) to shrink its budgets so that it executes in well under a minute.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

QUICKSTART = [
    new_markdown_cell(
        """# AEVB on MNIST: quick start

This notebook trains the variational auto-encoder of Kingma & Welling (*Auto-Encoding
Variational Bayes*, 2014) on MNIST with **pyro-aevb**, and looks at what it learned.

* the model and the guide are ordinary Pyro programs (they work with stock `SVI`,
  `Predictive`, `poutine` and `MCMC`);
* `pyro_aevb.fit` trains them with minibatches scaled by N/M (eq. 8 of the paper), the
  analytic-KL estimator B and Adagrad, on a fast fused path;
* the per-datapoint bound, the learned 2-D manifold (Figure 4) and samples (Figure 5).

With `PYRO_AEVB_DATA` pointing at a data directory the full MNIST is used; otherwise the
MNIST slice embedded in the package (5000 training digits)."""
    ),
    new_code_cell(
        """import os

import pyro
import pyro.poutine as poutine
import torch
from IPython.display import Image, display

import pyro_aevb
from pyro_aevb import evaluate_bound, fit, load_dataset, paper_mnist_vae
from pyro_aevb.plots import plot_learning_curves, plot_manifold, plot_samples

QUICK = os.environ.get("PYRO_AEVB_QUICK") == "1"  # the test suite runs a short version
torch.manual_seed(0)
torch.set_num_threads(1)
dataset = load_dataset("mnist" if os.environ.get("PYRO_AEVB_DATA") else "embedded-mnist")
print(dataset.name, dataset.train.shape, dataset.test.shape, "from", dataset.source)"""
    ),
    new_markdown_cell(
        """## The model and the guide

`paper_mnist_vae` builds the paper's 784-500-N_z network: a tanh MLP encoder
q(z|x) = N(mu, diag sigma^2), a Bernoulli MLP decoder, all parameters initialised from
N(0, 0.01) and a N(0, I) prior on the weights (MAP). We use N_z = 2 so the latent space can be
drawn. `vae.model` and `vae.guide` are Pyro programs; `num_data=N` makes the data plate scale
the minibatch by N/M."""
    ),
    new_code_cell(
        """vae = paper_mnist_vae(latent_dim=2)
x = dataset.train[:100]
trace = poutine.trace(vae.model).get_trace(x, num_data=dataset.num_train)
print(trace.format_shapes())
print("scale of the data plate:", trace.nodes["z"]["scale"])"""
    ),
    new_markdown_cell(
        """Stock Pyro works unchanged: one `SVI` step with the strict analytic-KL estimator B."""
    ),
    new_code_cell(
        """svi = pyro.infer.SVI(
    vae.model, vae.guide, pyro.optim.Adagrad({"lr": 0.02}), pyro_aevb.AnalyticKL_ELBO()
)
print("loss per datapoint:", svi.step(x, num_data=dataset.num_train) / dataset.num_train)"""
    ),
    new_markdown_cell(
        """## Training

`fit` runs Algorithm 1 (minibatches of M = 100, one draw of z per datapoint) and
evaluates the per-datapoint bound on 1000 train and test points at 1, 2, 5 x 10^k samples."""
    ),
    new_code_cell(
        """result = fit(
    vae, dataset, estimator="B", optimizer="adagrad", lr=0.02,
    num_samples=20_000 if QUICK else 1_000_000, progress=not QUICK,
)
print("training path:", result.path)
for h in result.history:
    print(f"{h['samples']:>9,} samples  train {h['train_bound']:8.2f}  test {h['test_bound']:8.2f}")
assert result.history[-1]["test_bound"] > result.history[0]["test_bound"]"""
    ),
    new_markdown_cell(
        """## The bound per datapoint, with both estimators

`evaluate_bound` returns L(x_i) for every test point (shape `(N,)`). Estimators A and B
estimate the same bound; B, with the analytic KL, has the lower variance."""
    ),
    new_code_cell(
        """test = dataset.test[:1000]
bounds = {e: torch.stack([evaluate_bound(vae, test, estimator=e) for _ in range(20)]) for e in "AB"}
for e, b in bounds.items():
    print(f"estimator {e}: bound {b.mean():8.2f}, mean per-point variance {b.var(0).mean():.3f}")"""
    ),
    new_markdown_cell("## Pictures: learning curve, manifold (Figure 4) and samples (Figure 5)"),
    new_code_cell(
        """os.makedirs("figures", exist_ok=True)
for path in (
    plot_learning_curves({"AEVB": result.history}, "figures/learning_curve.png"),
    plot_manifold(vae, "figures/manifold.png", n=15),
    plot_samples(vae, "figures/samples.png", n=64),
):
    display(Image(filename=str(path), width=420))"""
    ),
]


MARGINAL_LIKELIHOOD = [
    new_markdown_cell(
        """# How good is my VAE? Estimating log p(x)

A VAE is trained by maximising a lower bound, the ELBO. How far is the bound from the
marginal likelihood log p(x) it stands in for? `pyro_aevb.log_marginal` estimates log p(x_i)
for every datapoint, with a standard error, by several methods:

| method | what it is | bias |
|---|---|---|
| `elbo` | E_q[log p(x, z) - log q(z \\| x)] | lower bound |
| `iwae` | log (1/K) sum_k p(x, z_k) / q(z_k \\| x), z_k ~ q | lower bound, tightens with K |
| `appendix_d` | the paper's HMC estimator (posterior draws, fitted q) | upper, in expectation |
| `ais` | annealed importance sampling with HMC transitions | lower bound, near-exact |
| `bdmc` | AIS forward and backward on data simulated from the model | sandwich |

The posterior samplers run one HMC chain **per datapoint**, all datapoints at once, each with
its own step size and accept/reject: something `pyro.infer.MCMC` (one step size and one
accept/reject for the whole state) cannot do. Pyro's own NUTS stays available as a reference."""
    ),
    new_code_cell(
        """import os

import torch

from pyro_aevb import VAE, fit, load_dataset
from pyro_aevb.evaluate import log_marginal
from pyro_aevb.mcmc import sample_posterior_pyro

QUICK = os.environ.get("PYRO_AEVB_QUICK") == "1"
torch.manual_seed(0)
torch.set_num_threads(1)
dataset = load_dataset("mnist" if os.environ.get("PYRO_AEVB_DATA") else "embedded-mnist")
vae = VAE(784, 3, 100)  # the paper's Figure 3 model: N_z = 3, 100 hidden units
fit(vae, dataset, num_samples=50_000 if QUICK else 1_000_000, progress=not QUICK)
x = dataset.test[: 20 if QUICK else 200]"""
    ),
    new_markdown_cell(
        """## Every estimator on the same test points

Each result holds per-datapoint `estimate` and `stderr` tensors of shape `(batch,)`,
diagnostics (acceptance rates, step sizes, ESS) and the settings used."""
    ),
    new_code_cell(
        """settings = {
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
assert results["elbo"].mean() <= results["iwae"].mean() + 4 * results["iwae"].mean_stderr()"""
    ),
    new_markdown_cell(
        """## A sandwich: BDMC on data simulated from the model

For data drawn from the model together with its latent z, an exact posterior sample is
known, so AIS can also be run *backwards* from it. That gives a stochastic **upper** bound;
the forward run gives a lower bound; the true log p(x) lies between."""
    ),
    new_code_cell(
        """from pyro_aevb.evaluate import simulate_data

x_sim, z_sim = simulate_data(vae.model, x[:10])
sandwich = log_marginal(
    vae.model, vae.guide, x_sim, method="bdmc", z=z_sim,
    num_chains=4 if QUICK else 16, num_temps=100 if QUICK else 500,
)
print(sandwich.summary())"""
    ),
    new_markdown_cell(
        """## Pyro's NUTS as the reference sampler, with ArviZ diagnostics

`sample_posterior_pyro` runs `pyro.infer.MCMC` with NUTS (or HMC) once per datapoint and
returns an ArviZ `InferenceData` with a `datapoint` dimension; with several chains ArviZ
reports R-hat and effective sample sizes."""
    ),
    new_code_cell(
        """import arviz as az

ref = sample_posterior_pyro(
    vae.model, x[:2], kernel="nuts", num_samples=100, num_warmup=100, num_chains=2, seed=0
)
print(az.summary(ref.inference_data, var_names=["z"]))"""
    ),
]


def write(name: str, cells) -> Path:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path = HERE / name
    nbformat.write(nb, path)
    return path


if __name__ == "__main__":
    print(write("01_aevb_mnist_quickstart.ipynb", QUICKSTART))
    print(write("02_marginal_likelihood.ipynb", MARGINAL_LIKELIHOOD))
