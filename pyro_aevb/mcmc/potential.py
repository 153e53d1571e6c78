r"""Per-datapoint log-joint and potential energy of a Pyro model with local latents.

For a model whose per-datapoint latents ``z_i`` live inside ``pyro.plate(plate_name)``, the
log-joint factorises over datapoints, and each datapoint's posterior can be sampled on its
own. In the unconstrained coordinates ``u_i`` of every latent site (``z = T(u)`` with
``T = biject_to(site support)``, the transform Pyro's HMC uses) the per-datapoint log-joint is::

    log p(x_i, u_i) = log p(z_i = T(u_i)) + log |det dT/du (u_i)| + log p(x_i | z_i)

and the potential energy is ``U_i(u_i) = -log p(x_i, u_i)``. Since ``U = sum_i U_i`` with each
``U_i`` depending on ``u_i`` only, ``grad_u sum_i U_i`` is exactly the per-datapoint gradient
``(dU_i/du_i)_i``: one autograd call on the summed potential gives every chain's gradient.

What is summed:

* local latent sites (inside the data plate), with their Jacobian; global latents are
  conditioned on a point estimate (:class:`~pyro_aevb.poutine.PerDatapointProgram`), so the
  potential is that of ``p(z_i | x_i, g)``;
* observed sites and factors inside the data plate;
* **not** sites outside the data plate that are not latent (such as the VAE's global
  ``"weight_prior"`` factor): they do not depend on any ``z_i`` and are not part of
  ``log p(x_i)``.

**Potentials that compute their own gradient.** Tracing the model at every gradient costs
Pyro's per-site work and an autograd graph each time; :mod:`~pyro_aevb.mcmc.compiled_potential`
records that arithmetic once and :mod:`~pyro_aevb.mcmc.vae_potential` derives the paper's VAE
by hand (:func:`~pyro_aevb.mcmc.potentials.make_potential` picks one). Such a potential sets
:attr:`PerDatapointPotential.provides_grad` and computes ``potential_and_grad(u,
need_value)`` itself; :func:`value_and_grad`, the HMC kernel and AIS use it instead of
autograd. The split :meth:`PerDatapointPotential.parts_and_grads` (prior and likelihood
terms with their gradients) and :meth:`PerDatapointPotential.log_guide_and_grad` are what
annealed potentials combine.

Several latent sites (of any event shape) are flattened into one ``(n, D)`` matrix by a
:class:`LatentLayout`, datapoint-major: row ``r`` holds every unconstrained latent of one
chain. Several chains per datapoint are handled by replicating the rows of ``x``: row
``c * B + i`` of the flattened ``(C * B, D)`` position is chain ``c`` of datapoint ``i``.
The model is called as ``model(x_rep)``, so it must take the observations as its only
argument (bind anything else with :func:`functools.partial` or a lambda) and size its data
plate from ``x``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pyro
import pyro.poutine as poutine
import torch

from ..device import fork_rng
from ..poutine import (
    UNCONSTRAINED_OF,
    ConditionAuxiliary,
    LatentLayout,
    PerDatapointProgram,
    UnconstrainedCondition,
    as_program,
    constrain_in_model,
    flatten_in_model,
    is_auxiliary,
    latent_sites,
    plate_frame,
    replicate_rows,
    require_plate,
    sample_sites,
    sum_to_plate,
)
from ..poutine.python_state import PythonState
from ..validation import check_data, check_positive_int

__all__ = [
    "PerDatapointPotential",
    "check_rows_replicate",
    "log_density_per_datapoint",
    "value_and_grad",
]


def _site_sum(value: torch.Tensor, site: dict, plate_name: str, n: int) -> torch.Tensor:
    term = sum_to_plate(value, site, plate_name)
    return term.expand(n) if term.shape[0] != n else term


def log_density_per_datapoint(
    fn: Callable,
    x: torch.Tensor,
    layout: LatentLayout,
    values: dict[str, torch.Tensor] | None = None,
    log_jac: dict[str, torch.Tensor] | None = None,
    include_observed: bool = True,
    position: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``fn(x)`` with the latent sites fixed; per-datapoint log densities.

    Two uses: a model at an unconstrained ``position`` alone (``values`` ``None``: each
    latent is set to ``T(u)`` where the model runs it, its Jacobian included, see
    :class:`~pyro_aevb.poutine.UnconstrainedCondition`), or a program at constrained
    ``values`` (with ``log_jac`` to add, and for a guide ``position`` for its auxiliaries).

    Parameters
    ----------
    fn : callable
        A Pyro model or guide, called as ``fn(x)``.
    x : torch.Tensor
        ``(n, ...)`` observations, one row per chain.
    layout : LatentLayout
        The latent sites.
    values : dict, optional
        Constrained values of every latent site, batch ``n`` along the data plate; ``None``
        to take them from ``position`` inside the run.
    log_jac : dict, optional
        Per-site ``log|det dT/du|`` to add to the latent terms (unconstrained coordinates).
    include_observed : bool
        Sum the observed sites and factors in the data plate too (False for a guide).
    position : torch.Tensor, optional
        ``(n, D)``: the latents in unconstrained coordinates. With ``values``, given for a
        guide, whose auxiliary sites (:mod:`~pyro_aevb.poutine.auxiliary`) are then set from
        it (:class:`~pyro_aevb.poutine.ConditionAuxiliary`) and counted in ``log_latent``.

    Returns
    -------
    (log_latent, log_observed) : tuple of torch.Tensor
        Each ``(n,)``: the latent sites' ``log p(z)`` (+ Jacobian) and the observed sites'
        ``log p(x | z)``. Sites outside the data plate that are not latent are left out.
    """
    n = x.shape[0]
    plate_name = layout.plate_name
    cond = None
    if values is None:
        at = UnconstrainedCondition(layout, position)
        trace = poutine.trace(at(fn)).get_trace(x)
        values, log_jac = at.values, at.log_jac
    elif position is None:
        trace = poutine.trace(poutine.condition(fn, data=values)).get_trace(x)
    else:
        cond = ConditionAuxiliary(layout, position, values)
        trace = poutine.trace(cond(fn)).get_trace(x)
    log_latent = log_obs = None
    seen = set()
    for name, site in sample_sites(trace):
        if cond is not None and name in cond.auxiliary:
            # log q(u) of the joint draw the latents came from; their Deltas add -log|J|
            term = _site_sum(site["fn"].log_prob(site["value"]), site, plate_name, n)
            log_latent = term if log_latent is None else log_latent + term
            continue
        if cond is not None and is_auxiliary(site):
            if plate_frame(site, plate_name) is None:
                continue  # it parametrises global latents, which are conditioned on
            raise ValueError(
                f"the guide's auxiliary site '{name}' does not declare which latents it "
                f"parametrises (infer={{'is_auxiliary': True, '{UNCONSTRAINED_OF}': "
                f"(site names...)}}), so q(z | x) cannot be evaluated at given latents "
                f"(AIS from the encoder, HMC starting points); the bound and IWAE work "
                f"without it"
            )
        if name in values:
            seen.add(name)
            lp = site["fn"].log_prob(site["value"])
            if log_jac is not None:
                lp = lp + log_jac[name]
            term = _site_sum(lp, site, plate_name, n)
            log_latent = term if log_latent is None else log_latent + term
        elif not site["is_observed"]:
            raise ValueError(
                f"site '{name}' was sampled but is not one of the latent sites "
                f"{list(layout.names)} found when the model was first traced; models with "
                f"stochastic control flow or guide-only (auxiliary) sites are not supported"
            )
        elif include_observed and plate_frame(site, plate_name) is not None:
            term = _site_sum(site["fn"].log_prob(site["value"]), site, plate_name, n)
            log_obs = term if log_obs is None else log_obs + term
    missing = set(values) - seen
    if missing:
        raise ValueError(f"latent sites {sorted(missing)} did not appear when running {fn!r}")
    if log_obs is None:
        log_obs = torch.zeros_like(log_latent)
    return log_latent, log_obs


