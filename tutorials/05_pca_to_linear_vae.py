# Tutorial: PCA, a linear autoencoder, probabilistic PCA and a linear VAE, on Frey Face.
# Source of 05_pca_to_linear_vae.ipynb: `make tutorials` executes it (see tutorials/README.md).
# NEEDS_DATA: Frey Face is not shipped inside the package; set PYRO_AEVB_DATA.

# %% [markdown]
# # From PCA to the linear VAE
#
# Four models of the same faces, each adding one idea to the previous:
#
# 1. **PCA**: the K directions of largest variance (eigenvectors of the covariance);
# 2. a **linear autoencoder** x -> E x -> W E x trained to reconstruct: it learns the same
#    K-dimensional subspace (not the same basis), but it is not a probability model;
# 3. **probabilistic PCA** (Tipping & Bishop 1999): z ~ N(0, I_K), x ~ N(W z + b, s^2 I): a
#    density, with a closed-form maximum-likelihood solution built from the PCA eigenvalues
#    and an exact log p(x);
# 4. a **linear VAE**: the same generative model trained by AEVB with an amortized *diagonal*
#    Gaussian guide q(z|x) = N(A (x - c), diag v). Its ELBO is a lower bound, yet at its
#    optimum it recovers PPCA's maximum-likelihood solution, and the bound is tight: there the
#    exact posterior is itself diagonal (Lucas et al. 2019, "Don't blame the ELBO").
#
# The faces are the Frey Face images (560 pixels / 256, 1765 training faces), centred.

# %%
import math
import os

import matplotlib.pyplot as plt
import torch

from pyro_aevb import LinearGaussian, elbo_per_datapoint, fit, load_dataset

QUICK = os.environ.get("PYRO_AEVB_QUICK") == "1"  # the test suite runs a short version
torch.manual_seed(0)
torch.set_num_threads(1)
faces = load_dataset("frey-face")
x = faces.train.double()
x_test = faces.test.double()
N, D = x.shape
K = 10
mean = x.mean(0)
print(f"{N} faces of {D} pixels; K = {K}")

# %% [markdown]
# ## 1. PCA

# %%
cov = (x - mean).T @ (x - mean) / N
evals, evecs = torch.linalg.eigh(cov)
evals, evecs = evals.flip(0), evecs.flip(1)  # largest first
U = evecs[:, :K]
explained = float(evals[:K].sum() / evals.sum())
print(f"the top {K} components explain {100 * explained:.1f} % of the variance")


def principal_angles_deg(A, B):
    """Angles between the column spaces of A and B (D x K), in degrees."""
    qa, _ = torch.linalg.qr(A)
    qb, _ = torch.linalg.qr(B)
    s = torch.linalg.svdvals(qa.T @ qb).clamp(max=1.0)
    return torch.rad2deg(torch.arccos(s))


# %% [markdown]
# ## 2. A linear autoencoder learns the principal subspace
#
# Encoder E (K x D), decoder W (D x K), trained by squared reconstruction error with Adam.
# Its basis is arbitrary (any invertible K x K mixing gives the same reconstructions), but the
# subspace spanned by W is PCA's: the principal angles go to zero.

