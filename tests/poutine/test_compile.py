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
        lambda x: x * (2 if torch.rand(()).tolist() > 0.5 else 1),  # a draw varies too
    ],
    ids=["tolist", "numpy", "bool", "float", "item", "random"],
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
        (lambda x: x[torch.rand(6) < 0.5].sum(), "aten.index.Tensor with a boolean mask"),
    ],
    ids=["bool-index", "nonzero", "masked_select", "unique", "bool-index-put", "random-mask"],
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


def test_constant_masks_are_not_value_shaped():
    """A mask that is the same at every run (from arange, or held in a buffer) selects the
    same entries every time: torch's own CorrCholesky transform fills a matrix that way."""
    from torch.distributions import biject_to, constraints

    keep = torch.tensor([True, False, True])
    to_corr = biject_to(constraints.corr_cholesky)

    def fn(x):
        tril = torch.arange(3).unsqueeze(-1) > torch.arange(3)  # a constant mask
        m = torch.zeros(3, 3)
        m[tril] = x  # three values into three entries
        return to_corr(x).sum() + x[keep].sum() + m.sum()

    rec = _record(fn, torch.randn(3))
    x = torch.randn(3)
    torch.testing.assert_close(rec(x)[0], fn(x))


def test_an_lstm_is_refused_where_its_kernel_cannot_be_replayed_and_else_replays():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4, batch_first=True)
    weights = list(lstm.parameters())

    def fn(x, *ws):
        out, _ = torch.func.functional_call(lstm, dict(lstm.named_parameters()), (x,))
        loss = out.pow(2).sum()
        return (loss, *torch.autograd.grad(loss, ws))

    x = torch.randn(2, 5, 3)
    try:
        rec = capture(fn, [x, *weights], what="the function")
    except CaptureError as err:  # float32 on a CPU with oneDNN
        assert "LSTM through torch's oneDNN kernels" in str(err)
        return
    for a, b in zip(rec(x, *weights), fn(x, *weights), strict=True):
        torch.testing.assert_close(a, b)
