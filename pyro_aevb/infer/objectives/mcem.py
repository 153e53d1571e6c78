r"""Monte Carlo EM with an HMC E-step (the paper's Appendix E baseline): no encoder.

Every training point ``i`` keeps a persistent posterior chain ``z_i``. For a minibatch ``B``
of ``M`` of the ``N`` points:

* **E-step.** Advance each ``z_i, i in B`` by ``num_transitions`` HMC transitions of
  ``num_leapfrog = 10`` leapfrog steps targeting ``p_theta(z | x_i)`` with the batched kernel
  of :mod:`pyro_aevb.mcmc.hmc` (one chain per datapoint, its own step size and
  accept/reject). Each chain's step size follows the acceptance toward ``target_accept = 0.9``
  with the constant-gain rule ``log eps_i += gain * (a_i - 0.9)``, so that it keeps tracking
  the posterior while ``theta`` moves.
* **M-step.** ``num_m_steps = 5`` optimizer steps on theta with the acquired samples::

      loss(theta) = -(N / M) sum_{i in B} log p_theta(x_i, z_i) - log p(theta).

Chains live in the unconstrained coordinates of every local latent site of the model
(:class:`~pyro_aevb.poutine.LatentLayout`: the Jacobian of each site's transform is in the
potential) and start at a draw from the model's prior; the M-step conditions the model on
the chains mapped back through each site's transform. So MCEM runs on any model whose latents
are local (several sites, constrained supports); a model with global latents is refused (it
would need their posterior too). The chains are part of the checkpoint, so MCEM runs resume
exactly like AEVB runs. MCEM is not
online in the paper's sense: its state grows with ``N`` and every datapoint's chain must
mix, which is why it only runs on small training sets; the history's ``train_seconds`` per
training sample shows its cost next to AEVB's.
"""

from __future__ import annotations

import copy
import math

import pyro.poutine as poutine
import torch

from ...mcmc import hmc
from ...mcmc.potentials import make_potential
from ...models.vae import VAE
from ...poutine import (
    PerDatapointProgram,
    TrainingProgram,
    collect_params,
    constrain_in_model,
    flatten_in_model,
)
from ...validation import check_choice, check_positive_float, check_positive_int
from .base import FAST_MODES, BoundObjective, Objective

__all__ = ["MonteCarloEM", "MonteCarloEMObjective", "MCEM_OPTIONS"]

#: MonteCarloEM's options and their defaults (the paper's Appendix E where it gives them).
MCEM_OPTIONS = {
    "num_leapfrog": 10,
    "num_transitions": 1,
    "num_m_steps": 5,
    "target_accept": 0.9,
    "init_step_size": 0.1,
    "adapt_gain": 0.5,
    "step_size_jitter": 0.5,
}


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"shape {tuple(value.shape)}"
    return type(value).__name__


