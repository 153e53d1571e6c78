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

The chains are part of the checkpoint, so MCEM runs resume exactly like AEVB runs. MCEM is not
online in the paper's sense: its state grows with ``N`` and every datapoint's chain must
mix, which is why it only runs on small training sets; the history's ``train_seconds`` per
training sample shows its cost next to AEVB's.
"""

from __future__ import annotations

import math

import pyro.poutine as poutine
import torch

from ..mcmc import hmc
from ..mcmc.potential import PerDatapointPotential
from ..models import VAE
from ..validation import check_positive_float, check_positive_int
from .objective import Objective

__all__ = ["MonteCarloEMObjective"]


class MonteCarloEMObjective(Objective):
    """Monte Carlo EM updates (Appendix E) for a Pyro model with local latents ``z``.

    Parameters
    ----------
    module : nn.Module
        Holds the parameters and a Pyro ``model(x, num_data)``; for a
        :class:`~pyro_aevb.models.VAE` only the decoder is trained (the encoder is unused)
        and the potential is evaluated directly on the decoder network.
    estimator, num_particles, fast :
        Accepted for a uniform trainer interface; MCEM has no bound to estimate.
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
    """

    path = "mcem"
    has_bound = False

    def __init__(
        self,
        module,
        estimator: str = "B",
        num_particles: int = 1,
        fast: str = "auto",
        *,
        num_leapfrog: int = 10,
        num_transitions: int = 1,
        num_m_steps: int = 5,
        target_accept: float = 0.9,
        init_step_size: float = 0.1,
        adapt_gain: float = 0.5,
        step_size_jitter: float = 0.5,
    ):
        super().__init__(module, estimator, num_particles)
        self.direct = fast != "off" and type(module) is VAE
        if isinstance(module, VAE):
            self.params = [p for p in module.decoder.parameters() if p.requires_grad]
        self.num_leapfrog = check_positive_int(num_leapfrog, "num_leapfrog")
        self.num_transitions = check_positive_int(num_transitions, "num_transitions")
        self.num_m_steps = check_positive_int(num_m_steps, "num_m_steps")
        self.target_accept = check_positive_float(target_accept, "target_accept")
        self.init_step_size = check_positive_float(init_step_size, "init_step_size")
        self.adapt_gain = check_positive_float(adapt_gain, "adapt_gain", allow_zero=True)
        self.step_size_jitter = check_positive_float(
            step_size_jitter, "step_size_jitter", allow_zero=True
        )
        self.chains: torch.Tensor | None = None  # (N, J) persistent positions
        self.step_size: torch.Tensor | None = None  # (N,)
        self._accept_sum = 0.0
        self._accept_count = 0

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"chains": self.chains, "step_size": self.step_size}

    def load_state_dict(self, state: dict) -> None:
        self.chains, self.step_size = state["chains"], state["step_size"]

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
        """``U_i(z_i) = -log p(x_i, z_i)``, a function ``(M, J) -> (M,)``."""
        if self.direct:
            vae: VAE = self.module
            const = 0.5 * vae.latent_dim * math.log(2 * math.pi)

            def potential(z):
                return 0.5 * (z * z).sum(-1) + const - vae.likelihood_dist(z).log_prob(x)

            return potential
        return PerDatapointPotential(self.module.model, x)

    def _init_chains(self, num_data: int, x: torch.Tensor) -> None:
        # Chains start from the prior: the same draw the model's own prior would make.
        if self.direct:
            dim = self.module.latent_dim
        else:
            dim = PerDatapointPotential(self.module.model, x[:1]).dim
        self.chains = torch.randn(num_data, dim, dtype=x.dtype)
        self.step_size = torch.full((num_data,), self.init_step_size, dtype=x.dtype)

    def e_step(self, x: torch.Tensor, idx: torch.Tensor, adapt: bool = True) -> torch.Tensor:
        """Advance the chains of rows ``idx`` (data ``x``); returns their positions ``(M, J)``."""
        potential = self._potential_fn(x)
        state = hmc.init(potential, self.chains[idx], self.step_size[idx])
        for _ in range(self.num_transitions):
            state, info = hmc.step(
                state,
                potential,
                num_steps=self.num_leapfrog,
                step_size_jitter=self.step_size_jitter,
            )
            if adapt and self.adapt_gain:
                accept = torch.nan_to_num(info.accept_prob, nan=0.0)
                log_eps = state.step_size.log() + self.adapt_gain * (accept - self.target_accept)
                state = state._replace(step_size=log_eps.exp())
            self._accept_sum += float(info.accept_prob.nan_to_num(0.0).mean())
            self._accept_count += 1
        self.chains[idx] = state.position
        self.step_size[idx] = state.step_size
        return state.position

    def loss_and_grads(self, x: torch.Tensor, num_data: int, z: torch.Tensor | None = None):
        """M-step loss ``-(N/M) sum_i log p(x_i, z_i) - log p(theta)`` and its theta-gradient."""
        for p in self.params:
            p.grad = None
        if self.direct:
            vae: VAE = self.module
            log_lik = vae.likelihood_dist(z).log_prob(x).sum()
            log_prior_z = -0.5 * (z * z).sum() - 0.5 * z.numel() * math.log(2 * math.pi)
            loss = -(num_data / x.shape[0]) * (log_lik + log_prior_z)
            if vae.weight_prior_std is not None:
                loss = loss - vae.log_weight_prior()
        else:
            conditioned = poutine.condition(self.module.model, data={"z": z})
            loss = -poutine.trace(conditioned).get_trace(x, num_data).log_prob_sum()
        loss.backward()
        return loss.detach()

    def train_step(self, x, idx, num_data, optimizer) -> float:
        if self.chains is None:
            self._init_chains(num_data, x)
        elif self.chains.shape[0] != num_data:
            raise ValueError(
                f"MCEM keeps one chain per training point: {self.chains.shape[0]} chains but "
                f"num_data={num_data}"
            )
        z = self.e_step(x, idx)
        loss = float("nan")
        for _ in range(self.num_m_steps):
            loss = self.loss_and_grads(x, num_data, z).item()
            if not math.isfinite(loss):
                return loss
            optimizer.step()
        return loss

    def bound(self, x):
        raise NotImplementedError("Monte Carlo EM has no encoder, so no per-datapoint bound")