class PerDatapointPotential:
    r"""Per-datapoint log-joint ``log p(x_i, u_i)`` and potential ``U_i = -log p(x_i, u_i)``.

    Parameters
    ----------
    model : callable
        Pyro model called as ``model(x)``, latents inside ``pyro.plate(plate_name)``.
    x : torch.Tensor
        ``(B, data_dim)`` observations.
    num_chains : int
        C, chains per datapoint; positions then have ``n = C * B`` rows, chain-major.
    plate_name : str
        Name of the data plate.
    guide : callable, optional
        Pyro guide ``guide(x)`` over the same latent sites, used for :meth:`log_guide` and
        :meth:`sample_guide` (AIS from the encoder, initial positions).
    validate : bool
        Keep Pyro's distribution argument validation on during evaluations. Off by default,
        as in :class:`pyro.infer.MCMC`: the first trace (which builds the layout) is always
        validated, and later evaluations only move ``z``.

    Attributes
    ----------
    layout : LatentLayout
        Flat layout of the latent sites; ``layout.dim`` is D.
    x_rep : torch.Tensor
        ``(C * B, data_dim)`` replicated observations.
    path : str
        How values and gradients are computed: ``"traced"`` (Pyro trace + autograd at every
        call, here), ``"compiled"`` or ``"vae"`` (subclasses).
    """

    #: Whether :meth:`potential_and_grad` computes the gradient without autograd (then the
    #: HMC kernel calls it directly, with ``need_value=False`` inside a trajectory).
    provides_grad = False
    path = "traced"
    path_reason = "the model traced by Pyro at every evaluation"

    def __init__(
        self,
        model: Callable | PerDatapointProgram,
        x: torch.Tensor,
        *,
        num_chains: int = 1,
        plate_name: str = "data",
        guide: Callable | None = None,
        validate: bool = False,
        global_values: dict | None = None,
    ):
        x = check_data(x, "x")
        program = as_program(model, guide, x, plate_name=plate_name, global_values=global_values)
        self.program = program
        self.model = program.model
        self.guide = program.guide
        self.plate_name = program.plate_name
        self.x = x
        self.batch_size = x.shape[0]
        self.num_chains = check_positive_int(num_chains, "num_chains")
        self.validate = validate
        self._x_rep = None
        self.layout: LatentLayout = program.layout
        self.dtype = program.dtype
        self._guide_cache = None
        self._guide_cache_key = None

    def with_chains(self, num_chains: int) -> PerDatapointPotential:
        """The same target with ``num_chains`` chains per datapoint (no re-preparation)."""
        return PerDatapointPotential(
            self.program, self.x, num_chains=num_chains, validate=self.validate
        )

    @property
    def dim(self) -> int:
        """D, the number of unconstrained latent coordinates per datapoint."""
        return self.layout.dim

    @property
    def num_rows(self) -> int:
        """n = C * B, the number of chains in total."""
        return self.num_chains * self.batch_size

    @property
    def x_rep(self) -> torch.Tensor:
        """``(C * B, ...)`` replicated observations (made on first use: potentials that
        never run the model on all rows at once never hold them)."""
        if self._x_rep is None:
            self._x_rep = replicate_rows(self.x, self.num_chains)
        return self._x_rep

    def _check_position(self, position: torch.Tensor) -> torch.Tensor:
        if not isinstance(position, torch.Tensor):
            raise TypeError(f"position must be a torch.Tensor, got {type(position).__name__}")
        expected = (self.num_rows, self.dim)
        if position.shape != expected:
            raise ValueError(
                f"position must have shape (num_chains * batch, D) = {expected}, got "
                f"{tuple(position.shape)}"
            )
        if position.dtype != self.dtype:
            raise TypeError(
                f"position has dtype {position.dtype} but the model's latents are "
                f"{self.dtype}; pass position.to({self.dtype})"
            )
        if position.device != self.x.device:
            raise ValueError(
                f"position is on {position.device} but the potential computes on "
                f"{self.x.device}; pass position.to('{self.x.device}')"
            )
        return position

    def log_joint_parts(self, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p(u_i) incl. Jacobian, log p(x_i | z_i))``, each ``(n,)``, at ``position``."""
        self._check_position(position)
        with poutine.block(), pyro.validation_enabled(self.validate):
            return log_density_per_datapoint(self.model, self.x_rep, self.layout, position=position)

    def log_joint(self, position: torch.Tensor) -> torch.Tensor:
        """``log p(x_i, u_i)`` in unconstrained coordinates, ``(n,)``."""
        log_prior, log_lik = self.log_joint_parts(position)
        return log_prior + log_lik

    def __call__(self, position: torch.Tensor) -> torch.Tensor:
        """Potential energy ``U_i = -log p(x_i, u_i)``, shape ``(n,)``."""
        return -self.log_joint(position)

    def potential_and_grad(self, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U (n,), dU/du (n, D))``, both detached."""
        return value_and_grad(self, self._check_position(position))

    def parts_and_grads(
        self, position: torch.Tensor, need_value: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """``(log p(u), log p(x | z), d log p(u)/du, d log p(x | z)/du)`` per row: each value
        ``(n,)`` (``None`` when ``need_value`` is false and the subclass can skip it), each
        gradient ``(n, D)``; ``log p(u)`` includes the Jacobian. Here by autograd on the
        traced model."""
        self._check_position(position)
        with torch.enable_grad():
            u = position.detach().requires_grad_(True)
            log_prior, log_lik = self.log_joint_parts(u)
            g_prior, g_lik = (
                torch.autograd.grad(t.sum(), u, retain_graph=True, allow_unused=True)[0]
                for t in (log_prior, log_lik)
            )
        g_prior = torch.zeros_like(u) if g_prior is None else g_prior
        g_lik = torch.zeros_like(u) if g_lik is None else g_lik
        return log_prior.detach(), log_lik.detach(), g_prior.detach(), g_lik.detach()

    def log_guide_and_grad(self, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log q(u | x) (n,), d log q/du (n, D))``; here by autograd on :meth:`log_guide`."""
        return value_and_grad(self.log_guide, self._check_position(position))

    def log_guide(self, position: torch.Tensor) -> torch.Tensor:
        """``log q(u_i | x_i)`` of the guide in unconstrained coordinates, ``(n,)``."""
        if self.guide is None:
            raise ValueError("log_guide needs a guide; pass guide= to PerDatapointPotential")
        self._check_position(position)
        with pyro.validation_enabled(self.validate):
            values, log_jac = constrain_in_model(self.model, self.x_rep, self.layout, position)
        cached = self._guide_site()
        if cached is not None:
            # one latent site: its distribution does not depend on the value it is evaluated
            # at, so the guide need not be re-run (AIS evaluates q at every leapfrog step)
            (name,) = self.layout.names
            lp = cached["fn"].log_prob(values[name]) + log_jac[name]
            return _site_sum(lp, cached, self.plate_name, self.num_rows)
        with poutine.block(), pyro.validation_enabled(self.validate):
            log_q, _ = log_density_per_datapoint(
                self.guide,
                self.x_rep,
                self.layout,
                values,
                log_jac,
                include_observed=False,
                position=position,
            )
        return log_q

    def _guide_site(self) -> dict | None:
        """The guide's trace site, if the guide has exactly the model's one latent site; made
        again when the guide's parameters or Python state changed (in place included)."""
        if len(self.layout.names) != 1:
            return None
        if self._guide_cache_key is None:
            self._guide_state = PythonState([self.program.raw_guide], self.program.called_modules)
        state = self._guide_state
        before = (state.snapshot(), state.tensor_versions())
        if before != self._guide_cache_key:
            self._guide_cache = None
            # fork the RNG: this throw-away draw must not shift the caller's random stream
            # built as every evaluation runs: validation as the potential's, so a position out
            # of the guide's support (a diverging trajectory) gives -inf/NaN (a rejected
            # move), not an error
            with poutine.block(), torch.no_grad(), fork_rng():
                with pyro.validation_enabled(self.validate):
                    trace = poutine.trace(self.guide).get_trace(self.x_rep)
            sites = list(latent_sites(trace).values())
            if len(sites) == 1 and sites[0]["name"] == self.layout.names[0]:
                self._guide_cache = sites[0]
            state.settle(before[0], state.snapshot())  # objects the guide rebuilds per run
            self._guide_cache_key = (state.snapshot(), state.tensor_versions())
        return self._guide_cache

    @torch.no_grad()
    def sample_guide(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One draw per chain from the guide: ``(position (n, D), log q(u | x) (n,))``.

        Uses Pyro's global RNG (seed it, e.g. with ``torch.random.fork_rng``).
        """
        if self.guide is None:
            raise ValueError("sample_guide needs a guide; pass guide= to PerDatapointPotential")
        with poutine.block(), self._on_replicated_rows("guide"):
            trace = poutine.trace(self.guide).get_trace(self.x_rep)
        require_plate(trace, self.plate_name, "guide")
        missing = [s for s in self.layout.names if s not in trace.nodes]
        if missing:
            raise ValueError(f"the guide has no site for the model's latent sites {missing}")
        values = {s: trace.nodes[s]["value"] for s in self.layout.names}
        position = self.flatten(values)
        return position, self.log_guide(position)

    @contextlib.contextmanager
    def _on_replicated_rows(self, what: str):
        """Name the cause when a program fails on the rows replicated once per chain: it holds
        something sized to the datapoints outside ``x`` (a guide's ``pyro.param`` of shape
        ``(len(x), ...)``, a per-row covariate bound with ``functools.partial``), which cannot
        serve ``num_chains * len(x)`` rows."""
        try:
            yield
        except (ValueError, RuntimeError) as err:
            if self.num_chains == 1:
                raise
            raise ValueError(
                f"the {what} failed on x replicated once per chain ({self.num_chains} chains x "
                f"{self.batch_size} datapoints = {self.num_rows} rows), as if it held something "
                f"sized to the datapoints outside x, which does not follow the replicated rows: "
                f"a pyro.param of shape (len(x), ...) in a guide (use an amortized guide, or "
                f"start from the prior: AIS init='prior'), or a per-row tensor given through "
                f"functools.partial or a closure, such as a covariate (pass it inside x, e.g. "
                f"torch.cat([x, covariate], -1), split again in the programs) "
                f"({type(err).__name__}: {str(err).splitlines()[0]})"
            ) from err

    @torch.no_grad()
    def sample_prior(self) -> torch.Tensor:
        """One draw per chain from the model's prior over the latents, ``(n, D)``."""
        with poutine.block(), self._on_replicated_rows("model"):
            trace = poutine.trace(self.model).get_trace(self.x_rep)
        return self.flatten({s: trace.nodes[s]["value"] for s in self.layout.names})

    @torch.no_grad()
    def flatten(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Constrained latents, one row per chain, -> unconstrained position ``(n, D)``; a
        site whose bounds are tensors is mapped through its support at these values."""
        return flatten_in_model(self.model, self.x_rep, self.layout, values)


def value_and_grad(
    fn: Callable[[torch.Tensor], torch.Tensor], position: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fn(u) (n,), d fn(u)_i / d u_i (n, D))`` for a per-row function ``fn``; detached.

    Valid because row ``i`` of ``fn(u)`` depends on row ``i`` of ``u`` only, so the gradient
    of the sum is the per-row gradient. A potential that computes its own gradient
    (``fn.provides_grad``) is asked for it instead of autograd.
    """
    if getattr(fn, "provides_grad", False):
        return fn.potential_and_grad(position)
    with torch.enable_grad():
        u = position.detach().requires_grad_(True)
        value = fn(u)
        (grad,) = torch.autograd.grad(value.sum(), u)
    return value.detach(), grad


def check_rows_replicate(program: PerDatapointProgram, x: torch.Tensor) -> None:
    """Raise ``ValueError`` if row ``i``'s log density changes when the rows of ``x`` are
    stacked twice, as the estimators stack them (particles, chains): the model then reads a
    row's position or the number of rows (``torch.arange(len(x))`` as a covariate), and every
    copy but the first would be another datapoint. One prior draw per row, evaluated on ``x``
    and on the stacked rows; the caller's RNG is left as it was. A model that fails on the
    draw is not judged here (the estimator meets the failure itself)."""
    one = PerDatapointPotential(program, x)
    try:
        with fork_rng(), torch.no_grad():
            torch.manual_seed(0)
            u = one.sample_prior()
            alone, again = one.log_joint(u), one.log_joint(u)
            stacked = one.with_chains(2).log_joint(u.repeat(2, 1)).reshape(2, -1)
    except (ValueError, RuntimeError):
        return
    finite = torch.isfinite(alone)
    rtol = 1e-4 if alone.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-9
    tol = rtol * alone.abs() + 1e-3
    if bool((finite & ~((again - alone).abs() <= tol)).any()):
        return  # a density that is random itself (dropout in training mode): not judged
    for copy in stacked:
        differs = finite & ~((copy - alone).abs() <= tol)
        if bool(differs.any()):
            i = int(differs.nonzero()[0])
            raise ValueError(
                f"the model's density of row {i} changes when the rows of x are stacked twice "
                f"({float(alone[i]):.6g} alone, {float(copy[i]):.6g} in a copy): it reads a "
                f"row's position or the number of rows (e.g. torch.arange(len(x)) as a "
                f"covariate). The estimators evaluate copies of the rows stacked along the "
                f"plate (particles, chains), as minibatch training runs the model on shuffled "
                f"rows: pass such a covariate inside x (a column, split again in the model)"
            )
