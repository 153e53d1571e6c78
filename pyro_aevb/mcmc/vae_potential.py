r"""The paper's VAE as a per-datapoint potential, with its gradient derived by hand.

HMC, AIS and the Appendix-D estimator on the paper's VAE need, for every chain ``r`` (row of
an ``(n, J)`` position, datapoint ``i = r mod B``) and many times per datapoint::

    log p(z_r)           = -|z_r|^2 / 2 - J/2 log 2 pi           (z = u: the prior's support
                                                                   is unconstrained)
    log p(x_i | z_r)     = sum_d x_id a_rd - softplus(a_rd)                      Bernoulli
                         = -sum_d (x_id - m_rd)^2 e^{-v_rd} / 2 + v_rd / 2 + log(2 pi) / 2
                                                                                  Gaussian
    log q(z_r | x_i)     = -sum_j (z_rj - mu_ij)^2 / (2 s_ij^2) + log s_ij + log(2 pi) / 2

with the decoder ``h_0 = z``, ``h_k = tanh(h_{k-1} W_k^T + b_k)``, ``a = h_K W_o^T + b_o``
(``[m, v]`` for a Gaussian, ``m`` or ``sigmoid(m)`` the mean) and the encoder's ``mu, s``
computed once per datapoint. Gradients (backpropagation written out)::

    d log p(z)/dz        = -z
    d log p(x|z)/da      = x - sigmoid(a)                                         Bernoulli
                         = (x - m) e^{-v} (times m (1 - m) for a sigmoid mean),
                           d/dv = ((x - m)^2 e^{-v} - 1) / 2                       Gaussian
    tanh layers          dpre = dh (1 - h^2),  dh_in = dpre W
    d log q/dz           = -(z - mu) / s^2

:class:`VAEPotential` computes these in preallocated buffers, chunk by chunk of rows, without
Pyro traces or autograd, and without replicating ``x`` over the chains (a chunk is a block of
whole chains, or a range of one chain's datapoints, so ``x`` is a broadcast or a slice).
Inside a leapfrog trajectory only gradients are needed (``need_value=False``): the
log-likelihood's value, which costs several passes over the ``(rows, D)`` decoder output,
is skipped. With ``x W_o`` computed once per datapoint, the Bernoulli terms that involve
``x`` cost ``H`` operations per row instead of ``D``: ``sum_d x_d a_d = h_K . (x W_o) +
x . b_o`` and ``(sigmoid(a) - x) W_o = sigmoid(a) W_o - x W_o`` (so a gradient is one pass
over the ``(rows, D)`` output besides the two products).

The values equal the traced potential's to float rounding (a test compares them, and the
gradients, with :class:`~pyro_aevb.mcmc.potential.PerDatapointPotential` on the same
positions); :meth:`VAEPotential.sample_guide` and :meth:`VAEPotential.sample_prior` draw
exactly what the traced guide and model draw from torch's global RNG.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..models.vae import VAE, program_override
from ..nn.likelihoods import BernoulliLikelihood, GaussianLikelihood
from ..nn.mlp import MLP
from ..nn.sum_log import sum_log_max_complement
from .potential import PerDatapointPotential

__all__ = ["VAEPotential", "vae_potential_unsupported_reason"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_SQRT_2PI = math.log(math.sqrt(2.0 * math.pi))  # as torch's Normal.log_prob writes it
#: Rows per chunk: the (rows, D) buffers stay in the last-level cache (and bounded memory).
DEFAULT_CHUNK_ROWS = 4096

_tanh_backward = torch.ops.aten.tanh_backward.grad_input
_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input


def _vae_of(fn):
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, VAE) else None


def vae_potential_unsupported_reason(program) -> str | None:
    """``None`` if :class:`VAEPotential` computes the potential of ``program`` (a
    :class:`~pyro_aevb.poutine.PerDatapointProgram`) exactly, else why not.

    Supported: the model is a :class:`~pyro_aevb.models.VAE`'s own ``model`` method (a class
    that overrides none of the methods defining it), whose decoder is a tanh
    :class:`~pyro_aevb.nn.MLP` of ``nn.Linear`` layers with bias and whose likelihood is
    Bernoulli or Gaussian, parameters of one float dtype; the guide, if any, is the same
    VAE's ``guide``; data plate ``"data"``, no global latents.
    """
    vae = _vae_of(program.raw_model)
    if vae is None or getattr(program.raw_model, "__func__", None) is not VAE.model:
        return "the model is not a pyro_aevb VAE's model method"
    override = program_override(vae)
    if override is not None:
        return override
    guide = program.raw_guide
    if guide is not None and (
        _vae_of(guide) is not vae or getattr(guide, "__func__", None) is not VAE.guide
    ):
        return "the guide is not the same VAE's guide method"
    if program.plate_name != "data" or program.global_names:
        return "the program has another data plate or global latents"
    if type(vae.likelihood) not in (BernoulliLikelihood, GaussianLikelihood):
        return f"the likelihood is a {type(vae.likelihood).__name__}"
    dec = vae.decoder
    if type(dec) is not MLP or dec.activation != "tanh":
        return "the decoder is not a tanh pyro_aevb.nn.MLP"
    layers = [*dec.hidden, dec.out]
    if any(type(lin) is not nn.Linear or lin.bias is None for lin in layers):
        return "the decoder has a layer that is not an nn.Linear with bias"
    if dec.in_dim != vae.latent_dim or dec.out_dim != vae.likelihood.num_params * vae.data_dim:
        return "the decoder's shape does not match the VAE"
    dtypes = {p.dtype for p in vae.parameters()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in (torch.float32, torch.float64):
        return "parameters must all be float32 or all float64"
    if program.dtype != next(iter(dtypes)):
        return "the latents' dtype differs from the parameters'"
    return None


class _Buffers:
    """Work buffers for chunks of ``rows`` rows."""

    def __init__(self, vae: VAE, rows: int, dtype, device):
        def new(*shape):
            return torch.empty(shape, dtype=dtype, device=device)

        width = vae.decoder.out_dim  # D (Bernoulli) or 2 D (Gaussian)
        gaussian = isinstance(vae.likelihood, GaussianLikelihood)
        self.h = [new(rows, lin.out_features) for lin in vae.decoder.hidden]
        self.dh = [new(rows, lin.out_features) for lin in vae.decoder.hidden]
        self.out = new(rows, width)
        self.g = new(rows, width) if gaussian else None
        self.tmp = new(rows, width)
        self.dz = new(rows, vae.latent_dim)


class VAEPotential(PerDatapointPotential):
    """Potential of the paper's VAE with hand-derived gradients (see the module docstring).

    Parameters as :class:`~pyro_aevb.mcmc.potential.PerDatapointPotential`, plus
    ``chunk_rows`` (rows per evaluation chunk). Build it through
    :func:`~pyro_aevb.mcmc.potentials.make_potential`, which checks
    :func:`vae_potential_unsupported_reason` first.
    """

    provides_grad = True
    path = "vae"
    path_reason = "the paper's VAE: hand-derived log-density and gradient, no Pyro trace"

    def __init__(self, model, x, *, num_chains=1, chunk_rows: int = DEFAULT_CHUNK_ROWS, **kw):
        super().__init__(model, x, num_chains=num_chains, **kw)
        reason = vae_potential_unsupported_reason(self.program)
        if reason is not None:
            raise ValueError(f"VAEPotential does not support this model: {reason}")
        self.vae: VAE = _vae_of(self.program.raw_model)
        self._params = list(self.vae.parameters())
        dec = self.vae.decoder
        self._linears = [*dec.hidden, dec.out]
        self.chunk_rows = chunk_rows
        self._buffers: dict = {}
        self._data = None  # per-datapoint constants, made on first use

    def with_chains(self, num_chains: int) -> VAEPotential:
        new = VAEPotential(
            self.program,
            self.x,
            num_chains=num_chains,
            chunk_rows=self.chunk_rows,
            validate=self.validate,
        )
        new._data = self._data  # the same datapoints: the same constants
        return new

    # ------------------------------------------------------------------ constants
    def _layers(self):
        return [(lin.weight.detach(), lin.bias.detach()) for lin in self._linears]

    def _constants(self) -> dict:
        """Per-datapoint constants: flat ``x``, ``x W_o`` and ``x . b_o`` (Bernoulli), the
        encoder's ``mu``, ``s`` (with a guide). Recomputed if the parameters' storage moved
        (the networks' values are read at every evaluation, so in-place updates are seen,
        but these depend on them: they are for fixed parameters, as in evaluation)."""
        key = tuple((p.data_ptr(), p._version) for p in self._params)
        if self._data is not None and self._data["key"] == key:
            return self._data
        vae = self.vae
        with torch.no_grad():
            x = self.x.reshape(self.batch_size, -1).to(self.dtype).contiguous()
            data = {"key": key, "x": x}
            if isinstance(vae.likelihood, BernoulliLikelihood):
                w_o, b_o = self._layers()[-1]
                data["xw"] = x @ w_o  # (B, H_K)
                data["xb"] = x @ b_o  # (B,)
            if self.program.raw_guide is not None:
                loc, scale = vae.encode(self.x.to(self.dtype))
                data["loc"], data["scale"] = loc, scale
                data["log_scale"] = scale.log()
        self._data = data
        return data

    def _buffer(self, rows: int) -> _Buffers:
        buf = self._buffers.get(rows)
        if buf is None:
            if len(self._buffers) >= 2:
                self._buffers.clear()
            buf = self._buffers[rows] = _Buffers(self.vae, rows, self.dtype, self.x.device)
        return buf

    def _chunks(self, n: int):
        """``(start, stop, x_start, x_stop)``: rows ``start:stop`` are whole chains of all
        datapoints (``x_start = None``) or the datapoints ``x_start:x_stop`` of one chain."""
        B = self.batch_size
        if self.chunk_rows >= B:
            k = max(1, self.chunk_rows // B)
            for c in range(0, n // B, k):
                yield c * B, min(n, (c + k) * B), None, None
        else:
            for c in range(n // B):
                for i in range(0, B, self.chunk_rows):
                    j = min(B, i + self.chunk_rows)
                    yield c * B + i, c * B + j, i, j

    # ------------------------------------------------------------------ the computation
    def _decode(self, z: torch.Tensor, buf: _Buffers, layers) -> torch.Tensor:
        h = z
        for (w, b), out in zip(layers[:-1], buf.h, strict=True):
            h = torch.addmm(b, h, w.t(), out=out[: z.shape[0]]).tanh_()
        w, b = layers[-1]
        return torch.addmm(b, h, w.t(), out=buf.out[: z.shape[0]])

    def _chunk(self, z, buf, layers, data, xs, need_value):
        """``(log p(x|z) (rows,) or None, -d log p(x|z)/dz (rows, J))`` for one chunk."""
        rows = z.shape[0]
        x = data["x"] if xs is None else data["x"][xs[0] : xs[1]]
        m = x.shape[0]
        out = self._decode(z, buf, layers)
        n_layers = len(layers)
        w_o = layers[-1][0]
        # dh: -d log p / d(input of the output layer), (rows, H_K)
        dh = buf.dh[-1][:rows] if n_layers > 1 else buf.dz[:rows]
        value = None
        if isinstance(self.vae.likelihood, BernoulliLikelihood):
            xw = data["xw"] if xs is None else data["xw"][xs[0] : xs[1]]
            if need_value:
                # sum_d x a - softplus(a), softplus(a) = relu(a) - log max(y, 1 - y), and
                # sum_d x a = h_K . (x W_o) + x . b_o
                xb = data["xb"] if xs is None else data["xb"][xs[0] : xs[1]]
                h_last = buf.h[-1][:rows] if n_layers > 1 else z
                xa = (h_last.view(-1, m, h_last.shape[1]) * xw).sum(-1).add_(xb).view(rows)
                tmp = buf.tmp[:rows]
                relu = torch.clamp_min(out, 0.0, out=tmp).sum(1)
                y = out.sigmoid_()
                log_m = sum_log_max_complement(y, out=tmp, per_row=True)
                value = xa.sub_(relu).add_(log_m)
            else:
                y = out.sigmoid_()
            # -d log p/dh_K = (sigmoid(a) - x) W_o = y W_o - x W_o: x W_o is per datapoint,
            # so no pass over the (rows, D) output subtracts x
            torch.mm(y, w_o, out=dh)
            dh.view(-1, m, dh.shape[1]).sub_(xw)
        else:
            g = buf.g[:rows]
            value = self._gaussian(out, g, buf.tmp[:rows], x, m, need_value)
            torch.mm(g, w_o, out=dh)
        # backpropagate through the tanh layers to z
        for k in range(n_layers - 2, -1, -1):
            _tanh_backward(dh, buf.h[k][:rows], grad_input=dh)
            target = buf.dh[k - 1][:rows] if k > 0 else buf.dz[:rows]
            dh = torch.mm(dh, layers[k][0], out=target)
        return value, dh

    def _gaussian(self, out, g, tmp, x, m, need_value):
        """Gaussian head: ``-d log p/d[m, v]`` into ``g``; the log-likelihood if asked.

        ``tmp`` is ``(rows, 2 D)``: the (sigmoid) mean and ``q = (m - x)^2 / var``."""
        D = self.vae.data_dim
        mean, v = out[:, :D], out[:, D:]
        gm, gv = g[:, :D], g[:, D:]
        sigmoid_mean = self.vae.likelihood.sigmoid_mean
        if sigmoid_mean:
            mean = torch.sigmoid(mean, out=tmp[:, :D])
        torch.sub(mean.reshape(-1, m, D), x, out=gm.reshape(-1, m, D))  # m - x
        iv = torch.neg(v, out=gv).exp_()  # 1 / var
        q = torch.mul(gm, gm, out=tmp[:, D:]).mul_(iv)
        value = None
        if need_value:
            value = (q.sum(1) + v.sum(1)).mul_(-0.5).sub_(D * _HALF_LOG_2PI)
        gm.mul_(iv)  # (m - x) / var
        if sigmoid_mean:
            _sigmoid_backward(gm, mean, grad_input=gm)
        torch.mul(q, -0.5, out=gv).add_(0.5)  # (1 - (x - m)^2 / var) / 2
        return value

    @torch.no_grad()
    def _likelihood(self, position: torch.Tensor, need_value: bool, need_grad: bool):
        self._check_position(position)
        z = position.detach()
        if not z.is_contiguous():
            z = z.contiguous()
        n = z.shape[0]
        data = self._constants()
        layers = self._layers()
        values = z.new_empty(n) if need_value else None
        grads = z.new_empty(n, self.dim) if need_grad else None
        for start, stop, i, j in self._chunks(n):
            buf = self._buffer(min(n, self.chunk_rows))
            value, g = self._chunk(
                z[start:stop], buf, layers, data, None if i is None else (i, j), need_value
            )
            if need_value:
                values[start:stop] = value
            if need_grad:
                torch.neg(g, out=grads[start:stop])
        return values, grads

    # ------------------------------------------------------------------ the interface
    def log_joint_parts(self, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if position.requires_grad:  # a caller's autograd: the traced potential
            return super().log_joint_parts(position)
        log_lik, _ = self._likelihood(position, need_value=True, need_grad=False)
        return self._log_prior(position), log_lik

    def _log_prior(self, z: torch.Tensor) -> torch.Tensor:
        # torch's Normal(0, 1).log_prob summed over J: -z^2 / 2 - log 1 - log sqrt(2 pi)
        return (-(z * z) / 2 - _LOG_SQRT_2PI).sum(-1)

    def parts_and_grads(self, position: torch.Tensor, need_value: bool = True):
        log_lik, g_lik = self._likelihood(position, need_value, need_grad=True)
        z = position.detach()
        log_prior = self._log_prior(z) if need_value else None
        return log_prior, log_lik, -z, g_lik

    def potential_and_grad(self, position: torch.Tensor, need_value: bool = True):
        """``(U (n,) or None, dU/du (n, J))``; the value only if ``need_value``."""
        log_prior, log_lik, g_prior, g_lik = self.parts_and_grads(position, need_value)
        value = -(log_prior + log_lik) if need_value else None
        return value, -(g_prior + g_lik)

    def _guide_terms(self):
        if self.guide is None:
            raise ValueError("log_guide needs a guide; pass guide= to the potential")
        data = self._constants()
        C = self.num_chains
        return (
            data["loc"].repeat(C, 1),
            data["scale"].repeat(C, 1),
            data["log_scale"].repeat(C, 1),
        )

    def log_guide(self, position: torch.Tensor) -> torch.Tensor:
        if position.requires_grad:
            return super().log_guide(position)
        return self.log_guide_and_grad(position)[0]

    def log_guide_and_grad(self, position: torch.Tensor):
        """``log q(u | x)`` (torch's ``Normal.log_prob``, summed) and ``-(z - mu) / s^2``."""
        self._check_position(position)
        loc, scale, log_scale = self._guide_terms()
        z = position.detach()
        diff = z - loc
        var = scale**2
        log_q = (-(diff**2) / (2 * var) - log_scale - _LOG_SQRT_2PI).sum(-1)
        return log_q, -diff / var

    @torch.no_grad()
    def sample_guide(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One draw per chain from the encoder, as the guide draws it (same RNG use)."""
        loc, scale, _ = self._guide_terms()
        eps = torch.empty(loc.shape, dtype=loc.dtype, device=loc.device).normal_()
        position = loc + eps * scale
        return position, self.log_guide(position)

    @torch.no_grad()
    def sample_prior(self) -> torch.Tensor:
        """One draw per chain from ``N(0, I)``, as the model draws it (same RNG use)."""
        shape = (self.num_rows, self.dim)
        like = {"dtype": self.dtype, "device": self.x.device}
        eps = torch.empty(shape, **like).normal_()
        # loc + eps * scale with loc = 0, scale = 1, as Normal.rsample computes it
        return torch.zeros(shape, **like) + eps * torch.ones(shape, **like)
