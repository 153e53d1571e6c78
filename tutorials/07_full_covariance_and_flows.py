# Tutorial: diagonal, full-covariance and IAF encoders on one decoder: what they buy, measured.
# Source of 07_full_covariance_and_flows.ipynb: `make tutorials` executes it (see
# tutorials/README.md).

# %% [markdown]
# # Full-covariance and flow encoders: what they buy
#
# The ELBO of a datapoint is log p(x) - KL(q(z|x) || p(z|x)): whatever the encoder's family
# cannot express of the true posterior is lost from the bound. pyro-aevb has three amortized
# families, each one autoguide line:
#
# | guide | q(z \| x) | encoder outputs per datapoint (D latents) |
# |---|---|---|
# | `AmortizedNormal` | N(mu, diag sigma^2) (the paper's) | 2 D |
# | `AmortizedMultivariateNormal` | N(mu, L L^T), L lower triangular | 2 D + D (D - 1) / 2 |
# | `AmortizedIAF` | N(mu, diag sigma^2) pushed through K autoregressive flows | 2 D + flows |
#
# To see what the family alone buys, we train each of them against **the same, frozen
# decoder**: then the true posterior p(z|x) and log p(x) are the same for all three, and the
# differences between their bounds are differences in KL(q || p). With a 2-D latent space,
# log p(x) and the posterior are computed *exactly* on a grid, so every number has a ground
# truth, and q can be drawn against the posterior.
#
# (Trained jointly, a richer encoder also changes the decoder the model learns; that effect is
# not measured here.)

# %%
import math
import os

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from IPython.display import Image, display

from pyro_aevb import (
    AmortizedIAF,
    AmortizedMultivariateNormal,
    AmortizedNormal,
    elbo_per_datapoint,
    fit,
    load_dataset,
    log_marginal,
    paper_mnist_vae,
)

QUICK = os.environ.get("PYRO_AEVB_QUICK") == "1"  # the test suite runs a short version
torch.manual_seed(0)
torch.set_num_threads(1)
dataset = load_dataset("mnist" if os.environ.get("PYRO_AEVB_DATA") else "embedded-mnist")
print(dataset.name, dataset.train.shape, dataset.test.shape)


def show(fig, name):
    """Save ``fig`` as figures/NAME.png and display it (the picture stored in the notebook)."""
    os.makedirs("figures", exist_ok=True)
    path = f"figures/{name}.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    display(Image(filename=path))


# %% [markdown]
# ## The decoder
#
# The paper's MNIST VAE with a 2-D latent space (500 tanh units, Bernoulli pixels), trained
# by AEVB with its own diagonal encoder. Then its weights are frozen and the model is written
# as a plain Pyro program around the decoder, which the three guides will be fitted to.

# %%
vae = paper_mnist_vae(latent_dim=2)
pretrain = fit(vae, dataset, optimizer="adam", lr=1e-3, num_samples=10_000 if QUICK else 300_000,
               eval_size=500, progress=False)  # fmt: skip
print(f"VAE test bound after {pretrain.history[-1]['samples']:,} samples: "
      f"{pretrain.history[-1]['test_bound']:.2f} nats")  # fmt: skip
for p in vae.parameters():
    p.requires_grad_(False)
pyro.clear_param_store()
frozen = [p.clone() for p in vae.decoder.parameters()]