class MonteCarloEM(Objective):
    """Monte Carlo EM with an HMC E-step (Appendix E); no encoder is used.

    Parameters
    ----------
    num_leapfrog : int
        Leapfrog steps per HMC transition (paper: 10).
    num_transitions : int
        HMC transitions per E-step.
    num_m_steps : int
        Gradient steps on theta per minibatch (paper: 5).
    target_accept : float
        Target acceptance probability of the step-size rule (paper: 0.9).
    init_step_size, adapt_gain : float
        Initial leapfrog step size and the gain of the step-size rule.
    step_size_jitter : float
        Each transition integrates with ``eps * U(1 - j, 1 + j)``, so that a fixed trajectory
        length cannot lock onto a period of a near-Gaussian posterior (the chain would then
        never move); a step size drawn independently of the state keeps the target invariant.

    ``fast=`` of :meth:`bind`: the paper's :class:`~pyro_aevb.models.VAE` runs both steps on
    its networks; any other model takes the E-step's potential recorded once and replayed
    (:mod:`pyro_aevb.mcmc.compiled_potential`, traced with a warning if the model cannot be
    recorded) and the M-step on Pyro traces. ``"on"`` makes a model whose potential cannot be
    recorded an error saying why (on the first minibatch); ``"off"`` traces everything.
    """

    name = "mcem"

    def __init__(
        self,
        num_leapfrog: int = 10,
        num_transitions: int = 1,
        num_m_steps: int = 5,
        target_accept: float = 0.9,
        init_step_size: float = 0.1,
        adapt_gain: float = 0.5,
        step_size_jitter: float = 0.5,
    ):
        self.num_leapfrog = check_positive_int(num_leapfrog, "num_leapfrog")
        self.num_transitions = check_positive_int(num_transitions, "num_transitions")
        self.num_m_steps = check_positive_int(num_m_steps, "num_m_steps")
        self.target_accept = check_positive_float(target_accept, "target_accept")
        if not self.target_accept < 1:
            raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
        self.init_step_size = check_positive_float(init_step_size, "init_step_size")
        self.adapt_gain = check_positive_float(adapt_gain, "adapt_gain", allow_zero=True)
        self.step_size_jitter = check_positive_float(
            step_size_jitter, "step_size_jitter", allow_zero=True
        )
        if self.step_size_jitter >= 1:
            raise ValueError(f"step_size_jitter must be in [0, 1), got {step_size_jitter}")

    def settings(self) -> dict:
        return {k: getattr(self, k) for k in MCEM_OPTIONS}

    def bind(self, program: TrainingProgram, fast: str = "auto") -> BoundObjective:
        check_choice(fast, "fast", FAST_MODES)
        return MonteCarloEMObjective(program, self, fast)


