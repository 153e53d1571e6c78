"""Figures 4 and 5 of the paper: learned 2-D manifolds and random samples.

Figure 4: AEVB with a 2-D latent space on MNIST (500 hidden units) and Frey Face (200 hidden
units); a grid of z through the inverse Gaussian CDF of a linearly spaced unit square, each
decoded to the mean of p(x|z). Figure 5: random samples from the generative model for several
N_z, from the AEVB runs of ``figure2.py`` when they exist (else trained here).

    PYRO_AEVB_DATA=../shared/data python benchmarks/figures45.py

Writes ``figure4_mnist.png``, ``figure4_frey_face.png``, ``figure5.png`` and
``figures45.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from paper_runs import HIDDEN, save_results  # noqa: E402

from pyro_aevb import fit, load_dataset, paper_vae  # noqa: E402
from pyro_aevb.plots import image_grid, plot_manifold  # noqa: E402
from pyro_aevb.train.runs import load_run  # noqa: E402


def train(dataset, latent_dim: int, hidden: int, budget: int, lr: float, seed: int):
    torch.manual_seed(seed)
    vae = paper_vae(dataset, latent_dim, hidden)
    result = fit(vae, dataset, lr=lr, num_samples=budget, seed=seed, progress=False)
    return vae, result.history


def find_run(figure2_dir: Path, dataset: str, latent_dim: int):
    """The chosen-step-size AEVB run of figure2.py for this configuration, if present."""
    runs = sorted(figure2_dir.glob(f"{dataset}-nall-z{latent_dim}-aevb-lr*/checkpoint.pt"))
    if not runs:
        return None
    # The longest run of the candidates is the continued one (the chosen step size).
    return max((load_run(p.parent) for p in runs), key=lambda r: r.history[-1]["samples"])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--budget",
        type=lambda s: int(float(s)),
        default=1_000_000,
        help="training samples for each model trained here",
    )
    p.add_argument("--sample-latents", nargs="+", type=int, default=[2, 5, 10, 20])
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    here = Path(__file__).parent / "results"
    p.add_argument("--figure2-dir", default=str(here / "figure2" / "runs"))
    p.add_argument("--out", default=str(here / "figures45"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    t0 = time.perf_counter()
    summary = {}
    models = {}
    for name in ("mnist", "frey-face"):
        ds = load_dataset(name, data_dir=args.data_dir)
        vae, history = train(ds, 2, args.hidden or HIDDEN[name], args.budget, args.lr, args.seed)
        models[(name, 2)] = vae
        fname = f"figure4_{name.replace('-', '_')}.png"
        plot_manifold(
            vae,
            out / fname,
            ds.image_shape,
            n=20 if name == "mnist" else 12,
            title=f"{name}, learned 2-D manifold",
        )
        summary[name] = {"latent_dim": 2, "final": history[-1], "figure": fname}

    mnist = load_dataset("mnist", data_dir=args.data_dir)
    fig, axes = plt.subplots(
        1, len(args.sample_latents), figsize=(3 * len(args.sample_latents), 3.2)
    )
    samples_from = {}
    for ax, nz in zip(axes, args.sample_latents):
        run = find_run(Path(args.figure2_dir), "mnist", nz)
        if run is not None:
            vae, where = run.module, str(run.directory)
        elif ("mnist", nz) in models:
            vae, where = models[("mnist", nz)], "trained here"
        else:
            vae, _ = train(
                mnist, nz, args.hidden or HIDDEN["mnist"], args.budget, args.lr, args.seed
            )
            where = "trained here"
        samples_from[nz] = where
        images = vae.sample(100, generator=torch.Generator().manual_seed(args.seed))
        ax.imshow(image_grid(images, mnist.image_shape, 10), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"$N_z$ = {nz}")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "figure5.png", dpi=90)
    plt.close(fig)
    summary["figure5"] = {"samples_from": samples_from, "figure": "figure5.png"}
    save_results(out / "figures45.json", vars(args), summary, time.perf_counter() - t0)
    print(f"wrote {out}/figure4_mnist.png, figure4_frey_face.png, figure5.png")
    return summary


if __name__ == "__main__":
    main()
