"""Pictures of a trained model, as PNG files: the paper's Figures 2, 4 and 5 and reconstructions.

Every function takes an output ``path``, writes one PNG there (creating parent directories)
and returns the path. The figures are ``matplotlib.figure.Figure`` objects drawn straight to
the file, outside pyplot: nothing here selects a backend or touches pyplot's figures, so this
works on machines without a display and leaves a notebook's ``plt.show()`` as it was.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.stats import norm

from .train.checkpoint import write_bytes_atomic
from .validation import check_positive_int, check_seed

__all__ = [
    "image_grid",
    "manifold_grid",
    "plot_manifold",
    "plot_samples",
    "plot_reconstructions",
    "plot_learning_curves",
    "plot_posterior_contours",
    "plot_gaps",
]


def image_grid(images, image_shape: tuple[int, int], ncols: int, pad: int = 1) -> np.ndarray:
    """Tile ``images`` ``(n, H*W)`` into one array ``(rows*(H+pad)-pad, ncols*(W+pad)-pad)``."""
    images = np.asarray(torch.as_tensor(images).detach().cpu(), dtype=np.float32)
    h, w = _image_shape(image_shape)
    ncols = check_positive_int(ncols, "ncols")
    if isinstance(pad, bool) or not isinstance(pad, int | np.integer) or pad < 0:
        raise ValueError(f"pad must be an int >= 0 (pixels between tiles), got {pad!r}")
    n = images.shape[0] if images.ndim else 0
    if n == 0:
        raise ValueError(f"image_grid needs at least one image, got shape {images.shape}")
    if images[0].size != h * w:
        raise ValueError(
            f"image_shape={(h, w)} needs {h * w} values per image, but the images have shape "
            f"{tuple(images.shape)} ({images[0].size} values each)"
        )
    nrows = -(-n // ncols)
    grid = np.ones((nrows * (h + pad) - pad, ncols * (w + pad) - pad), dtype=np.float32)
    for k, img in enumerate(images.reshape(n, h, w)):
        r, c = divmod(k, ncols)
        grid[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = img
    return np.clip(grid, 0.0, 1.0)


def _image_shape(image_shape) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in image_shape)
    except (TypeError, ValueError):
        h = w = 0
    if h < 1 or w < 1 or tuple(image_shape) != (h, w):
        raise ValueError(f"image_shape must be (height, width) in pixels, got {image_shape!r}")
    return h, w


def _save(fig, path) -> Path:
    """Render ``fig`` and write it atomically: an interrupted write keeps the figure that
    was there. The format follows the suffix (``.png`` is added to a path without one)."""
    path = Path(path)
    if not path.suffix:  # as matplotlib names it
        path = path.with_suffix(".png")
    fmt = path.suffix[1:].lower()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=100, bbox_inches="tight")
    return write_bytes_atomic(path, buffer.getvalue())


def _show_grid(grid: np.ndarray, title: str | None, path) -> Path:
    fig = Figure(figsize=(grid.shape[1] / 40 + 1, grid.shape[0] / 40 + 1))
    ax = fig.subplots()
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def manifold_grid(n: int, latent_dim: int = 2, dims: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Figure 4's latent grid: ``Phi^{-1}`` of a linearly spaced unit square, ``(n*n, J)``.

    The unit square is sampled at ``(k + 0.5) / n``; rows vary the second latent coordinate
    (top = high), columns the first. Latent coordinates other than ``dims`` stay at 0.
    """
    n = check_positive_int(n, "n")
    latent_dim = check_positive_int(latent_dim, "latent_dim")
    if latent_dim < 2:
        raise ValueError(
            f"the manifold grid spans two latent coordinates; the latent space has "
            f"latent_dim={latent_dim}"
        )
    ok = len(dims) == 2 if isinstance(dims, Sequence | np.ndarray) else False
    ok = ok and all(
        isinstance(d, int | np.integer) and not isinstance(d, bool) and 0 <= d < latent_dim
        for d in dims
    )
    if not ok or dims[0] == dims[1]:
        raise ValueError(
            f"dims must be two different coordinates in [0, {latent_dim}), got {dims!r}"
        )
    a, b = (int(d) for d in dims)
    u = (np.arange(n) + 0.5) / n
    g = torch.as_tensor(norm.ppf(u), dtype=torch.float32)
    z = torch.zeros(n * n, latent_dim)
    z[:, a] = g.repeat(n)
    z[:, b] = g.flip(0).repeat_interleave(n)
    return z


