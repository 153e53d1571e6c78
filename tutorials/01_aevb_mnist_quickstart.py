# Tutorial: train the paper's MNIST VAE with pyro-aevb and look at what it learned.
# Source of 01_aevb_mnist_quickstart.ipynb: `make tutorials` executes it (see tutorials/README.md).

# %% [markdown]
# # AEVB on MNIST: quick start
#
# This notebook trains the variational auto-encoder of Kingma & Welling (*Auto-Encoding
# Variational Bayes*, 2014) on MNIST with **pyro-aevb**, and looks at what it learned.
#
# * the model and the guide are ordinary Pyro programs (they work with stock `SVI`,
#   `Predictive`, `poutine` and `MCMC`);
# * `pyro_aevb.fit` trains them with minibatches scaled by N/M (eq. 8 of the paper), the
#   analytic-KL estimator B and Adagrad, on a fast fused path;
# * the per-datapoint bound, the learned 2-D manifold (Figure 4) and samples (Figure 5).
#
# With `PYRO_AEVB_DATA` pointing at a data directory the full MNIST is used; otherwise the
# MNIST slice embedded in the package (5000 training digits).

# %%
import os

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
print(dataset.name, dataset.train.shape, dataset.test.shape, "from", dataset.source)

# %% [markdown]
# ## The model and the guide
#
# `paper_mnist_vae` builds the paper's 784-500-N_z network: a tanh MLP encoder
# q(z|x) = N(mu, diag sigma^2), a Bernoulli MLP decoder, all parameters initialised from
# N(0, 0.01) and a N(0, I) prior on the weights (MAP). We use N_z = 2 so the latent space can be
# drawn. `vae.model` and `vae.guide` are Pyro programs; `num_data=N` makes the data plate scale
# the minibatch by N/M.

# %%
vae = paper_mnist_vae(latent_dim=2)
x = dataset.train[:100]
trace = poutine.trace(vae.model).get_trace(x, num_data=dataset.num_train)
print(trace.format_shapes())
print("scale of the data plate:", trace.nodes["z"]["scale"])

# %% [markdown]
# Stock Pyro works unchanged: one `SVI` step with the strict analytic-KL estimator B.

# %%
svi = pyro.infer.SVI(
    vae.model, vae.guide, pyro.optim.Adagrad({"lr": 0.02}), pyro_aevb.AnalyticKL_ELBO()
)
print("loss per datapoint:", svi.step(x, num_data=dataset.num_train) / dataset.num_train)

# %% [markdown]
# ## Training
#
# `fit` runs Algorithm 1 (minibatches of M = 100, one draw of z per datapoint) and
# evaluates the per-datapoint bound on 1000 train and test points at 1, 2, 5 x 10^k samples.

# %%
result = fit(
    vae,
    dataset,
    estimator="B",
    optimizer="adagrad",
    lr=0.02,
    num_samples=20_000 if QUICK else 1_000_000,
    progress=not QUICK,
)
print("training path:", result.path)
for h in result.history:
    print(f"{h['samples']:>9,} samples  train {h['train_bound']:8.2f}  test {h['test_bound']:8.2f}")
assert result.history[-1]["test_bound"] > result.history[0]["test_bound"]

# %% [markdown]
# ## The bound per datapoint, with both estimators
#
# `evaluate_bound` returns L(x_i) for every test point (shape `(N,)`). Estimators A and B
# estimate the same bound; which one is less noisy depends on what is estimated and on how far
# training has gone (for this trained model's bound it is A; B gives the encoder less noisy
# gradients): tutorial 02 measures it.

# %%
test = dataset.test[:1000]
bounds = {e: torch.stack([evaluate_bound(vae, test, estimator=e) for _ in range(20)]) for e in "AB"}
for e, b in bounds.items():
    print(f"estimator {e}: bound {b.mean():8.2f}, mean per-point variance {b.var(0).mean():.3f}")

# %% [markdown]
# ## Pictures: learning curve, manifold (Figure 4) and samples (Figure 5)

# %%
os.makedirs("figures", exist_ok=True)
for path in (
    plot_learning_curves({"AEVB": result.history}, "figures/learning_curve.png"),
    plot_manifold(vae, "figures/manifold.png", n=15),
    plot_samples(vae, "figures/samples.png", n=64),
):
    display(Image(filename=str(path), width=420))
