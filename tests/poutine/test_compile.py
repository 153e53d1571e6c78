"""What a recording refuses: Python reads of values computed from its inputs, and tensors
whose shape depends on values; what it allows: reads of constants, checks of samples by
distributions made before recording."""

import pyro.distributions as dist
import pytest
import torch

from pyro_aevb.poutine.compile import CaptureError, capture, structure_of


def _record(fn, *inputs):
    return capture(lambda *a: (fn(*a),), list(inputs), what="the function")


@pytest.mark.parametrize(
    "read",
    [
        lambda x: x * 2 if x.tolist()[0] > 0 else x,
        lambda x: x * 2 if x.numpy()[0] > 0 else x,
        lambda x: x * 2 if (x.sum() * 3) > 0 else x,
        lambda x: x * float(x[0]),
        lambda x: x * x[1:].exp().sum().item(),
    ],
    ids=["tolist", "numpy", "bool", "float", "item"],
)
def test_python_reads_of_values_computed_from_the_inputs_are_refused(read):
    with pytest.raises(CaptureError, match="the function read a tensor value in Python"):
        _record(read, torch.randn(3))


@pytest.mark.parametrize(
    "value_shaped, op",
    [
        (lambda x: x[x > 0].sum(), "aten.index.Tensor with a boolean mask"),
        (lambda x: torch.nonzero(x).float().sum(), "aten.nonzero"),
        (lambda x: torch.masked_select(x, x > 0).sum(), "aten.masked_select"),
        (lambda x: torch.unique(x.round()).sum(), "aten._unique2"),
        (lambda x: x.clone().index_put_((x > 0,), x[:2].sum(0, True)), "aten.index_put_"),
    ],
    ids=["bool-index", "nonzero", "masked_select", "unique", "bool-index-put"],
)
def test_tensors_whose_shape_depends_on_values_are_refused(value_shaped, op):
    with pytest.raises(CaptureError, match=f"shape depends on tensor values \\({op}"):
        _record(value_shaped, torch.randn(6))


def test_reads_of_constants_and_checks_by_distributions_made_before_are_allowed():
    table = torch.tensor([1.0, 2.0, 3.0])
    with torch.distributions.Distribution.set_default_validate_args(True) or _noop():
        prior = dist.Normal(0.0, 1.0).expand([3])  # validates its samples, made before
    assert prior._validate_args

    def fn(x):
        k = int(table.tolist()[1])  # a constant: Python state, not data
        y = x.clone()
        y[x > 1.0] = 0.0  # a fill through a mask: the result's shape is x's
        return prior.log_prob(y * k).sum() + x[torch.tensor([0, 2])].sum()  # integer index

    rec = _record(fn, torch.tensor([2.0, -1.0, 0.5]))
    x = torch.tensor([0.1, 1.5, 3.0])  # another count above 1
    torch.testing.assert_close(rec(x)[0], fn(x))
    # the hook is back after recording
    with pytest.raises(ValueError):
        dist.HalfNormal(1.0, validate_args=True).log_prob(torch.tensor(-1.0))


def _noop():
    import contextlib

    return contextlib.nullcontext()


def test_a_tensor_scale_is_described_by_shape_not_read():
    import pyro
    from pyro import poutine

    def model(scale):
        with poutine.scale(scale=scale):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    sites = [
        structure_of(poutine.trace(model).get_trace(s))[0]
        for s in (torch.tensor(0.5), torch.tensor(2.0))
    ]
    assert sites[0] == sites[1] and ("tensor", ()) in sites[0]
    assert structure_of(poutine.trace(model).get_trace(0.5))[0][-2] == 0.5