@torch.no_grad()
def plot_manifold(vae, path, image_shape=(28, 28), n: int = 20, title: str | None = None):
    """Decode :func:`manifold_grid` to the mean of ``p(x|z)`` (Figure 4). For ``N_z > 2`` it
    is the slice through the first two coordinates, the others at 0 (the title says so)."""
    z = manifold_grid(n, vae.latent_dim).to(next(vae.parameters()).dtype)
    grid = image_grid(vae.decode(z), image_shape, n)
    default = f"learned manifold (N_z = {vae.latent_dim})"
    if vae.latent_dim > 2:
        default = f"learned manifold: z_1, z_2 (N_z = {vae.latent_dim}, the others at 0)"
    return _show_grid(grid, title or default, path)


@torch.no_grad()
def plot_samples(vae, path, image_shape=(28, 28), n: int = 100, seed: int = 0, title=None):
    """Means of ``p(x|z)`` for ``z ~ N(0, I)`` (Figure 5)."""
    images = vae.sample(n, generator=torch.Generator().manual_seed(check_seed(seed)))
    grid = image_grid(images, image_shape, int(np.ceil(np.sqrt(n))))
    return _show_grid(grid, title or f"random samples (N_z = {vae.latent_dim})", path)


@torch.no_grad()
def plot_reconstructions(vae, x: torch.Tensor, path, image_shape=(28, 28), title=None):
    """Data (odd rows) above their reconstructions ``E[x | z = mu(x)]`` (even rows)."""
    x = x[:40]
    recon = vae.reconstruct(x)
    ncols = min(10, len(x))
    rows = []
    for k in range(0, len(x), ncols):
        rows += [x[k : k + ncols], recon[k : k + ncols]]
    grid = image_grid(torch.cat(rows), image_shape, ncols)
    return _show_grid(grid, title or "data (odd rows) and reconstructions (even rows)", path)


def plot_learning_curves(
    histories: Mapping[str, Sequence[Mapping]],
    path,
    title: str | None = None,
    ylabel: str = "lower bound per datapoint (nats)",
    keys: tuple[str, str] = ("train_bound", "test_bound"),
    ax=None,
):
    """Figure 2: bound against training samples (log x-axis), train dashed and test solid.

    ``histories`` maps a label (e.g. ``"AEVB"``) to a history as returned by
    :func:`pyro_aevb.fit`. With ``ax`` given, draws there and returns the axes instead.
    """
    own = ax is None
    if own:
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
    for k, (label, history) in enumerate(histories.items()):
        color = f"C{k}"
        for key, style in zip(keys, ("--", "-")):
            pts = [(h["samples"], h[key]) for h in history if h.get(key) is not None]
            if pts:
                xs, ys = zip(*pts)
                split = key.split("_")[0]
                ax.plot(xs, ys, style, color=color, label=f"{label} ({split})")
    ax.set_xscale("log")
    ax.set_xlabel("# training samples evaluated")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    if not own:
        return ax
    return _save(fig, path)


