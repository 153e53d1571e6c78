"""PythonState: snapshots of the Python state programs read, and what they notice."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_aevb.poutine.python_state import PythonState

_THRESHOLD = 0.5


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.beta = 1.0
        self.register_buffer("scale", torch.ones(()))

    def model(self, x):
        pyro.module("net", self)
        pyro.sample("z", dist.Normal(self.lin(x) * self.beta, 1.0).to_event(2))


def _changed(state, apply):
    before = state.snapshot()
    apply()
    after = state.snapshot()
    return state.describe(state.changes(before, after))


def test_nothing_changes_without_a_change_and_in_place_tensor_updates_are_not_changes():
    pyro.clear_param_store()
    net = Net()
    state = PythonState([net.model])
    a = state.snapshot()
    with torch.no_grad():
        net.lin.weight.mul_(2.0)
        net.scale.fill_(3.0)
    assert state.snapshot() == a


def test_each_kind_of_change_is_named():
    pyro.clear_param_store()
    net = Net()
    state = PythonState([net.model])
    assert _changed(state, lambda: setattr(net, "beta", 0.5)) == "Net.beta"
    assert set(_changed(state, lambda: net.eval()).split(", ")) == {
        "Linear.training",
        "Net.training",
    }
    assert "Linear.parameters" in _changed(state, lambda: net.lin.weight.requires_grad_(False))
    assert "Net.parameters, buffers or submodules" in _changed(
        state, lambda: setattr(net, "lin", nn.Linear(2, 2))
    )
    assert "Net.parameters" in _changed(
        state, lambda: net.register_buffer("scale", torch.zeros(()))
    )
    pyro.param("p", torch.ones(2))
    assert _changed(state, lambda: pyro.get_param_store().__setitem__("p", torch.zeros(2))) == (
        "Pyro's param store"
    )


def test_globals_and_closure_variables_of_plain_functions():
    offset = [0.0]
    shift = 1.0

    def model(x):
        pyro.sample("z", dist.Normal(x * _THRESHOLD + shift, 1.0 + offset[0]).to_event(1))

    state = PythonState([model])
    assert _changed(state, lambda: globals().__setitem__("_THRESHOLD", 0.7)) == (
        "global '_THRESHOLD' of model"
    )
    globals()["_THRESHOLD"] = 0.5
    before = state.snapshot()
    shift = 2.0  # noqa: F841 (read by the closure)
    assert state.describe(state.changes(before, state.snapshot())) == (
        "closure variable 'shift' of model"
    )
    # a small container's entries are seen, one level deep (documented)
    before = state.snapshot()
    offset[0] = 1.0
    assert state.describe(state.changes(before, state.snapshot())) == (
        "closure variable 'offset' of model"
    )


class _Config:
    def __init__(self):
        self.beta = 1.0
        self.opts = {"scale": 2.0}


_CFG = _Config()
_TABLE = {"w": 1.0}


def _helper_scale():
    return _TABLE["w"] * _CFG.beta


def test_helpers_lambdas_plain_objects_and_dicts_the_programs_read():
    def model(x):
        w = (lambda: _CFG.beta)()  # a lambda defined inside: its names are watched too
        pyro.sample("z", dist.Normal(x * w * _helper_scale(), 1.0).to_event(1))

    state = PythonState([model])
    assert _changed(state, lambda: setattr(_CFG, "beta", 0.5)) == (
        "global '_CFG' of model, global '_CFG' of _helper_scale"
    )
    before = state.snapshot()
    _TABLE["w"] = 3.0  # read by a helper function of the same module
    assert "global '_TABLE' of _helper_scale" in state.describe(
        state.changes(before, state.snapshot())
    )
    before = state.snapshot()
    _CFG.opts["scale"] = 5.0  # two levels down: not seen (documented)
    assert state.snapshot() == before


def test_ignored_attributes_are_left_out_but_parameters_are_always_watched():
    pyro.clear_param_store()
    net = Net()
    state = PythonState([net.model])
    before = state.snapshot()
    net.beta = 0.25
    net.lin = nn.Linear(2, 2)
    changes = state.changes(before, state.snapshot())
    state.ignore(changes)
    before = state.snapshot()
    net.beta = 0.75  # ignored from now on
    assert state.snapshot() == before
    net.lin = nn.Linear(2, 2)  # still watched
    assert state.snapshot() != before


def test_settle_ignores_objects_the_programs_rebuild_and_returns_counters():
    class Rebuilding(nn.Module):
        def __init__(self):
            super().__init__()
            self.plates = {}
            self.calls = 0

        def model(self, x):
            self.plates = {"data": len(x)}  # rebuilt at every call, as Pyro's autoguides do

    m = Rebuilding()
    state = PythonState([m.model])
    before = state.snapshot()
    m.model(torch.zeros(2))
    assert state.settle(before, state.snapshot()) == []
    before = state.snapshot()
    m.model(torch.zeros(2))
    assert state.snapshot() == before  # no longer watched
    m.calls += 1
    (change,) = state.settle(before, state.snapshot())
    assert state.describe([change]) == "Rebuilding.calls"
