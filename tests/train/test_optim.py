"""The private torch entry points the fast path keeps (because a measurement showed they pay)
are still there: if a torch release removes one, this fails loudly instead of the fast path
silently getting slower."""

import torch
from torch.optim import optimizer as torch_optimizer

from pyro_aevb.train import optim


def test_private_torch_entry_points_of_the_fast_path_exist():
    """``FusedAdagrad.step`` calls ``torch._fused_adagrad_`` directly and reads torch.optim's
    global hook registries (skipping ``torch.optim.Adagrad.step``'s bookkeeping made the
    optimizer call about 2x cheaper, a few per cent of a 784-100-3 step; measure again with
    ``benchmarks/speed.py``); ``FastVAE`` calls the in-place ``tanh_backward`` and
    ``sigmoid_backward`` kernels. Without them ``make_optimizer`` falls back to the public
    ``torch.optim.Adagrad(fused=True)``: correct, but slower. Fix ``pyro_aevb/train/optim.py``
    (or drop the lean step) when this fails."""
    missing = [
        name
        for name, present in [
            ("torch._fused_adagrad_", hasattr(torch, "_fused_adagrad_")),
            (
                "torch.optim.optimizer._global_optimizer_pre_hooks",
                hasattr(torch_optimizer, "_global_optimizer_pre_hooks"),
            ),
            (
                "torch.optim.optimizer._global_optimizer_post_hooks",
                hasattr(torch_optimizer, "_global_optimizer_post_hooks"),
            ),
            ("torch.ops.aten.tanh_backward.grad_input", _has_op("tanh_backward")),
            ("torch.ops.aten.sigmoid_backward.grad_input", _has_op("sigmoid_backward")),
        ]
        if not present
    ]
    assert not missing, f"torch {torch.__version__} no longer has {missing}"
    assert optim._HAS_FUSED_ADAGRAD_KERNEL
    p = torch.zeros(3, requires_grad=True)
    assert type(optim.make_optimizer("adagrad", [p], lr=0.1)) is optim.FusedAdagrad


def _has_op(name: str) -> bool:
    try:
        return callable(getattr(torch.ops.aten, name).grad_input)
    except (AttributeError, RuntimeError):
        return False


def test_the_lean_step_is_torchs_fused_adagrad_bit_for_bit():
    torch.manual_seed(0)
    ps = [torch.randn(30, 7, requires_grad=True), torch.randn(7, requires_grad=True)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    lean = optim.make_optimizer("adagrad", ps, lr=0.05)
    plain = torch.optim.Adagrad(qs, lr=0.05, fused=True)
    for _ in range(5):
        for p, q in zip(ps, qs, strict=True):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        lean.step()
        plain.step()
    for p, q in zip(ps, qs, strict=True):
        assert torch.equal(p, q)


def test_the_lean_step_leaves_a_parameter_without_gradient_alone_as_torch_does(monkeypatch):
    """A frozen parameter (no gradient) is skipped, on the lean path, not by falling back to
    the generic step; the others are updated as torch's Adagrad updates them."""
    torch.manual_seed(0)
    ps = [torch.randn(30, 7, requires_grad=True), torch.randn(7, requires_grad=True)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    lean = optim.make_optimizer("adagrad", ps, lr=0.05)
    plain = torch.optim.Adagrad(qs, lr=0.05, fused=True)
    monkeypatch.setattr(lean, "_generic_step", None)  # the lean path only
    for step in range(6):
        for i, (p, q) in enumerate(zip(ps, qs, strict=True)):
            frozen = i == 1 and step < 3  # the bias is frozen for the first three steps
            g = None if frozen else torch.randn_like(p)
            p.grad, q.grad = g, None if g is None else g.clone()
        lean.step()
        plain.step()
        for p, q in zip(ps, qs, strict=True):
            assert torch.equal(p, q)
    assert lean.state_dict()["state"][1]["step"] == plain.state_dict()["state"][1]["step"]