def plot_posterior_contours(result, path, datapoints=None, ncols: int = 4, title=None):
    """For a 2-D latent space: per datapoint, the posterior draws (MCMC, dots) and density
    contours of the guide's draws (a Gaussian KDE), in the unconstrained coordinates.

    ``result`` is a :class:`~pyro_aevb.evaluate.posterior_shape.PosteriorShapeResult`;
    ``datapoints`` the indices to draw (default: the first ``2 * ncols``).
    """
    from scipy.stats import gaussian_kde

    if result.q_draws.shape[-1] != 2:
        raise ValueError(
            f"contour plots need a 2-D latent space; this model has {result.q_draws.shape[-1]} "
            f"unconstrained latent coordinates"
        )
    b = result.q_draws.shape[1]
    ncols = check_positive_int(ncols, "ncols")
    idx = list(range(min(b, 2 * ncols))) if datapoints is None else list(datapoints)
    bad = [i for i in idx if isinstance(i, bool) or not isinstance(i, int | np.integer)]
    bad += [i for i in idx if i not in bad and not 0 <= i < b]
    if bad or not idx:
        raise ValueError(
            f"datapoints must be a non-empty list of indices in [0, {b}) (the result has {b} "
            f"datapoints); got {datapoints!r}"
        )
    ncols = min(ncols, len(idx))
    nrows = -(-len(idx) // ncols)
    fig = Figure(figsize=(3 * ncols, 3 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    post = result.post_draws.reshape(-1, *result.post_draws.shape[2:]).detach().cpu().numpy()
    q = result.q_draws.detach().cpu().numpy()
    for ax, i in zip(axes.flat, idx, strict=False):
        p_i, q_i = post[:, i], q[:, i]
        ax.scatter(p_i[:, 0], p_i[:, 1], s=2, alpha=0.3, color="C0", label="posterior (MCMC)")
        lo = np.minimum(p_i.min(0), q_i.min(0))
        hi = np.maximum(p_i.max(0), q_i.max(0))
        pad = 0.1 * (hi - lo)
        gx, gy = np.meshgrid(*(np.linspace(lo[d] - pad[d], hi[d] + pad[d], 80) for d in (0, 1)))
        density = gaussian_kde(q_i.T)(np.stack([gx.ravel(), gy.ravel()])).reshape(gx.shape)
        ax.contour(gx, gy, density, levels=5, colors="C3", linewidths=1)
        ax.set_title(f"datapoint {i}: var ratio {float(result.var_ratio[i].mean()):.2f}")
        ax.set_xlabel(result.names[0])
        ax.set_ylabel(result.names[1])
    for ax in list(axes.flat)[len(idx) :]:
        ax.axis("off")
    axes.flat[0].legend(["posterior (MCMC)"], fontsize="small", loc="upper left")
    fig.suptitle(title or "guide q(z|x) (red contours) against the posterior (dots)")
    fig.tight_layout()
    return _save(fig, path)


def plot_gaps(report, path, title=None):
    """The two gaps per datapoint (sorted by their sum, stacked bars) and their means with
    standard errors; ``report`` is a :class:`~pyro_aevb.evaluate.gaps.GapReport`."""
    approx = report.approximation_gap.detach().double().cpu().numpy()
    amort = report.amortization_gap.detach().double().cpu().numpy()
    order = np.argsort(approx + amort)
    fig = Figure(figsize=(10, 3.6))
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    idx = np.arange(len(order))
    ax.bar(idx, approx[order], color="C0", label="approximation gap  log p(x) - L[q*]")
    ax.bar(idx, amort[order], bottom=approx[order], color="C1",
           label="amortization gap  L[q*] - L[q]")  # fmt: skip
    ax.set_xlabel("datapoints, sorted by log p(x) - L[q]")
    ax.set_ylabel("nats")
    ax.legend(fontsize="small")
    table = report.table()
    names = ["approximation gap", "amortization gap"]
    means = [table[n][0] for n in names]
    errors = [table[n][1] for n in names]
    bx.bar([0, 1], means, yerr=errors, color=["C0", "C1"], capsize=4)
    bx.set_xticks([0, 1], ["approx.", "amort."])
    bx.set_title("mean +- s.e.")
    fig.suptitle(title or f"where the ELBO loses (log p(x) by {report.log_marginal.method})")
    fig.tight_layout()
    return _save(fig, path)
