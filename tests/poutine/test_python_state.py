"""PythonState: snapshots of the Python state programs read, and what they notice."""

import collections

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
    # the globals of one module are watched once (named after the first function reading them)
    assert _changed(state, lambda: setattr(_CFG, "beta", 0.5)) == "global '_CFG' of model"
    before = state.snapshot()
    _TABLE["w"] = 3.0  # read by a helper function of the same module
    assert "global '_TABLE' of model" in state.describe(state.changes(before, state.snapshot()))
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


class _Settings:
    noise = 0.5  # a class attribute read through the class or through self


class _ConfiguredNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.cfg = _Config()  # a config object held by a module of the user's
        self.hparams = {"beta": 1.0}

    def noise(self):
        return _Settings.noise * _THRESHOLD  # a method: its globals count

    def model(self, x):
        pyro.module("net", self)
        loc = self.lin(x) * self.cfg.beta * self.hparams["beta"]
        pyro.sample("z", dist.Normal(loc, self.noise()).to_event(2))


def test_class_attributes_config_objects_and_methods_of_the_users_classes():
    pyro.clear_param_store()
    net = _ConfiguredNet()
    state = PythonState([net.model])
    assert _changed(state, lambda: setattr(net.cfg, "beta", 0.3)) == "_ConfiguredNet.cfg"
    assert _changed(state, lambda: net.hparams.__setitem__("beta", 2.0)) == (
        "_ConfiguredNet.hparams"
    )
    net.hparams = collections.OrderedDict(beta=1.0)  # dict subclasses too
    state = PythonState([net.model])
    assert _changed(state, lambda: net.hparams.__setitem__("beta", 2.0)) == (
        "_ConfiguredNet.hparams"
    )
    assert (
        _changed(state, lambda: setattr(_Settings, "noise", 0.7)) == "global '_Settings' of model"
    )
    assert "class attributes of _Settings" not in _changed(state, lambda: None)
    # a class attribute read through self (no instance attribute shadows it)
    assert _changed(state, lambda: setattr(_ConfiguredNet, "dropout", 0.1)) == (
        "class attributes of _ConfiguredNet"
    )
    del _ConfiguredNet.dropout


def test_functools_partial_programs_and_callable_objects():
    import functools

    def model(x, k):
        pyro.sample("z", dist.Normal(x * _THRESHOLD, float(k)).to_event(1))

    class CallableModel:
        def __init__(self):
            self.noise = 0.5

        def __call__(self, x):
            pyro.sample("z", dist.Normal(x, self.noise).to_event(1))

    args = {"k": 2}
    part = functools.partial(model, k=args["k"])
    state = PythonState([part])
    assert _changed(state, lambda: globals().__setitem__("_THRESHOLD", 0.7)) == (
        "global '_THRESHOLD' of model"
    )
    globals()["_THRESHOLD"] = 0.5
    scale = [1.0]
    part = functools.partial(model, k=scale)
    state = PythonState([part])
    assert _changed(state, lambda: scale.__setitem__(0, 3.0)) == (
        "k of a functools.partial program"
    )
    obj = CallableModel()
    state = PythonState([obj])
    assert _changed(state, lambda: setattr(obj, "noise", 2.0)) == "CallableModel.noise"


def test_a_replaced_pyro_sample_prior_is_a_change():
    from pyro.nn import PyroModule, PyroSample

    class Prior(PyroModule):
        def __init__(self):
            super().__init__()
            self.s = PyroSample(dist.LogNormal(0.0, 1.0))

        def model(self, x):
            pyro.sample("x", dist.Normal(0.0, self.s).expand([len(x)]).to_event(1), obs=x)

    pyro.clear_param_store()
    m = Prior()
    state = PythonState([m.model])
    assert "Prior.parameters" in _changed(
        state, lambda: setattr(m, "s", PyroSample(dist.LogNormal(2.0, 0.1)))
    )


def test_a_counter_is_dropped_after_consecutive_harmless_changes_an_epoch_counter_is_not():
    pyro.clear_param_store()
    net = Net()
    state = PythonState([net.model])
    for step in (10, 20, 30):  # now and then: stays watched
        before = state.snapshot()
        net.beta = step
        state.harmless(state.changes(before, state.snapshot()), step)
    before = state.snapshot()
    net.beta = 1.0
    assert state.changes(before, state.snapshot())
    for step in (40, 41, 42):  # at every step: a counter, no longer watched
        before = state.snapshot()
        net.beta = float(step)
        state.harmless(state.changes(before, state.snapshot()), step)
    before = state.snapshot()
    net.beta = 0.0
    assert not state.changes(before, state.snapshot())


def test_the_globals_of_a_model_wrapped_in_pyros_handlers_are_watched():
    import pyro.poutine as poutine

    def model(x):
        pyro.sample("z", dist.Normal(x * _THRESHOLD, 1.0).to_event(1))

    wrapped = poutine.scale(poutine.condition(model, {}), 0.5)
    state = PythonState([wrapped])
    assert _changed(state, lambda: globals().__setitem__("_THRESHOLD", 0.7)) == (
        "global '_THRESHOLD' of model"
    )
    globals()["_THRESHOLD"] = 0.5
    before = state.snapshot()
    poutine.trace(wrapped).get_trace(torch.zeros(2))
    assert state.snapshot() == before  # a run of the handlers changes nothing watched
