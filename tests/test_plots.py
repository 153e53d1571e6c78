import numpy as np
import pytest
import torch
from scipy.stats import norm

from pyro_aevb import mlp_vae
from pyro_aevb.plots import (
    image_grid,
    manifold_grid,
    plot_learning_curves,
    plot_manifold,
    plot_reconstructions,
    plot_samples,
)


def test_manifold_grid_is_inverse_gaussian_cdf_of_a_uniform_square():
    z = manifold_grid(4)
    assert z.shape == (16, 2)
    u = (np.arange(4) + 0.5) / 4
    assert np.allclose(np.unique(z[:, 0].numpy()), norm.ppf(u), atol=1e-6)
    assert torch.allclose(z[:4, 1], z[0, 1].expand(4))  # first row: one value of z_2 ...
    assert float(z[0, 1]) > float(z[-1, 1])  # ... the largest, at the top
    assert torch.equal(manifold_grid(3, latent_dim=5)[:, 2:], torch.zeros(9, 3))


def test_image_grid_tiles_images():
    imgs = torch.arange(6 * 4, dtype=torch.float32).reshape(6, 4) / 24
    grid = image_grid(imgs, (2, 2), ncols=3, pad=1)
    assert grid.shape == (2 * 3 - 1, 3 * 3 - 1)
    assert np.allclose(grid[:2, :2], imgs[0].reshape(2, 2).numpy())


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_figures_are_written_as_png(tmp_path, likelihood):
    vae = mlp_vae(28 * 20, 2, 16, likelihood=likelihood, sigmoid_mean=likelihood == "gaussian")
    shape = (28, 20)
    paths = [
        plot_manifold(vae, tmp_path / "m.png", shape, n=5),
        plot_samples(vae, tmp_path / "s.png", shape, n=9),
        plot_reconstructions(vae, torch.rand(6, 560), tmp_path / "r.png", shape),
        plot_learning_curves(
            {
                "AEVB": [
                    {"samples": 100, "train_bound": -200.0, "test_bound": -210.0},
                    {"samples": 1000, "train_bound": -150.0, "test_bound": -155.0},
                ]
            },
            tmp_path / "sub" / "c.png",
        ),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_plots_leave_the_users_matplotlib_backend_alone():
    """Importing the plots (and the CLI) selects no backend: a notebook's plt.show() keeps
    working after ``import pyro_aevb.plots`` (it did not when the module forced Agg)."""
    import subprocess
    import sys

    code = (
        "import matplotlib; matplotlib.use('svg'); import pyro_aevb.plots, pyro_aevb.cli; "
        "print(matplotlib.get_backend())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"


def test_bad_plot_arguments_are_named():
    imgs = torch.rand(6, 4)
    with pytest.raises(ValueError, match=r"image_shape=\(3, 3\) needs 9 values per image"):
        image_grid(imgs, (3, 3), ncols=3)
    with pytest.raises(ValueError, match="ncols"):
        image_grid(imgs, (2, 2), ncols=0)
    with pytest.raises(ValueError, match="pad must be an int >= 0"):
        image_grid(imgs, (2, 2), ncols=3, pad=-1)
    with pytest.raises(ValueError, match="image_shape must be"):
        image_grid(imgs, (4,), ncols=3)
    with pytest.raises(ValueError, match="latent_dim=1"):
        manifold_grid(3, latent_dim=1)
    for dims in ((0, 0), (0, 1, 2), (0, 3), 5):
        with pytest.raises(ValueError, match="dims must be two different coordinates"):
            manifold_grid(3, latent_dim=3, dims=dims)
    z = manifold_grid(3, latent_dim=3, dims=(np.int64(0), np.int64(2)))  # numpy ints are ints
    assert torch.equal(z[:, 1], torch.zeros(9))
    with pytest.raises(ValueError, match="at least one image"):
        image_grid(imgs[:0], (2, 2), ncols=3)


def test_a_figure_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """An interrupted write (Ctrl-C while the figure is rendered or written) keeps the
    figure that was there: it is rendered in memory and moved into place."""
    from matplotlib.figure import Figure

    vae = mlp_vae(16, 2, 8)
    path = plot_samples(vae, tmp_path / "s.png", (4, 4), n=4)
    before = path.read_bytes()

    def interrupted(self, fname, **kwargs):
        fname.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", interrupted)
    with pytest.raises(KeyboardInterrupt):
        plot_samples(vae, path, (4, 4), n=9)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.png"]  # no temporary left
    monkeypatch.undo()
    assert plot_samples(vae, tmp_path / "no_suffix", (4, 4), n=4) == tmp_path / "no_suffix.png"


def test_posterior_contours_name_datapoints_the_result_does_not_hold(tmp_path):
    from types import SimpleNamespace

    from pyro_aevb.plots import plot_posterior_contours

    result = SimpleNamespace(q_draws=torch.zeros(10, 3, 2))  # 10 draws of 3 datapoints
    for datapoints in ([-1], [3], [], [0.5]):
        with pytest.raises(ValueError, match=r"indices in \[0, 3\) \(the result has 3"):
            plot_posterior_contours(result, tmp_path / "c.png", datapoints=datapoints)
    with pytest.raises(ValueError, match="ncols"):
        plot_posterior_contours(result, tmp_path / "c.png", ncols=0)
