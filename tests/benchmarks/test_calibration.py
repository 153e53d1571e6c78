"""The calibration benchmark's exact log p(x) equal quadrature of its models' joint densities
(its conclusions rest on them)."""

import torch
from bench_scripts import load_script

calibration = load_script("calibration")


def _quadrature(model_name: str, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """log of the trapezoid integral over the latent of exp(log p(x_i, latent))."""
    import pyro.poutine as poutine

    model = calibration.MODELS[model_name][0]
    site = "u" if model_name == "beta-bernoulli" else "lam"
    n, g = x.shape[0], grid.shape[0]
    xs = x.repeat(g, 1)  # row j * n + i: grid point j, datapoint i
    values = grid.repeat_interleave(n)
    trace = poutine.trace(poutine.condition(model, data={site: values})).get_trace(xs)
    trace.compute_log_prob()
    log_joint = (trace.nodes[site]["log_prob"] + trace.nodes["x"]["log_prob"]).view(g, n)
    return torch.logsumexp(log_joint + torch.log(torch.gradient(grid)[0]).unsqueeze(1), 0)


def test_exact_values_equal_quadrature():
    torch.set_default_dtype(torch.float64)
    try:
        for name, (_, exact_fn, kind) in calibration.MODELS.items():
            x = calibration.data(kind, 6).double()
            if name == "beta-bernoulli":
                grid = torch.linspace(1e-6, 1 - 1e-6, 20001)
            else:
                grid = torch.linspace(1e-6, 60.0, 60001)
            assert torch.allclose(exact_fn(x), _quadrature(name, x, grid), atol=1e-4), name
    finally:
        torch.set_default_dtype(torch.float32)