# %%
torch.manual_seed(1)
E = (0.01 * torch.randn(K, D, dtype=torch.float64)).requires_grad_()
W_ae = (0.01 * torch.randn(D, K, dtype=torch.float64)).requires_grad_()
opt = torch.optim.Adam([E, W_ae], lr=1e-2)
for _ in range(300 if QUICK else 4000):
    xb = (x - mean)[torch.randint(0, N, (256,))]
    loss = ((xb @ E.T @ W_ae.T - xb) ** 2).sum(1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
with torch.no_grad():
    err_ae = float((((x - mean) @ E.T @ W_ae.T - (x - mean)) ** 2).sum(1).mean())
    err_pca = float((((x - mean) @ U @ U.T - (x - mean)) ** 2).sum(1).mean())
    angles = principal_angles_deg(W_ae.detach(), U)
print(f"reconstruction error: autoencoder {err_ae:.3f}, PCA (optimal) {err_pca:.3f}")
print(f"largest principal angle to the PCA subspace: {float(angles.max()):.2f} degrees")

# %% [markdown]
# ## 3. Probabilistic PCA: a density, in closed form
#
# The maximum-likelihood solution: s^2 = the mean of the discarded eigenvalues,
# W = U_K (L_K - s^2 I)^{1/2} (up to a rotation), b = the data mean; and
# log p(x) = log N(x; b, W W^T + s^2 I) exactly.

# %%
s2_ml = float(evals[K:].mean())
W_ml = U * (evals[:K] - s2_ml).sqrt()
ppca_ml = torch.distributions.MultivariateNormal(
    mean, covariance_matrix=W_ml @ W_ml.T + s2_ml * torch.eye(D, dtype=torch.float64)
)
ll_train_ml = float(ppca_ml.log_prob(x).mean())
ll_test_ml = float(ppca_ml.log_prob(x_test).mean())
print(f"PPCA maximum likelihood: noise sd {math.sqrt(s2_ml):.4f}")
print(f"  log p(x) per face: train {ll_train_ml:.2f}, test {ll_test_ml:.2f} nats")

# %% [markdown]
# ## 4. The linear VAE, trained by AEVB
#
# `pyro_aevb.LinearGaussian` is the PPCA model as a Pyro program with an amortized diagonal
# guide (a linear encoder). `fit` trains it like any other model (estimator B, Adam); as it
# has an exact log p(x), we can watch the ELBO close the gap to it and reach PPCA's optimum.

# %%
torch.manual_seed(2)
lin = LinearGaussian(D, K, sigma=0.2, init_scale=0.05).double()
with torch.no_grad():
    lin.b.copy_(mean)
curve = []


def record(trainer, rec):
    with torch.no_grad():
        rec["exact_train"] = float(lin.log_marginal(x).mean())
    curve.append((rec["samples"], rec["train_bound"], rec["exact_train"]))


result = fit(
    lin,
    x,
    x_test,
    optimizer="adam",
    lr=3e-3,
    batch_size=200,
    num_samples=100_000 if QUICK else 4_000_000,
    eval_size=None,
    callback=record,
    progress=False,
)
print("training path:", result.path, "-", result.path_reason)
with torch.no_grad():
    elbo_test = elbo_per_datapoint(lin.model, lin.guide, x_test, num_particles=100)
    exact_test = lin.log_marginal(x_test)
    angles = principal_angles_deg(lin.W, U)
print(f"linear VAE: noise sd {lin.sigma.item():.4f} (PPCA ML: {math.sqrt(s2_ml):.4f})")
print(f"  test: ELBO {float(elbo_test.mean()):.2f}, exact log p(x) {float(exact_test.mean()):.2f}"
      f", PPCA ML {ll_test_ml:.2f} nats per face")  # fmt: skip
print(f"  train exact log p(x) {curve[-1][2]:.2f} vs PPCA ML {ll_train_ml:.2f}")
print(f"  largest principal angle to the PCA subspace: {float(angles.max()):.2f} degrees")

# %% [markdown]
# The ELBO (a lower bound of the exact log p(x) of the *same* model) climbs to the exact
# value, and the exact log-likelihood climbs to PPCA's maximum: in the full run above the
# linear VAE ends about 1.3 nats per face (of about 757, i.e. 0.2 %) below PPCA's maximum
# likelihood on the training faces, with the same noise level to three digits and its
# subspace within a few degrees of PCA's, and its test ELBO about half a nat below its exact
# log p(x): the diagonal guide is nearly exact at the maximum-likelihood solution (where
# the posterior's covariance is diagonal in the principal directions). The small remaining
# distance is the optimiser's (a finite run of a stochastic method), not the model's.

# %%
s, bound, exact = zip(*curve, strict=True)
fig, ax = plt.subplots(figsize=(6, 3.6))
ax.plot(s, exact, "o-", label="exact log p(x) of the linear VAE")
ax.plot(s, bound, "s--", label="its ELBO (train)")
ax.axhline(ll_train_ml, color="k", lw=1, label="PPCA maximum likelihood")
ax.set_xscale("log")
ax.set_ylim(ll_train_ml - 200, ll_train_ml + 50)
ax.set_xlabel("training samples")
ax.set_ylabel("nats per face")
ax.legend()
plt.show()

# %% [markdown]
# ## What each model's directions look like
#
# PCA's eigenfaces, the autoencoder's decoder columns (a mixture of them), and the linear
# VAE's columns of W, which line up with PCA's directions one by one (up to sign and order):
# the diagonal guide breaks PPCA's rotational symmetry.


# %%
def show(ax_row, columns, title):
    for j, ax in enumerate(ax_row):
        img = columns[:, j].reshape(faces.image_shape)
        ax.imshow(img.detach().numpy(), cmap="RdBu")
        ax.axis("off")
    ax_row[0].set_title(title, loc="left", fontsize=9)


fig, axes = plt.subplots(3, 6, figsize=(8, 4.6))
show(axes[0], U, "PCA eigenfaces")
show(axes[1], W_ae.detach(), "linear autoencoder decoder")
order = (lin.W.detach().pow(2).sum(0)).argsort(descending=True)
show(axes[2], lin.W.detach()[:, order], "linear VAE: columns of W")
plt.show()
