r"""One entry point for per-datapoint marginal likelihoods ``log p(x_i)``.

Example::

    result = log_marginal(vae.model, vae.guide, x_test[:1000], "iwae", seed=0,
                          num_particles=5000)
    result.estimate.shape, result.stderr.shape   # (1000,), (1000,)
    print(result.summary())
    json.dump(result.to_dict(), f)

Methods (their options are keyword arguments, listed in :data:`METHOD_OPTIONS`):

========== ==================================================== ===========================
method     estimator                                            bias
========== ==================================================== ===========================
elbo       ``L_i`` (estimator A or B, eq. 6/7), the VAE bound   ``-KL(q || posterior)``
iwae       importance sampling with the guide, K proposals      lower bound, -> 0 as K grows
appendix_d the paper's HMC + density-estimator estimator        small, upward (Jensen);
                                                                downward when the chains
                                                                miss part of the posterior
ais        annealed importance sampling with HMC                lower bound, -> 0 as T grows
bdmc       forward AIS + reverse AIS from exact samples         sandwich (simulated data)
========== ==================================================== ===========================

A standard error is only as good as the draws behind it. When one importance weight (IWAE)
or one AIS chain carries the mean, the delta-method error reads about 1 nat whatever the
true error; such datapoints are named in a logged warning (fewer than 2 effective weights or
chains, or a weight Pareto ``k`` above 0.7), as Appendix D's are for R-hat, acceptance and
``k``. Appendix D's estimate averages ``q / p(x, z)`` over the posterior draws: a sampler
that never visits a mode holding a share ``m`` of the posterior mass (one chain on a bimodal
posterior) gives ``log p(x) + log(1 - m)``, too low, with a small error bar; only several
chains (``num_chains >= 2``: R-hat) or AIS reveal it.

Each returns a :class:`~pyro_aevb.evaluate.result.LogMarginalResult` with per-datapoint
estimates and Monte Carlo standard errors. Randomness is explicit: ``seed`` (an int, or a
``torch.Generator`` from which one is drawn) seeds a private generator for the HMC moves and,
inside :func:`torch.random.fork_rng`, torch's global RNG for the draws Pyro makes (guide and
prior samples), so a call is reproducible and leaves the caller's RNG state untouched.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import pyro.poutine as poutine
import torch

from ..device import fork_rng, make_generator, place
from ..infer.per_datapoint import check_per_datapoint
from ..mcmc.potential import check_rows_replicate
from ..poutine import PerDatapointProgram, latent_sites, plate_frame
from ..poutine.params import buffers_kept
from ..train.distributed import resolve_distributed
from ..validation import check_choice, check_data, check_positive_int, check_seed
from .ais import INITS, SCHEDULES, ais, bdmc
from .appendix_d import DENSITIES, SAMPLERS, appendix_d, default_init_particles
from .iwae import elbo_with_stderr, iwae
from .kept_blocks import evaluation_key, read_kept_blocks, write_kept_blocks
from .result import LogMarginalResult, warn_non_finite
from .sharded import estimate_in_blocks

logger = logging.getLogger("pyro_aevb")

__all__ = ["log_marginal", "METHODS", "METHOD_OPTIONS"]

METHODS = ("elbo", "iwae", "appendix_d", "ais", "bdmc")

#: Keyword options of each method with their defaults (``None``: chosen from the inputs).
METHOD_OPTIONS: dict[str, dict] = {
    "elbo": {"estimator": "B", "num_particles": 100},
    "iwae": {"num_particles": 5000, "chunk_size": None, "vectorize": True},
    "appendix_d": {
        "num_samples": 50,
        "num_chains": 1,
        "num_warmup": 200,
        "num_steps": 4,
        "target_accept": 0.9,
        "density": "gaussian",
        "fit_fraction": None,
        "split": "within",
        "sampler": "hmc",
        "stderr": "ess",
        "adapt_mass": True,
        "step_size_jitter": 0.5,
        "bandwidths": None,
        "init_particles": None,
        "fast": "auto",
    },
    "ais": {
        "num_chains": 16,
        "num_temps": 500,
        "num_leapfrog": 5,
        "init": None,
        "schedule": "sigmoid",
        "target_accept": 0.8,
        "pilot_chains": 4,
        "fast": "auto",
    },
}
METHOD_OPTIONS["bdmc"] = {**METHOD_OPTIONS["ais"], "z": None}


def _resolve_seed(seed) -> int:
    if isinstance(seed, torch.Generator):
        return int(torch.randint(0, 2**62, (1,), generator=seed))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or a torch.Generator, got {seed!r}")
    return check_seed(seed)


def _program_for(method, model, guide, x, plate_name, global_values, options):
    """The model/guide pair prepared once for the chosen estimator. For BDMC on data from
    :func:`~pyro_aevb.evaluate.ais.simulate_data`, ``z`` also holds the globals the data was
    simulated with: the program is conditioned on those, and ``z`` keeps the local latents."""
    if isinstance(model, PerDatapointProgram):
        return model
    z = options.get("z")
    if method == "bdmc" and isinstance(z, dict) and global_values is None:
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(model).get_trace(x)
        local = {n for n, s in latent_sites(trace).items() if plate_frame(s, plate_name)}
        globals_in_z = {n: v for n, v in z.items() if n in latent_sites(trace) and n not in local}
        if globals_in_z:
            global_values = globals_in_z
            options["z"] = {n: v for n, v in z.items() if n not in globals_in_z}
    return PerDatapointProgram(model, guide, x, plate_name=plate_name, global_values=global_values)


#: Options of Appendix D's batched sampler that Pyro's samplers do not take.
_BATCHED_SAMPLER_ONLY = {
    "pyro_nuts": ("step_size_jitter", "fast", "num_steps"),
    "pyro_hmc": ("step_size_jitter", "fast"),
}


def _options(method: str, given: dict) -> dict:
    allowed = METHOD_OPTIONS[method]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown} for method='{method}'; its options are {sorted(allowed)}"
        )
    ignored = [k for k in _BATCHED_SAMPLER_ONLY.get(given.get("sampler"), ()) if k in given]
    if ignored:
        raise ValueError(
            f"option(s) {ignored} do not apply to sampler='{given['sampler']}' (Pyro's "
            f"{given['sampler'].removeprefix('pyro_').upper()} kernel on the traced model"
            f"{', which chooses its own trajectory lengths' if 'num_steps' in ignored else ''}"
            f"); leave them out, or use sampler='hmc'"
        )
    return {**allowed, **given}


def log_marginal(
    model: Callable,
    guide: Callable | None,
    x: torch.Tensor,
    method: str = "iwae",
    *,
    seed: int | torch.Generator = 0,
    plate_name: str = "data",
    global_values: dict | None = None,
    block_size: int | None = None,
    distributed: bool | None = None,
    device=None,
    dtype=None,
    keep_blocks: str | os.PathLike | None = None,
    **method_options,
) -> LogMarginalResult:
    """Estimate ``log p(x_i)`` for every row of ``x``.

    Parameters
    ----------
    model : callable or PerDatapointProgram
        Pyro model called as ``model(x)`` (or a prepared
        :class:`~pyro_aevb.poutine.PerDatapointProgram`, whose guide is then used), with every
        per-datapoint latent inside
        ``pyro.plate(plate_name, len(x))``. Sites outside the plate that are not latent (e.g.
        the VAE's ``"weight_prior"`` factor) are not part of ``log p(x_i)`` and are left out.
        Global latents (outside the plate) are conditioned on ``global_values`` or the guide's
        point estimate, so the result is ``log p(x_i | g)``, and the values used are in
        ``result.settings["globals_conditioned_on"]``. For the paper's VAE pass ``vae.model``.
        Row ``i``'s density must depend on row ``i`` alone, not on its position in ``x`` or
        on ``len(x)`` (a covariate ``torch.arange(len(x))``): the estimators run the model on
        copies of the rows stacked along the plate (particles, chains), as minibatch training
        runs it on shuffled rows; pass such a covariate as data (a column of ``x``).
    guide : callable or None
        Pyro guide ``guide(x)`` over the same latents (the encoder). Required for ``"elbo"``
        and ``"iwae"`` and for AIS/BDMC started from the encoder; optional for
        ``"appendix_d"`` (chains then start from the prior).
    x : torch.Tensor
        ``(batch, *event_shape)`` floating, finite observations (flat rows or images).
    method : {"elbo", "iwae", "appendix_d", "ais", "bdmc"}
        The estimator; see :data:`METHOD_OPTIONS` for each one's options and defaults.
    seed : int or torch.Generator
        Makes the result reproducible (see the module docstring).
    plate_name : str
        Name of the data plate.
    global_values : dict, optional
        Values of the model's global latents to condition on (see
        :class:`~pyro_aevb.poutine.PerDatapointProgram`).
    block_size : int, optional
        Estimate blocks of this many consecutive rows one by one, block ``k`` seeded with
        ``block_seed(seed, k)`` (:mod:`pyro_aevb.evaluate.sharded`); needed under
        ``torch.distributed``, where the ranks share the blocks and the per-datapoint results
        are gathered in order: the same numbers as one process with the same ``block_size``.
        The merged result's tensors are on the CPU. Default: all rows at once, seeded with
        ``seed``.
    distributed : bool, optional
        ``None`` (default): share the blocks across the ranks of an initialised process group
        of several ranks (every rank calls ``log_marginal`` with the same arguments and gets
        the whole result); ``False``: compute everything in this process.
    device, dtype : optional
        Where and in which precision to compute: ``x`` and the modules owning the programs
        (``vae`` for ``vae.model``) are moved there in place; the HMC generator is created
        there. Default: where the modules are. Draws on a GPU differ from those on a CPU.
    keep_blocks : path, optional
        With ``block_size``, in one process: keep the finished blocks' results in this file
        (written after each block); a call for the same evaluation estimates only the blocks
        missing from it, with the result of an uninterrupted call
        (:mod:`~pyro_aevb.evaluate.kept_blocks`). The file is left for the caller to remove.
    **method_options
        ``elbo``: ``estimator`` ("A"/"B"), ``num_particles``.
        ``iwae``: ``num_particles`` (K), ``chunk_size``, ``vectorize``.
        ``appendix_d``: ``num_samples`` (per chain), ``split`` ("within": split by
        ``fit_fraction``, default 0.5; "across": each chain evaluated under a ``q`` fitted
        to the other chains, needs ``num_chains >= 2``),
        ``num_chains``, ``num_warmup``, ``num_steps``, ``target_accept``, ``density``
        ("gaussian"/"kde"), ``sampler`` ("hmc"/"pyro_nuts"/"pyro_hmc"), ``stderr``
        ("ess"/"iid"), ``adapt_mass``, ``step_size_jitter``, ``bandwidths``,
        ``init_particles`` (SIR proposals per chain for the start; 1 from a guide, 1000
        from the prior by default), ``fast`` (the potential: ``"auto"`` hand-derived for
        the paper's VAE or recorded once, ``"off"`` traced at every gradient; see
        :func:`~pyro_aevb.mcmc.potentials.make_potential`).
        ``ais``/``bdmc``: ``num_chains``, ``num_temps``, ``num_leapfrog``, ``init``
        ("encoder" if a guide is given, else "prior"), ``schedule``, ``target_accept``,
        ``pilot_chains``, ``fast`` (as for ``appendix_d``); ``bdmc`` also needs ``z``,
        exact posterior samples for ``x`` (the latents ``x`` was simulated with, e.g. from
        :func:`~pyro_aevb.evaluate.ais.simulate_data`).

    Returns
    -------
    LogMarginalResult
        ``estimate`` and ``stderr`` of shape ``(batch,)``; for ``"bdmc"`` ``estimate`` is the
        forward (lower) bound and ``upper``/``upper_stderr`` the reverse (upper) bound.

    Raises
    ------
    ValueError
        Unknown ``method``, bad ``x`` (shape, dtype, NaN), an option out of range (e.g.
        ``num_particles < 1``), a global latent, or a method that needs a guide without one.
    TypeError
        An option the method does not take.
    """
    check_choice(method, "method", METHODS)
    x = check_data(x, "x")
    options = _options(method, method_options)
    if method in ("elbo", "iwae") and guide is None and not isinstance(model, PerDatapointProgram):
        raise ValueError(f"method='{method}' needs a guide (the proposal q(z|x)); got None")
    int_seed = _resolve_seed(seed)
    x, device = place(x, (model, guide), device=device, dtype=dtype)

    def estimate(rows: torch.Tensor, row_seed: int, row_options: dict) -> LogMarginalResult:
        result = _estimate(
            model, guide, rows, method, row_seed, plate_name, global_values, row_options, device
        )
        if isinstance(seed, torch.Generator):
            result.settings["seed_from_generator"] = True
        return result

    if keep_blocks is None:
        if block_size is None and not resolve_distributed(distributed):
            return estimate(x, int_seed, options)
        return estimate_in_blocks(
            estimate, x, options, seed=int_seed, block_size=block_size, distributed=distributed
        )
    if block_size is None or resolve_distributed(distributed):
        raise ValueError(
            "keep_blocks needs block_size= (the blocks to keep) and one process (the ranks of "
            "a distributed evaluation share the blocks)"
        )
    block_size = check_positive_int(block_size, "block_size")
    key = evaluation_key(
        model, guide, x, method=method, options=options, seed=int_seed, block_size=block_size,
        plate_name=plate_name, global_values=global_values, device=device,
    )  # fmt: skip
    kept = read_kept_blocks(keep_blocks, key)
    if kept:
        logger.info("continuing from %d finished block(s) kept in %s", len(kept), keep_blocks)
    finished = dict(kept)
    keeping = [True]

    def keep(k: int, result: LogMarginalResult, flagged: list) -> None:
        finished[k] = (result, flagged)
        if keeping[0]:
            keeping[0] = write_kept_blocks(keep_blocks, key, finished)

    return estimate_in_blocks(
        estimate, x, options, seed=int_seed, block_size=block_size, distributed=False,
        kept=kept, on_block=keep,
    )  # fmt: skip


def _estimate(
    model, guide, x, method, int_seed, plate_name, global_values, options, device
) -> LogMarginalResult:
    """One estimate on the rows ``x`` with the seed ``int_seed`` (see :func:`log_marginal`)."""
    options = dict(options)
    generator = make_generator(int_seed, device)
    with fork_rng():
        torch.manual_seed(int_seed)
        program = _program_for(method, model, guide, x, plate_name, global_values, options)
    check_rows_replicate(program, x)
    guide = program.guide
    if method in ("elbo", "iwae") and guide is None:
        raise ValueError(f"method='{method}' needs a guide (the proposal q(z|x)); got None")
    settings = {k: v for k, v in options.items() if k != "z"}
    settings.update({"seed": int_seed, **program.settings})
    upper = upper_stderr = None
    t_start = time.perf_counter()
    # modules left in train mode (warned about when the program was made) would update their
    # BatchNorm statistics at every evaluation: an estimate must not change the model
    with fork_rng(), buffers_kept(program.called_modules, discover=False):
        torch.manual_seed(int_seed)
        if method == "elbo":
            estimate, stderr = elbo_with_stderr(
                program,
                None,
                x,
                estimator=options["estimator"],
                num_particles=options["num_particles"],
            )
            warn_non_finite("elbo", estimate)
            diagnostics = {}
        elif method == "iwae":
            estimate, stderr, diagnostics = iwae(
                program,
                None,
                x,
                options["num_particles"],
                chunk_size=options["chunk_size"],
                vectorize=options["vectorize"],
            )
        elif method == "appendix_d":
            kwargs = dict(options)
            if kwargs["bandwidths"] is None:
                kwargs.pop("bandwidths")
            check_choice(kwargs["density"], "density", DENSITIES)
            check_choice(kwargs["sampler"], "sampler", SAMPLERS)
            if kwargs["init_particles"] is None:
                kwargs["init_particles"] = default_init_particles(program.guide)
                settings["init_particles"] = kwargs["init_particles"]
            if kwargs["split"] == "within" and kwargs["fit_fraction"] is None:
                settings["fit_fraction"] = 0.5  # the value used, in the settings recorded
            estimate, stderr, diagnostics = appendix_d(
                program,
                None,
                x,
                generator=generator,
                seed=int_seed,
                **kwargs,
            )
            if options["bandwidths"] is None:
                settings.pop("bandwidths")
        else:
            kwargs = dict(options)
            if kwargs["init"] is None:
                kwargs["init"] = "encoder" if guide is not None else "prior"
                settings["init"] = kwargs["init"]
            check_choice(kwargs["init"], "init", INITS)
            check_choice(kwargs["schedule"], "schedule", SCHEDULES)
            if method == "ais":
                res = ais(program, guide, x, generator=generator, **kwargs)
                estimate, stderr, diagnostics = res.estimate, res.stderr, res.diagnostics
            else:
                z = kwargs.pop("z")
                if z is None:
                    raise ValueError(
                        "method='bdmc' needs z=, one exact posterior sample per datapoint: the "
                        "latents x was simulated with (see pyro_aevb.evaluate.simulate_data); "
                        "BDMC only sandwiches log p(x) on data simulated from the model"
                    )
                forward, reverse = bdmc(program, guide, x, z, generator=generator, **kwargs)
                estimate, stderr = forward.estimate, forward.stderr
                upper, upper_stderr = reverse.estimate, reverse.stderr
                diagnostics = {
                    **forward.diagnostics,
                    "reverse_accept_rate": reverse.accept_rate,
                    "reverse_log_weight_std": reverse.diagnostics["log_weight_std"],
                    "reverse_ess": reverse.diagnostics["ess"],
                    "gap": upper - estimate,
                }
    seconds = time.perf_counter() - t_start
    estimate = check_per_datapoint(estimate, x.shape[0], f"log_marginal(method='{method}')")
    return LogMarginalResult(
        estimate=estimate.detach(),
        stderr=stderr.detach(),
        method=method,
        settings=settings,
        diagnostics=diagnostics,
        seconds=seconds,
        upper=None if upper is None else upper.detach(),
        upper_stderr=None if upper_stderr is None else upper_stderr.detach(),
    )