def model(x):
    """z_i ~ N(0, I_2), x_i ~ Bernoulli(decoder(z_i)) with the frozen decoder."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
        pyro.sample("x", vae.likelihood_dist(z), obs=x)


# %% [markdown]
# ## Three encoders, the same training
#
# The same MLP trunk (200 tanh units), the same seed, budget and optimiser, and estimator A
# for all three (a flow has no closed-form KL; using A throughout keeps the gradient
# estimators alike). The IAF has two flows. The budget is printed; longer runs do better.

# %%
budget = 5_000 if QUICK else 200_000
guides = {
    "diagonal": AmortizedNormal(model, hidden_dims=200, name="diag"),
    "full covariance": AmortizedMultivariateNormal(model, hidden_dims=200, name="full"),
    "IAF (2 flows)": AmortizedIAF(model, hidden_dims=200, num_flows=2, name="iaf"),
}
for family, guide in guides.items():
    torch.manual_seed(1)
    run = fit(model, dataset, guide=guide, estimator="A", optimizer="adam", lr=1e-3,
              num_samples=budget, eval_size=500, progress=False)  # fmt: skip
    last = run.history[-1]
    print(f"{family:>16}: test bound {last['test_bound']:8.2f} after {budget:,} samples "
          f"({last['train_seconds']:.0f} s, {run.path} path)")  # fmt: skip
assert all(torch.equal(a, b) for a, b in zip(frozen, vae.decoder.parameters()))
print("the decoder did not change")

# %% [markdown]
# ## The exact log p(x) on a grid
#
# With two latents, p(x) = integral of p(x|z) p(z) dz is a sum over a grid: spacing h = 0.0125
# on [-5, 5]^2 (641,601 points; the prior mass outside is below 1e-5). The Bernoulli
# log-likelihood of every test digit at every grid point is one matrix product with the
# decoder's logits. The sum on every other point (spacing 2 h) checks the quadrature: the two
# agree when the grid resolves the posterior.

# %%
H, LIM = 0.05 if QUICK else 0.0125, 5.0


@torch.no_grad()
def log_joint(x, z):
    """log p(x_i, z_g) for rows x (n, 784) and points z (G, 2): (n, G)."""
    out = []
    for zc in z.split(25_000):
        logits = vae.decoder_output(zc)
        log_lik = x @ logits.T - F.softplus(logits).sum(-1)  # Bernoulli on [0, 1] pixels
        out.append(log_lik + vae.log_prior(zc))
    return torch.cat(out, dim=-1)


def grid(lo0, hi0, lo1, hi1, n):
    a, b = torch.linspace(lo0, hi0, n), torch.linspace(lo1, hi1, n)
    return torch.cartesian_prod(a, b), a, b


@torch.no_grad()
def exact_log_marginal(x):
    """log p(x_i) by the grid sum with spacing H, and with 2 H (every other point): (n,) each."""
    n = round(2 * LIM / H) + 1
    z, _, _ = grid(-LIM, LIM, -LIM, LIM, n)
    index = torch.arange(len(z))
    every_other = (index // n % 2 == 0) & (index % n % 2 == 0)
    fine = coarse = torch.full((len(x),), -math.inf)
    for zc, keep in zip(z.split(25_000), every_other.split(25_000)):
        lj = log_joint(x, zc)
        fine = torch.logaddexp(fine, lj.logsumexp(-1))
        coarse = torch.logaddexp(coarse, lj[:, keep].logsumexp(-1))
    return fine + 2 * math.log(H), coarse + 2 * math.log(2 * H)


x = dataset.test[: 30 if QUICK else 200]
log_p, log_p_coarse = exact_log_marginal(x)
check = (log_p - log_p_coarse).abs().max()
print(f"exact log p(x): mean {log_p.mean():.2f} over {len(x)} test digits")
print(f"grid spacing {H} against {2 * H}: max difference {check:.1e} nats")

# %% [markdown]
# ## The bounds, per family, against the truth
#
# For every test digit: the ELBO (100 draws of z averaged) and IWAE with K draws. The gap
# log p(x) - ELBO is exactly KL(q(z|x) || p(z|x)). Standard errors are over digits; the paired
# differences (same digits) are what to compare: they remove the digit-to-digit spread.

# %%
K = 100 if QUICK else 1000
elbo, iwae = {}, {}
for family, guide in guides.items():
    with torch.no_grad():
        elbo[family] = elbo_per_datapoint(model, guide, x, estimator="A", num_particles=100)
    iwae[family] = log_marginal(model, guide, x, "iwae", num_particles=K, seed=0).estimate


def mean_se(v):
    return f"{v.mean():8.3f} +- {v.std() / len(v) ** 0.5:.3f}"


print(f"{'':>16}  {'ELBO':>17}  {'IWAE, K = ' + str(K):>17}  {'KL(q || p)':>17}")
for family in guides:
    print(f"{family:>16}  {mean_se(elbo[family])}  {mean_se(iwae[family])}  "
          f"{mean_se(log_p - elbo[family])}")  # fmt: skip
print(f"{'exact log p(x)':>16}  {mean_se(log_p)}")
print("\npaired differences (nats per digit, mean +- s.e.):")
names = list(guides)
for a, b in [(names[1], names[0]), (names[2], names[0]), (names[2], names[1])]:
    print(f"  {a} - {b}:  ELBO {mean_se(elbo[a] - elbo[b])}   IWAE {mean_se(iwae[a] - iwae[b])}")
for family in guides:
    # a lower bound (up to Monte Carlo error): the IWAE estimate cannot exceed log p(x)
    assert float((iwae[family] - log_p).mean()) < 0.05

# %% [markdown]
# ## What the families look like against the posterior
#
# The true posterior p(z|x) on a fine grid (grey, filled) and each family's q(z|x) (contours
# at 1, 2 and 3 "sigmas": the levels where a Gaussian's density drops by e^(-1/2), e^(-2) and
# e^(-9/2) from its peak) for four test digits: the two where the diagonal encoder loses most
# (largest KL) and two typical ones (around the median KL). Each panel's title gives that
# family's KL(q || p) for the digit, with its Monte Carlo standard error (from 2000 draws of z).

# %%
kl_diag = log_p - elbo["diagonal"]
order = kl_diag.argsort(descending=True)
middle = len(order) // 2
picked = [int(order[0]), int(order[1]), int(order[middle]), int(order[middle + 1])]


@torch.no_grad()
def log_q(family, guide, xi, z):
    """log q(z | x_i) at the points z (G, 2), for one digit xi (1, 784)."""
    if family == "diagonal":
        loc, scale = guide.encode(xi)["z"]
        return dist.Normal(loc, scale).to_event(1).log_prob(z)
    if family == "full covariance":
        loc, tril = guide.encode(xi)
        return dist.MultivariateNormal(loc, scale_tril=tril).log_prob(z)
    loc, scale, flows = guide.encode(xi)
    return dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1), flows).log_prob(z)


levels = [-4.5, -2.0, -0.5]
colours = {"diagonal": "tab:blue", "full covariance": "tab:orange", "IAF (2 flows)": "tab:red"}
fig, axes = plt.subplots(3, 4, figsize=(13, 9.6))
for col, i in enumerate(picked):
    xi = x[i : i + 1]
    with torch.no_grad():
        # the window: where the posterior (coarse grid, within 12 nats of its maximum) and
        # the central 98 % of each q's draws lie
        zc, _, _ = grid(-LIM, LIM, -LIM, LIM, 201)
        lj = log_joint(xi, zc)[0]
        inside, kl = [zc[lj > lj.max() - 12]], {}
        for family, guide in guides.items():
            draws = guide(xi.expand(2000, -1))["z"]
            inside.append(draws.quantile(torch.tensor([0.01, 0.99]), dim=0))
            # KL(q || p) = log p(x) - E_q[log p(x, z) - log q(z | x)], from these 2000 draws
            weights = log_joint(xi, draws)[0] - log_q(family, guide, xi, draws)
            kl[family] = (float(log_p[i] - weights.mean()), float(weights.std() / 2000**0.5))
        inside = torch.cat(inside)
    pad = 0.1 * (inside.max(0).values - inside.min(0).values) + 0.05
    lo, hi = inside.min(0).values - pad, inside.max(0).values + pad
    zf, a, b = grid(lo[0], hi[0], lo[1], hi[1], 150)
    post = log_joint(xi, zf)[0].reshape(150, 150)
    post = post - post.max()
    for row, (family, guide) in enumerate(guides.items()):
        ax = axes[row, col]
        ax.contourf(a, b, post.exp().T, levels=8, cmap="Greys")
        q = log_q(family, guide, xi, zf).reshape(150, 150)
        ax.contour(a, b, (q - q.max()).T, levels=levels, colors=colours[family],
                   linestyles="solid", linewidths=1.2)  # fmt: skip
        ax.set_title(f"{family}: KL {kl[family][0]:.2f} +- {kl[family][1]:.2f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, col].set_title(f"test digit {i}\n" + axes[0, col].get_title(), fontsize=9)
fig.tight_layout()
show(fig, "posteriors")

# %% [markdown]
# ## What the numbers say
#
# From the full run stored with this notebook: MNIST, the decoder trained for 300,000 samples,
# each encoder for 200,000 against it, 200 test digits; longer runs do better.
#
# * **The grid is exact enough.** The sums at spacing 0.0125 and 0.025 differ by at most
#   0.012 nats per digit, and the finer one is more accurate still. Each family's mean IWAE
#   estimate lies below it, as a lower bound must (K = 1000 draws leave it 0.14 to 0.25 nats
#   short on average).
# * **On average the richer families buy little here, and it is measurable.** The mean
#   KL(q || p) is 1.16 nats per digit for the diagonal encoder, 1.11 for the full covariance and
#   0.88 for the IAF. Paired over the same digits, full covariance gains 0.044 +- 0.016 nats of
#   ELBO over the diagonal (2.7 standard errors) and the IAF 0.28 +- 0.14 (2 standard errors);
#   the IAF's gain over the full covariance, 0.23 +- 0.13, is within 2 standard errors of zero.
#   The posteriors of this 2-D model are close to Gaussian, so there is little shape for a richer
#   family to capture.
# * **Where the KL is large, the encoder put q in the wrong place.** For the two worst digits
#   (left in the picture) q misses the posterior altogether (KL 20 and 13 nats for the diagonal
#   encoder; these two digits alone add 0.16 nats to its mean of 1.16). That is an
#   *amortization* error, not a shape error: the full covariance misses just as badly. The IAF's
#   flows, which see the encoder's features too, moved q most of the way there (KL 1.2 and 3.5):
#   these two digits are about half of its total gain over the diagonal (28 of 55 nats summed
#   over the 200 digits).
# * **On typical digits** (right) the posterior is a tilted ellipse: the full covariance fits
#   the tilt and halves the diagonal's small KL (0.34 -> 0.21, 0.27 -> 0.12 nats), while the IAF
#   with two flows did *worse* than the diagonal on these two digits (0.44, 0.53).
#
# So: full covariance buys the correlation between latents (a small, reliable gain); a flow
# buys flexibility that, in this run, mostly went into repairing badly placed q's; neither
# fixes an amortization gap by itself (tutorial 09 measures that gap and refines q per
# datapoint). Each fresh encoder, trained against the frozen decoder, also ended with a
# slightly better test bound (-160.5 to -160.6 nats) than the VAE's own encoder had (-161.5):
# the jointly trained encoder had not caught up with its decoder.
