"""Kept blocks: an interrupted blocked evaluation continues from the blocks it finished, with
the result of an uninterrupted one; another evaluation's file is refused, not overwritten."""

import importlib

import pyro
import pytest
import torch

from pyro_aevb import log_marginal
from pyro_aevb.evaluate.kept_blocks import KeptBlocksMismatch

# the module (the package's name log_marginal is the function)
log_marginal_module = importlib.import_module("pyro_aevb.evaluate.log_marginal")


def _interrupt_at_call(monkeypatch, n: int) -> dict:
    """Make the n-th block estimate raise KeyboardInterrupt; counts the calls."""
    calls = {"n": 0}
    original = log_marginal_module._estimate

    def counted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(log_marginal_module, "_estimate", counted)
    return calls


@pytest.mark.parametrize(
    "method, options", [("iwae", {"num_particles": 30}), ("ais", {"num_chains": 2, "num_temps": 5})]
)
def test_an_interrupted_evaluation_continues_from_its_kept_blocks(
    ppca, tmp_path, monkeypatch, method, options
):
    x = ppca.simulate(7)
    kw = dict(seed=3, block_size=2, **options)
    whole = log_marginal(ppca.model, ppca.guide, x, method, **kw)
    path = tmp_path / "blocks.pt"
    calls = _interrupt_at_call(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        log_marginal(ppca.model, ppca.guide, x, method, keep_blocks=path, **kw)
    assert path.is_file()
    calls["n"] = -100  # no more interrupts: count the blocks estimated now
    resumed = log_marginal(ppca.model, ppca.guide, x, method, keep_blocks=path, **kw)
    assert calls["n"] == -100 + 2  # blocks 3 and 4 only
    assert torch.equal(resumed.estimate, whole.estimate)
    assert torch.equal(resumed.stderr, whole.stderr)
    assert resumed.settings["num_blocks"] == 4

    # another evaluation (other parameters, seed, rows): refused, the file untouched
    before = path.read_bytes()
    with pytest.raises(KeptBlocksMismatch, match=r"another evaluation .*differs in: seed"):
        log_marginal(ppca.model, ppca.guide, x, method, keep_blocks=path, **{**kw, "seed": 4})
    with pytest.raises(KeptBlocksMismatch, match=r"differs in: num_rows, x"):
        log_marginal(ppca.model, ppca.guide, x[:5], method, keep_blocks=path, **kw)
    ppca.W = ppca.W + 0.1
    with pytest.raises(KeptBlocksMismatch, match=r"differs in: parameters"):
        log_marginal(ppca.model, ppca.guide, x, method, keep_blocks=path, **kw)
    assert path.read_bytes() == before


def test_keep_blocks_needs_blocks_in_one_process(ppca, tmp_path):
    x = ppca.simulate(3)
    with pytest.raises(ValueError, match="keep_blocks needs block_size"):
        log_marginal(ppca.model, ppca.guide, x, "iwae", keep_blocks=tmp_path / "b.pt")
    pyro.clear_param_store()
