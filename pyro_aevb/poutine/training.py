r"""A model/guide pair bound to a data set of ``N`` rows, ready to be trained on minibatches.

:class:`TrainingProgram` is what every training objective works on: the user's programs as
written (a ``VAE``'s methods, Pyro's example VAE, any ``model(x)``/``guide(x)`` pair), bound to
the data set size by :func:`~pyro_aevb.poutine.scaling.bind_num_data`, the name of the data
plate, the modules that own the programs, and two checks made on the first minibatch before
any training step, by runs that leave the random stream and the modules' buffers as they
were: that the data plate stands for ``N`` rows of which the minibatch is the subsample
(:meth:`TrainingProgram.check`), and which parameters the pair trains
(:meth:`TrainingProgram.collect_params`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch import nn

from ..device import fork_rng
from .params import ProgramParams, buffers_kept, collect_params, owner_modules
from .plates import ProgramContractError, latent_sites, plate_frame
from .program import (
    _check_guide_matches,
    check_rows_stay_in_plate,
    first_trace_errors,
    trace_guide_and_model,
)
from .scaling import accepts_num_data, bind_num_data, check_minibatch_trace

__all__ = ["TrainingProgram"]


def _check_log_densities(trace, what: str) -> None:
    """Form each sample site's log-density as the ELBOs do (with its mask and scale), so that
    a mask or value that does not fit the site is an error naming the site at set-up, not a
    bare shape error at the first step."""
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        try:
            log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
            scale_and_mask(log_p, site["scale"], site["mask"])
        except (RuntimeError, ValueError) as err:
            batch = tuple(getattr(site["fn"], "batch_shape", ()))
            raise ProgramContractError(
                f"computing the log-density of the {what}'s site '{name}' (with its mask and "
                f"scale, as the ELBO does) failed: {type(err).__name__}: {err}. Its batch shape "
                f"is {batch}; a mask (poutine.mask, obs_mask) must broadcast to it"
            ) from err


class TrainingProgram:
    """``model``/``guide`` on minibatches of a data set of ``num_data`` rows.

    Parameters
    ----------
    model : callable
        Pyro model called as ``model(x)`` (or ``model(x, num_data=N)`` if it takes
        ``num_data``) on a minibatch ``x`` of shape ``(M, *event_shape)``.
    guide : callable or None
        Pyro guide, called the same way (``None`` for objectives without one, e.g. Monte
        Carlo EM).
    num_data : int
        N, the size of the training set.
    plate_name : str
        Name of the data plate.
    modules : sequence of nn.Module
        Modules whose parameters and buffers belong to the trained state, in addition to the
        owners of bound-method programs (found automatically).

    Attributes
    ----------
    model_n, guide_n : callable
        The programs bound to ``num_data``: call them on a minibatch.
    modules : list of nn.Module
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable | None,
        *,
        num_data: int,
        plate_name: str = "data",
        modules: Sequence[nn.Module] = (),
    ):
        if not callable(model):
            raise TypeError(f"model must be a callable Pyro program, got {type(model).__name__}")
        if guide is not None and not callable(guide):
            raise TypeError(f"guide must be a callable Pyro program, got {type(guide).__name__}")
        self.model, self.guide = model, guide
        self.num_data = num_data
        self.plate_name = plate_name
        self.model_n = bind_num_data(model, num_data, plate_name)
        self.guide_n = None if guide is None else bind_num_data(guide, num_data, plate_name)
        mods = list(modules)
        for m in owner_modules(model, *(() if guide is None else (guide,))):
            if all(m is not k for k in mods):
                mods.append(m)
        self.modules = mods
        #: Every ``nn.Module`` whose forward the programs ran in :meth:`check`, including
        #: those of plain-function programs (``pyro.module`` inside a function), whose
        #: buffers (BatchNorm statistics) the programs update.
        self.called_modules: list[nn.Module] = []

    @property
    def route(self) -> str:
        """How the programs learn N: ``"num_data"`` (their own keyword) or ``"plate scale"``."""
        return "num_data keyword" if accepts_num_data(self.model) else "data-plate scaling"

    def check(self, x: torch.Tensor) -> None:
        """Trace the programs once on the minibatch ``x`` and check the minibatch contract and
        that model and guide match (every model latent has a guide site, inside the data
        plate where the model's is; the guide has no site the model lacks).

        Raises ``ValueError`` naming the plate, the site and what to change. The RNG is
        forked, so this never shifts the training draws.
        """
        batch = x.shape[0]
        with first_trace_errors(x.shape, dtype=x.dtype), poutine.block(), torch.no_grad():
            with fork_rng(), buffers_kept(self.modules) as called:
                if self.guide_n is not None:
                    guide_trace, model_trace = trace_guide_and_model(self.model_n, self.guide_n, x)
                else:
                    guide_trace, model_trace = None, poutine.trace(self.model_n).get_trace(x)
            if guide_trace is not None:
                # before Pyro's ELBOs meet them: a missing site is a bare KeyError there, an
                # extra one a warning and a term without a model counterpart; a support
                # mismatch is said before a draw outside the model's support fails below
                _check_guide_matches(model_trace, guide_trace, self.plate_name)
            _check_log_densities(model_trace, "model")
            if guide_trace is not None:
                _check_log_densities(guide_trace, "guide")
        self.called_modules = called
        check_minibatch_trace(
            model_trace,
            self.plate_name,
            self.num_data,
            batch,
            "model",
            scaled_by_us=not accepts_num_data(self.model),
        )
        if batch < self.num_data:
            # minibatches: a site outside the plate that holds the rows gets no N/M scale
            # (on the whole data set at once there is none to apply: SVI is right)
            with buffers_kept(self.modules):
                check_rows_stay_in_plate(self.model_n, x, self.plate_name)
        local = [n for n, s in latent_sites(model_trace).items() if plate_frame(s, self.plate_name)]
        if guide_trace is not None and local:
            check_minibatch_trace(
                guide_trace,
                self.plate_name,
                self.num_data,
                batch,
                "guide",
                scaled_by_us=not accepts_num_data(self.guide),
            )

    def collect_params(self, x: torch.Tensor, programs: str = "both") -> ProgramParams:
        """The trainable parameters the programs touch on ``x`` (see
        :func:`~pyro_aevb.poutine.params.collect_params`). ``programs``: ``"both"``,
        ``"model"`` (objectives that train the model only) or ``"guide"``."""
        fns = []
        if programs in ("both", "guide") and self.guide_n is not None:
            fns.append(self.guide_n)
        if programs in ("both", "model"):
            fns.append(self.model_n)
        modules = self.modules if programs == "both" else owner_modules(*fns) or self.modules
        return collect_params(fns, x, modules=modules)
