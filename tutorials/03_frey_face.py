# Tutorial: the paper's Gaussian-decoder VAE on the Frey Face data: manifold and samples.
# Source of 03_frey_face.ipynb: `make tutorials` executes it (see tutorials/README.md).
# NEEDS_DATA: Frey Face is not shipped inside the package; set PYRO_AEVB_DATA.

# %% [markdown]
# # Frey Face with the Gaussian decoder: the face manifold and samples
#
# The paper's second data set: 1965 grey-scale faces of 28 x 20 pixels (pixels / 256), of one
# person, in many expressions. Faces are real-valued, so the decoder is the paper's Gaussian
# MLP (Appendix C.2): p(x|z) = N(mu(z), diag sigma^2(z)) with the mean squashed into (0, 1) by
# a sigmoid. The data set is small (1765 training and 200 test faces here), so it shows what
# the MAP weight prior and a small latent space do against overfitting, and with N_z = 2 the
# whole learned manifold of faces can be drawn (the paper's Figure 4, right).

# %%
import os

import matplotlib.pyplot as plt
import torch
from IPython.display import Image, display

from pyro_aevb import evaluate_bound, fit, load_dataset, paper_frey_face_vae
from pyro_aevb.plots import plot_learning_curves, plot_manifold, plot_reconstructions

QUICK = os.environ.get("PYRO_AEVB_QUICK") == "1"  # the test suite runs a short version
torch.manual_seed(0)
torch.set_num_threads(1)
faces = load_dataset("frey-face")
print(faces)
print("likelihood:", faces.likelihood, " image shape:", faces.image_shape)

# %% [markdown]
# ## Training: N_z = 2 and N_z = 10
#
# `paper_frey_face_vae` is the paper's 560-200-N_z model: tanh MLPs, N(0, 0.01)
# initialisation, N(0, I) weight prior, Gaussian decoder with a sigmoid mean. Adagrad with
# the paper's step size; the bound is evaluated on all training and test faces.

# %%
budget = 20_000 if QUICK else 2_000_000
models, histories = {}, {}
for nz in (2, 10):
    torch.manual_seed(nz)
    vae = paper_frey_face_vae(latent_dim=nz)
    result = fit(vae, faces, lr=0.02, num_samples=budget, eval_size=None, progress=False)
    models[nz], histories[f"N_z = {nz}"] = vae, result.history
    last = result.history[-1]
    print(f"N_z = {nz:>2}: train bound {last['train_bound']:8.1f}, test bound "
          f"{last['test_bound']:8.1f} nats ({result.path} path, "
          f"{result.samples / last['train_seconds']:,.0f} samples/s)")  # fmt: skip

# %% [markdown]
# The bound of a density over continuous pixels (in (0, 1), 560 of them) is positive: it is
# a log-density, not a log-probability. The gap between the training and the test bound
# shows how much the model has memorised of 1765 faces.

# %%
os.makedirs("figures", exist_ok=True)
path = plot_learning_curves(histories, "figures/frey_curves.png", title="Frey Face")
display(Image(filename=str(path), width=480))

# %% [markdown]
# ## The learned 2-D manifold (Figure 4)
#
# A grid of z on the unit square, mapped through the inverse Gaussian CDF (so that it covers
# the prior's mass evenly), each decoded to the mean of p(x|z). Moving along one axis turns
# the head, along the other the expression changes.

# %%
path = plot_manifold(models[2], "figures/frey_manifold.png", image_shape=faces.image_shape, n=12)
display(Image(filename=str(path), width=420))

# %% [markdown]
# ## Samples from the generative model, and reconstructions
#
# Samples: z ~ N(0, I) decoded to the mean face; the 10-D model's samples are sharper and
# more varied than those of the 2-D one. Reconstructions: test faces (top) and the decoded
# mean of q(z|x) (bottom).

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
g = torch.Generator().manual_seed(0)
for ax, nz in zip(axes, (2, 10), strict=True):
    images = models[nz].sample(40, generator=g).reshape(40, *faces.image_shape)
    grid = torch.cat([torch.cat(list(images[r * 8 : (r + 1) * 8]), dim=1) for r in range(5)])
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"samples, N_z = {nz}")
    ax.axis("off")
plt.show()
path = plot_reconstructions(
    models[10], faces.test[:12], "figures/frey_recon.png", image_shape=faces.image_shape
)
display(Image(filename=str(path), width=520))

# %% [markdown]
# ## The bound per face
#
# `evaluate_bound` gives L(x_i) for every test face: the faces the model explains worst are
# the unusual expressions.

# %%
bounds = evaluate_bound(models[10], faces.test, num_particles=10)
order = bounds.argsort()
print(f"test bound: mean {bounds.mean():.1f}, min {bounds.min():.1f}, max {bounds.max():.1f}")
fig, axes = plt.subplots(1, 8, figsize=(10, 2))
for ax, i in zip(axes, torch.cat([order[:4], order[-4:]]).tolist(), strict=True):
    ax.imshow(faces.test[i].reshape(faces.image_shape).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"{bounds[i]:.0f}")
    ax.axis("off")
fig.suptitle("lowest (left) and highest (right) per-face bounds")
plt.show()