class MonteCarloEMObjective(BoundObjective):
    """Monte Carlo EM updates (Appendix E) on a :class:`~pyro_aevb.poutine.TrainingProgram`
    whose model has local latents only; see :class:`MonteCarloEM` for the options. For a
    :class:`~pyro_aevb.models.VAE` only the decoder is trained (the encoder is unused) and the
    potential is evaluated directly on its networks."""

    path = "mcem"
    has_bound = False

    def __init__(self, program: TrainingProgram, options: MonteCarloEM, fast: str = "auto"):
        super().__init__(program)
        self.options = options
        vae = getattr(program.model, "__self__", None)
        self.vae = vae if type(vae) is VAE and program.plate_name == "data" else None
        check_choice(fast, "fast", FAST_MODES)
        self.direct = fast != "off" and self.vae is not None
        self.fast = fast
        if self.direct:
            self.path_reason = "direct VAE arithmetic"
        elif fast == "off":
            self.path_reason = "Pyro traces: fast='off'"
        else:
            self.path_reason = (
                "E-step potential recorded once and replayed"
                + (" (required by fast='on')" if fast == "on" else " where the model allows")
                + ", M-step on Pyro traces"
            )
        self.chains: torch.Tensor | None = None  # (N, D) persistent unconstrained positions
        self.step_size: torch.Tensor | None = None  # (N,)
        self.layout = None
        self._accept_sum = 0.0
        self._accept_count = 0

    def setup(self, x: torch.Tensor) -> None:
        self.program.check(x)
        prepared = PerDatapointProgram(
            self.program.model, None, x, plate_name=self.program.plate_name
        )
        if prepared.global_names:
            raise ValueError(
                f"Monte Carlo EM samples only local latents, but the model has global latent "
                f"sites {list(prepared.global_names)} outside the plate "
                f"'{self.program.plate_name}'; use AEVB (with a guide for them)"
            )
        self.prepared = prepared
        self.layout = prepared.layout
        if self.fast == "on" and not self.direct:
            # records the potential on these rows: a model that cannot be is refused here
            try:
                make_potential(prepared, x, fast="on")
            except ValueError as err:
                raise ValueError(f"Monte Carlo EM's E-step: {err}") from err
        if self.vae is not None:
            modules = [self.vae.decoder]
            self.params = collect_params([], modules=modules)
        else:
            self.params = self.program.collect_params(x, programs="model")

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        # the acceptance totals since the last record too: a run resumed between two
        # evaluations records the same acceptance rate as one that was not interrupted
        return {
            "chains": self.chains,
            "step_size": self.step_size,
            "accept_sum": self._accept_sum,
            "accept_count": self._accept_count,
        }

    def load_state_dict(self, state: dict) -> None:
        unknown = sorted(set(state) - {"chains", "step_size", "accept_sum", "accept_count"})
        if unknown:
            raise ValueError(f"the checkpoint's MCEM state has unknown entries {unknown}")
        chains, step_size = state.get("chains"), state.get("step_size")
        n, d = self.program.num_data, self.layout.dim
        if (chains is None) != (step_size is None):
            raise ValueError("the checkpoint's MCEM state holds chains or step sizes, not both")
        if chains is not None:
            if not isinstance(chains, torch.Tensor) or chains.shape != (n, d):
                raise ValueError(
                    f"the checkpoint's MCEM chains must be a tensor of shape ({n}, {d}) (one "
                    f"per training point), got {_describe(chains)}"
                )
            if not isinstance(step_size, torch.Tensor) or step_size.shape != (n,):
                raise ValueError(
                    f"the checkpoint's MCEM step sizes must be a tensor of shape ({n},), got "
                    f"{_describe(step_size)}"
                )
            if not bool(torch.isfinite(chains).all()):
                raise ValueError("the checkpoint's MCEM chains are not all finite")
            if not bool((torch.isfinite(step_size) & (step_size > 0)).all()):
                raise ValueError("the checkpoint's MCEM step sizes are not all finite and > 0")
        accept_sum, accept_count = state.get("accept_sum", 0.0), state.get("accept_count", 0)
        if not isinstance(accept_sum, float | int) or not isinstance(accept_count, int):
            raise ValueError("the checkpoint's MCEM acceptance totals must be numbers")
        self.chains, self.step_size = chains, step_size
        self._accept_sum, self._accept_count = float(accept_sum), int(accept_count)

    def diagnostics(self) -> dict:
        """Mean acceptance probability since the last call and mean step size."""
        out = {}
        if self._accept_count:
            out["accept_prob"] = self._accept_sum / self._accept_count
            out["step_size"] = float(self.step_size.mean())
        self._accept_sum, self._accept_count = 0.0, 0
        return out

    # ------------------------------------------------------------------ the two steps
    def _potential_fn(self, x: torch.Tensor):
        """``U_i(u_i) = -log p(x_i, u_i)``, a function ``(M, D) -> (M,)``."""
        if self.direct:
            vae = self.vae

            def potential(z):
                return -vae.log_joint(x, z)

            return potential
        # recorded once (compiled) and replayed at every E-step, unless fast="off"
        return make_potential(self.prepared, x, fast="off" if self.fast == "off" else "auto")

    def _check_recorded(self, potential) -> None:
        """With ``fast="on"``, refuse a potential that fell back to tracing the model."""
        if self.fast == "on" and getattr(potential, "path", None) == "traced":
            raise ValueError(
                f"Monte Carlo EM's E-step: fast='on' but its potential is "
                f"{potential.path_reason}; use fast='auto' to run it traced"
            )

    def _init_chains(self, x: torch.Tensor) -> None:
        # Chains start from the prior of every local site (through its transform): the same
        # draw the model's own prior would make.
        num_data = self.program.num_data
        with torch.no_grad(), poutine.block():
            rows = x[:1].expand(num_data, *x.shape[1:])
            trace = poutine.trace(self.prepared.model).get_trace(rows)
        values = {n: trace.nodes[n]["value"] for n in self.layout.names}
        with torch.no_grad():
            flat = flatten_in_model(self.prepared.model, rows, self.layout, values)
        self.chains = flat.to(x.dtype)
        self.step_size = torch.full(
            (num_data,), self.options.init_step_size, dtype=x.dtype, device=x.device
        )

    def e_step(self, x: torch.Tensor, idx: torch.Tensor, adapt: bool = True) -> torch.Tensor:
        """Advance the chains of rows ``idx`` (data ``x``); returns their positions ``(M, D)``."""
        opt = self.options
        if self.chains.device != x.device:  # chains from a checkpoint of another device
            self.chains, self.step_size = self.chains.to(x.device), self.step_size.to(x.device)
        potential = self._potential_fn(x)
        state = hmc.init(potential, self.chains[idx])
        self._check_recorded(potential)  # recorded (or not) at its first evaluation
        eps = self.step_size[idx]
        for _ in range(opt.num_transitions):
            state, info = hmc.step(
                state,
                potential,
                step_size=eps,
                num_steps=opt.num_leapfrog,
                step_size_jitter=opt.step_size_jitter,
            )
            if adapt and opt.adapt_gain:
                accept = torch.nan_to_num(info.accept_prob, nan=0.0)
                eps = (eps.log() + opt.adapt_gain * (accept - opt.target_accept)).exp()
            self._accept_sum += float(info.accept_prob.nan_to_num(0.0).mean())
            self._accept_count += 1
        self._check_recorded(potential)
        self.chains[idx] = state.position
        self.step_size[idx] = eps
        return state.position

    def loss_and_grads(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """M-step loss ``-(N/M) sum_i log p(x_i, z_i) - log p(theta)`` and its theta-gradient,
        at the unconstrained chain positions ``u`` ``(M, D)``."""
        self.zero_grad()
        num_data = self.program.num_data
        if self.direct:
            vae = self.vae
            loss = -(num_data / x.shape[0]) * vae.log_joint(x, u).sum()
            if vae.weight_prior_std is not None:
                loss = loss - vae.log_weight_prior()
        else:
            # z held fixed while theta moves: bounds that depend on theta do not move it
            with torch.no_grad():
                values = constrain_in_model(self.prepared.model, x, self.layout, u)[0]
            conditioned = poutine.condition(self.program.model_n, data=values)
            loss = -poutine.trace(conditioned).get_trace(x).log_prob_sum()
        # gradients of the trained parameters only: the loss also holds the VAE's unused
        # encoder (its weight prior), whose .grad would otherwise grow step after step
        trained = [p for p in self.params if p.requires_grad]
        grads = torch.autograd.grad(loss, trained, allow_unused=True)
        for p, g in zip(trained, grads, strict=True):
            p.grad = g
        return loss.detach()

    def train_step(self, x, idx, optimizer) -> float:
        """The E-step on the rows ``idx``, then the M-steps. A non-finite loss in any M-step,
        or an error in any (a non-finite gradient refused before its update, an invalid
        distribution argument), undoes the whole step (parameters, optimizer state, those
        rows' chains and step sizes, the acceptance totals) before the loss is returned or the
        error raised, so the trainer stops with the state before this minibatch."""
        if self.chains is None:
            self._init_chains(x)
        before = (
            self.chains[idx].clone(),
            self.step_size[idx].clone(),
            self._accept_sum,
            self._accept_count,
        )
        updated = None  # parameters and optimizer state before the first update
        applied = 0
        try:
            u = self.e_step(x, idx)
            loss = float("nan")
            for _ in range(self.options.num_m_steps):
                loss = self.loss_and_grads(x, u).item()
                if not math.isfinite(loss):
                    self._undo(idx, before, updated, optimizer)
                    return loss
                if updated is None:
                    updated = (
                        [p.detach().clone() for p in self.params],
                        copy.deepcopy(optimizer.state_dict()),
                    )
                optimizer.step()
                applied += 1
        except Exception:
            self._undo(idx, before, updated, optimizer)
            self.failed_after_update = applied > 0
            raise
        return loss

    def _undo(self, idx, before, updated, optimizer) -> None:
        chains, step_size, self._accept_sum, self._accept_count = before
        self.chains[idx], self.step_size[idx] = chains, step_size
        if updated is not None:
            params, opt_state = updated
            with torch.no_grad():
                for p, value in zip(self.params, params, strict=True):
                    p.copy_(value)
            optimizer.load_state_dict(opt_state)

    def bound(self, x):
        raise NotImplementedError("Monte Carlo EM has no encoder, so no per-datapoint bound")
