r"""Fast fused training and evaluation path for :class:`pyro_aevb.models.VAE`.

:class:`FastVAE` computes exactly what the stock Pyro estimators compute on
``vae.model``/``vae.guide`` -- the minibatch loss of eq. 8 with estimator A
(:class:`~pyro.infer.Trace_ELBO`) or B (:class:`~pyro_aevb.infer.elbo.AnalyticKL_ELBO`) and its
gradient -- but with a hand-derived forward and backward pass in plain torch instead of Pyro
traces plus autograd. Everything runs in preallocated buffers with fused BLAS calls
(``torch.addmm`` with ``alpha``/``beta`` and ``out=``), gradients are written straight into
each parameter's ``.grad`` and no autograd graph is built. The model and guide stay ordinary
Pyro programs: this module only recognises the :class:`~pyro_aevb.models.VAE` class and
reproduces its programs' arithmetic; anything it does not recognise runs on stock Pyro (see
:meth:`FastVAE.unsupported_reason` and :class:`~pyro_aevb.infer.objectives.aevb.ELBO`);
:class:`FastVAEObjective` is the trainer's interface to it.

Notation (one minibatch of ``M`` rows, ``N`` data points, ``L`` particles, ``J`` latents,
``D`` data dimensions, scale ``s = N / M``, ``c = s / L``)::

    encoder   h_k = tanh(h_{k-1} W_k^T + b_k),  [mu, lv] = h_K W_o^T + b_o       (M, 2J)
    guide     sigma = exp(lv / 2),  z_l = mu + eps_l * sigma,  eps_l ~ N(0, I)   (M, J) each
    decoder   the same tanh MLP from z_l to the logits ``a`` (Bernoulli, (M, D)) or to
              ``[m, v]`` (Gaussian, (M, 2D); mean ``m`` or ``sigmoid(m)``, log variance ``v``)

    NLL_li = -log p(x_i | z_li)
           = sum_d softplus(a) - x a                                  Bernoulli
           = sum_d (x - m)^2 exp(-v) / 2 + v / 2 + log(2 pi) / 2      Gaussian
    KL_i   = 1/2 sum_j (mu^2 + sigma^2 - 1 - lv)                      (closed form)

    loss B = c sum_{l,i} NLL_li + s sum_i KL_i + |theta|^2 / (2 s_p^2)
    loss A = c sum_{l,i} [NLL_li - log p(z_li) + log q(z_li | x_i)] + |theta|^2 / (2 s_p^2)
           = c sum_{l,i} [NLL_li + 1/2 sum_j (z^2 - eps^2 - lv)] + |theta|^2 / (2 s_p^2)

(the ``log 2 pi`` constants of ``log p(z)`` and ``log q`` cancel; the weight-prior term is
present only when ``vae.weight_prior_std = s_p`` is not ``None``).

Gradients (backpropagation written out by hand)::

    dloss/da        = c (sigmoid(a) - x)                                       Bernoulli
    dloss/dm        = c (m - x) exp(-v)   (times m (1 - m) with a sigmoid mean)  Gaussian
    dloss/dv        = c (1 - (x - m)^2 exp(-v)) / 2                            Gaussian
    tanh layers     dpre = dh * (1 - h^2),  dW = dpre^T h_in,  db = sum_rows dpre,
                    dh_in = dpre W
    dloss/dz_l      = decoder input gradient   (+ c z_l for A, from -log p(z))
    dloss/dmu       = sum_l dloss/dz_l                         (+ s mu for B, KL)
    dloss/dlv       = sigma / 2 sum_l eps_l dloss/dz_l         (+ s (sigma^2 - 1) / 2 for B;
                                                                 - s / 2 for A)
    weight prior    dloss/dtheta += theta / s_p^2

For estimator A the guide's ``log q(z|x)`` is differentiated through the reparameterisation:
since ``(z - mu) / sigma = eps``, ``log q = -sum_j (eps^2 / 2 + lv / 2) - const`` and its total
derivative is ``0`` in ``mu`` and ``-1/2`` in each log-variance entry -- exactly what autograd
yields on Pyro's ``Normal(mu, sigma).log_prob(mu + eps * sigma)``.

**Random draws.** For each particle the guide's ``Normal(mu, sigma).rsample()`` draws one
standard-normal ``(M, J)`` tensor from the global torch RNG; this path draws the same tensor
(``normal_()`` on an ``(M, J)`` block, which is exactly what ``torch.randn`` does) in the same
order, so after the same ``torch.manual_seed`` both paths see identical ``eps`` and agree to
floating-point rounding in loss and every gradient.

**Input checks.** ``loss_and_grads`` and ``bound`` check only what is free (tensor, 2-D,
``D`` columns, parameter dtype and device, ``num_data >= M``); they do not scan the values
(finite, inside [0, 1] for a Bernoulli decoder) on every step, which would cost a pass over
the batch. The trainer validates the whole data set once before training, and
:func:`evaluate_bound` validates its data once; a caller that feeds unvalidated data directly
must validate it with :func:`pyro_aevb.validation.check_data` first.

**Where the time goes** (one core, batch 100; ``benchmarks/speed.py`` measures it). For the
paper's 784-500-20 model the five large matrix products (encoder and decoder input/output
layers forward, their weight gradients and the decoder's input gradient) are well over half
of a step; the fused Adagrad update (memory-bound: parameters, gradients and accumulators
are ~10 MB) and the weight prior (one extra pass over the parameters) most of the rest.
For the small 784-100-3 model the products shrink five-fold and the fixed costs dominate:
the elementwise passes over the ``(M, 784)`` decoder output, roughly 80 small torch calls
(~2-3 us each) and the optimizer call. Transcendental functions are the dear passes (on the
benchmark machine, per 78,400 entries: sigmoid ~100 us, log ~150 us, a multiply or a sum
~10 us), so the loss takes ``sum log`` as one log per chunk of products
(:mod:`pyro_aevb.nn.sum_log`); that made the small model's step ~12% faster. Hence also: no
autograd graph, no allocation in the hot path (a fresh 300 KB tensor costs page faults),
losses accumulated as Python floats, prior and scale fused into the BLAS calls, and the lean
optimizer of :mod:`pyro_aevb.train.optim`.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from ...models.vae import VAE, program_override
from ...nn.likelihoods import BernoulliLikelihood, GaussianLikelihood
from ...nn.mlp import MLP
from ...nn.sum_log import sum_log_max_complement
from ...poutine import TrainingProgram
from ...validation import check_data, check_num_data
from ..elbo import ESTIMATORS
from .base import BoundObjective

__all__ = ["FastVAE", "FastVAEObjective"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


_tanh_backward = torch.ops.aten.tanh_backward.grad_input
_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input

# Buffer sets kept per (rows, particles, dtype, device); the trainer uses at most two batch
# sizes (the full one and a smaller last one), evaluation one more.
_MAX_PLANS = 4


def _linear_layers(net: nn.Module) -> list[nn.Linear]:
    return [*net.hidden, net.out]


class _Plan:
    """Preallocated work buffers for one ``(M, L, dtype, device)``; reused every step."""

    def __init__(self, vae: VAE, rows: int, particles: int, dtype, device):
        def new(*shape):
            return torch.empty(shape, dtype=dtype, device=device)

        J, D = vae.latent_dim, vae.data_dim
        LM = particles * rows
        gaussian = isinstance(vae.likelihood, GaussianLikelihood)
        out_dim = 2 * D if gaussian else D
        self.enc_h = [new(rows, lin.out_features) for lin in vae.encoder.hidden]
        self.enc_dh = [new(rows, lin.out_features) for lin in vae.encoder.hidden]
        self.enc_out = new(rows, 2 * J)  # [mu, lv]
        self.mu, self.lv = self.enc_out[:, :J], self.enc_out[:, J:]
        self.enc_dout = new(rows, 2 * J)  # [dloss/dmu, dloss/dlv]
        self.dmu, self.dlv = self.enc_dout[:, :J], self.enc_dout[:, J:]
        self.sigma = new(rows, J)
        self.sigma2 = new(rows, J)
        self.eps = new(particles, rows, J)
        self.eps_blocks = list(self.eps.unbind(0))  # one (M, J) block per particle
        self.u = new(particles, rows, J)  # eps * sigma = z - mu
        self.z = new(particles, rows, J)
        self.z2 = self.z.view(LM, J)
        self.dz = new(LM, J)
        self.dec_h = [new(LM, lin.out_features) for lin in vae.decoder.hidden]
        self.dec_dh = [new(LM, lin.out_features) for lin in vae.decoder.hidden]
        self.dec_out = new(LM, out_dim)
        self.dec_dout = new(LM, out_dim)  # dNLL/d(decoder output), unscaled
        self.tmp = new(LM, D)
        self.tmp2 = new(LM, D) if gaussian and vae.likelihood.sigmoid_mean else None
        # Bias gradients are column sums, taken as a matrix-vector product with ones so that
        # the scale and the weight-prior term fuse into the same call (torch.addmv).
        self.ones_rows = torch.ones(rows, dtype=dtype, device=device)
        self.ones_lm = torch.ones(LM, dtype=dtype, device=device)
        self._full_noise: torch.Tensor | None = None

    def full_noise(self, total: int) -> torch.Tensor:
        """A ``(total, J)`` buffer for the noise of a whole minibatch (data-parallel shards)."""
        buf = self._full_noise
        if buf is None or buf.shape[0] != total:
            buf = torch.empty(
                total, self.eps.shape[2], dtype=self.eps.dtype, device=self.eps.device
            )
            self._full_noise = buf
        return buf


class FastVAE:
    """Estimator A or B for :class:`~pyro_aevb.models.VAE`, forward and backward by hand.

    Parameters
    ----------
    vae : VAE
        Must be supported (:meth:`unsupported_reason` returns ``None``), else ``ValueError``.
    estimator : {"A", "B"}
        ``"A"``: generic SGVB (eq. 6, ``Trace_ELBO``); ``"B"``: analytic KL (eq. 7,
        ``AnalyticKL_ELBO``).
    num_particles : int
        ``L``, the number of ``z`` draws per datapoint, averaged. The decoder runs once on
        the ``L * M`` stacked draws (the encoder output is the same for every particle).

    Notes
    -----
    The object owns one gradient buffer per parameter and assigns it to ``p.grad`` on
    every :meth:`loss_and_grads` call (overwriting the previous values), so
    ``optimizer.zero_grad()`` between steps is allowed but unnecessary.

    The layers and parameters are looked up when the object is built: build it (like
    the optimizer) after the model is final. Changing a parameter's data in place or
    rebinding it (``module.to(dtype)``, ``load_state_dict``) is fine; replacing a layer
    module afterwards is not seen. Not thread-safe: calls share the work buffers.
    """

    def __init__(self, vae: VAE, estimator: str = "B", num_particles: int = 1):
        reason = self.unsupported_reason(vae, estimator, num_particles)
        if reason is not None:
            raise ValueError(f"the fast path does not support this model: {reason}")
        self.vae = vae
        self.estimator = estimator
        self.num_particles = num_particles
        self.params = [p for p in vae.parameters() if p.requires_grad]
        self._enc = _linear_layers(vae.encoder)
        self._dec = _linear_layers(vae.decoder)
        # Position in self.params (= vae.parameters()) of each layer's (weight, bias).
        index = {id(p): i for i, p in enumerate(self.params)}
        self._enc_idx = [(index[id(lin.weight)], index[id(lin.bias)]) for lin in self._enc]
        self._dec_idx = [(index[id(lin.weight)], index[id(lin.bias)]) for lin in self._dec]
        self._plans: OrderedDict = OrderedDict()
        self._grads: dict = {}
        self._views_key = None

    # ------------------------------------------------------------------ support
    @classmethod
    def unsupported_reason(
        cls, module: nn.Module, estimator: str = "B", num_particles: int = 1
    ) -> str | None:
        """``None`` if the fast path computes this model's objective exactly, else why not.

        Supported: a :class:`~pyro_aevb.models.VAE` (or a subclass that overrides none of
        the methods defining its Pyro programs) on flat data ``(batch, D)`` whose encoder
        and decoder are :class:`~pyro_aevb.nn.MLP` (exact class, tanh, any number of
        layers, plain ``nn.Linear`` with bias) and whose likelihood is Bernoulli or Gaussian,
        all parameters trainable and of one float32/float64 dtype on one device; estimator
        ``"A"`` or ``"B"``; any ``num_particles >= 1``.
        """
        if not isinstance(module, VAE):
            return f"{type(module).__name__} is not a pyro_aevb.models.VAE"
        override = program_override(module)
        if override is not None:
            return override
        if estimator not in ESTIMATORS:
            return f"unknown estimator {estimator!r}"
        if isinstance(num_particles, bool) or not isinstance(num_particles, int):
            return f"num_particles must be an int, got {num_particles!r}"
        if num_particles < 1:
            return f"num_particles must be >= 1, got {num_particles}"
        if len(module.event_shape) != 1:
            return f"the data has event shape {module.event_shape}, not flat rows"
        lik = module.likelihood
        if type(lik) not in (BernoulliLikelihood, GaussianLikelihood):
            return f"the likelihood is a {type(lik).__name__}, not Bernoulli or Gaussian"
        D, J = module.data_dim, module.latent_dim
        shapes = (("encoder", D, 2 * J), ("decoder", J, lik.num_params * D))
        for net_name, in_dim, out_dim in shapes:
            net = getattr(module, net_name)
            if type(net) is not MLP:
                return f"the {net_name} is a {type(net).__name__}, not a pyro_aevb.nn.MLP"
            if net.activation != "tanh":
                return f"the {net_name}'s activation is {net.activation!r}, not 'tanh'"
            if (net.in_dim, net.out_dim) != (in_dim, out_dim):
                return (
                    f"the {net_name} maps {net.in_dim} -> {net.out_dim}, not {in_dim} -> {out_dim}"
                )
            for lin in _linear_layers(net):
                if type(lin) is not nn.Linear or lin.bias is None:
                    return f"the {net_name} has a layer that is not an nn.Linear with bias"
        layer_params = [
            p
            for lin in _linear_layers(module.encoder) + _linear_layers(module.decoder)
            for p in lin.parameters()
        ]
        params = list(module.parameters())
        if len(params) != len(layer_params) or {id(p) for p in params} != {
            id(p) for p in layer_params
        }:
            return "the module has parameters outside its encoder and decoder layers"
        if not all(p.requires_grad for p in params):
            return "some parameters are frozen (requires_grad=False)"
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1 or next(iter(dtypes)) not in (torch.float32, torch.float64):
            return f"parameters must all be float32 or all float64, got {sorted(map(str, dtypes))}"
        if len({p.device for p in params}) != 1:
            return "parameters are on more than one device"
        return None

    # ------------------------------------------------------------------ buffers
    def _plan(self, rows: int, dtype, device) -> _Plan:
        key = (rows, dtype, device)
        plan = self._plans.get(key)
        if plan is None:
            plan = _Plan(self.vae, rows, self.num_particles, dtype, device)
            self._plans[key] = plan
            if len(self._plans) > _MAX_PLANS:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return plan

    def _grad_buffers(self, dtype, device) -> list[torch.Tensor]:
        key = (dtype, device)
        grads = self._grads.get(key)
        if grads is None:
            grads = [
                torch.empty_like(p, memory_format=torch.contiguous_format) for p in self.params
            ]
            self._grads = {key: grads}
        return grads

    def _refresh_views(self) -> None:
        """Cache ``W^T`` and flattened views of the parameters (cheap per-call check).

        The views share storage with the parameters, so in-place optimizer updates show
        through; only rebinding a parameter's data (``module.to(...)``, ``p.data = ...``)
        changes its address and triggers a rebuild.
        """
        key = tuple(p.data_ptr() for p in self.params)
        if key == self._views_key:
            return
        self._enc_wt = [lin.weight.detach().t() for lin in self._enc]
        self._dec_wt = [lin.weight.detach().t() for lin in self._dec]
        self._enc_w = [lin.weight.detach() for lin in self._enc]
        self._dec_w = [lin.weight.detach() for lin in self._dec]
        self._enc_b = [lin.bias.detach() for lin in self._enc]
        self._dec_b = [lin.bias.detach() for lin in self._dec]
        self._flat = [p.detach().reshape(-1) for p in self.params]
        self._views_key = key

    def _check_x(self, x: torch.Tensor) -> tuple[torch.dtype, torch.device]:
        """Structural checks only (no pass over the values; see the module docstring)."""
        W = self._enc[0].weight
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.vae.data_dim:
            check_data(x, "x", self.vae.data_dim)  # raises with a helpful message
        if x.dtype != W.dtype or x.device != W.device:
            raise ValueError(
                f"x has dtype {x.dtype} on {x.device} but the model's parameters are "
                f"{W.dtype} on {W.device}; convert the data once with x.to(...)"
            )
        if x.shape[0] == 0:
            raise ValueError("x is empty (shape (0, data_dim)); need at least one row")
        return W.dtype, W.device

    # ------------------------------------------------------------------ public API
    def loss_and_grads(
        self,
        x: torch.Tensor,
        num_data: int,
        *,
        scale: float | None = None,
        noise_rows: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Minibatch loss of eq. 8 and its gradient; see the module docstring for formulas.

        Parameters
        ----------
        x : torch.Tensor
            Minibatch, shape ``(M, D)``, the parameters' dtype and device; values are
            assumed valid (checked once by the caller).
        num_data : int
            ``N``, the full data set size (``N >= M``); the data terms are scaled by
            ``N / M``.
        scale : float, optional
            The scale ``s`` of the data terms instead of ``N / M`` (a data-parallel rank
            computing its shard of a global minibatch uses ``P N / M_global``; see
            :mod:`pyro_aevb.train.distributed`). The weight prior is never scaled.
        noise_rows : (offset, total), optional
            ``x`` is rows ``offset .. offset + M - 1`` of a minibatch of ``total`` rows: the
            guide noise is drawn for all ``total`` rows, exactly as a process holding the whole
            minibatch draws it, and this slice is used.

        Returns
        -------
        torch.Tensor
            The loss ``-(N/M) sum_i L_i - log p(theta)``, a detached 0-dim tensor of the
            parameters' dtype; the gradient of this loss is written into ``p.grad`` for
            every parameter.
        """
        dtype, device = self._check_x(x)
        M = x.shape[0]
        num_data = check_num_data(num_data, M)
        with torch.no_grad():
            self._refresh_views()
            plan = self._plan(M, dtype, device)
            grads = self._grad_buffers(dtype, device)
            x = x.contiguous()
            self._forward(plan, x, noise_rows)
            loss = self._loss_and_backward(plan, x, num_data / M if scale is None else scale, grads)
        for p, g in zip(self.params, grads, strict=True):
            # a parameter frozen since set-up (a fine-tuning schedule) gets no gradient, as
            # with backward(); the optimizers skip it
            p.grad = g if p.requires_grad else None
        return torch.full((), loss, dtype=dtype, device=device)

    def bound(self, x: torch.Tensor) -> torch.Tensor:
        """Per-datapoint bound ``L_i`` (no weight prior, unscaled), ``(M,)``, no gradient.

        Averaged over ``num_particles`` draws of ``z``; estimator A or B as configured::

            L_i^B = -KL_i - (1/L) sum_l NLL_li
            L_i^A = -(1/L) sum_l [NLL_li + 1/2 sum_j (z_lij^2 - eps_lij^2)] + 1/2 sum_j lv_ij
        """
        dtype, device = self._check_x(x)
        with torch.no_grad():
            self._refresh_views()
            plan = self._plan(x.shape[0], dtype, device)
            x = x.contiguous()
            self._forward(plan, x)
            return self._bound_rows(plan, x)

    # ------------------------------------------------------------------ the computation
    def _forward(self, plan: _Plan, x: torch.Tensor, noise_rows=None) -> None:
        """Encoder, guide draws and decoder into the plan's buffers (``noise_rows``: see
        :meth:`loss_and_grads`)."""
        h = x
        for b, wt, buf in zip(self._enc_b[:-1], self._enc_wt[:-1], plan.enc_h, strict=True):
            h = torch.addmm(b, h, wt, out=buf).tanh_()
        torch.addmm(self._enc_b[-1], h, self._enc_wt[-1], out=plan.enc_out)

        # Guide draws in the order Pyro's guide makes them: one (M, J) block per particle.
        # z = mu + eps * sigma with sigma = exp(lv / 2), rounded exactly as Normal.rsample.
        sigma = torch.mul(plan.lv, 0.5, out=plan.sigma).exp_()
        if noise_rows is None:
            for e in plan.eps_blocks:
                e.normal_()
        else:
            offset, total = noise_rows
            rows = plan.enc_out.shape[0]
            if not 0 <= offset <= total - rows:
                raise ValueError(
                    f"noise_rows={noise_rows} does not hold the {rows} rows of x (offset + "
                    f"rows must be at most total)"
                )
            full = plan.full_noise(total)
            for e in plan.eps_blocks:
                full.normal_()  # the (total, J) block a whole-minibatch process draws
                e.copy_(full[offset : offset + rows])
        torch.mul(plan.eps, sigma, out=plan.u)
        torch.add(plan.u, plan.mu, out=plan.z)

        h = plan.z2
        for b, wt, buf in zip(self._dec_b[:-1], self._dec_wt[:-1], plan.dec_h, strict=True):
            h = torch.addmm(b, h, wt, out=buf).tanh_()
        torch.addmm(self._dec_b[-1], h, self._dec_wt[-1], out=plan.dec_out)

    def _loss_and_backward(self, plan: _Plan, x, scale: float, grads) -> float:
        """Minibatch loss (a float) after :meth:`_forward`; gradients into ``grads``."""
        vae = self.vae
        L = self.num_particles
        M, J = plan.enc_out.shape[0], vae.latent_dim
        c = scale / L
        analytic = self.estimator == "B"
        mu, lv, sigma = plan.mu, plan.lv, plan.sigma

        # ---- reconstruction term: sum_{l,i} NLL_li, and dNLL/d(out) (unscaled) in dec_dout.
        g = plan.dec_dout
        if isinstance(vae.likelihood, BernoulliLikelihood):
            nll = _bernoulli_nll_grad(plan.dec_out, x, g, L)
        else:
            nll = _gaussian_nll_grad(plan.dec_out, x, g, plan, L)

        # ---- latent terms (floats: scalar arithmetic on tensors would cost a call each).
        sum_lv = lv.sum().item()
        if analytic:
            # sum_i KL_i = 1/2 (sum mu^2 + sum sigma^2 - M J - sum lv)
            s2 = torch.mul(sigma, sigma, out=plan.sigma2)
            sum_mu2 = torch.linalg.vector_norm(mu).item() ** 2
            latent = 0.5 * scale * (sum_mu2 + s2.sum().item() - M * J - sum_lv)
        else:
            # sum_{l,i} [log q - log p(z)] = 1/2 (sum z^2 - sum eps^2 - L sum lv)
            z_flat, eps_flat = plan.z.view(-1), plan.eps.view(-1)
            zz = torch.dot(z_flat, z_flat).item() - torch.dot(eps_flat, eps_flat).item()
            latent = 0.5 * c * zz - 0.5 * scale * sum_lv
        loss = c * nll + latent

        # ---- weight prior |theta|^2 / (2 s_p^2); its gradient enters through beta below.
        wd = 0.0
        if vae.weight_prior_std is not None:
            wd = 1.0 / vae.weight_prior_std**2
            loss += 0.5 * wd * sum(torch.dot(v, v).item() for v in self._flat)

        # ---- backward through the decoder; c enters through alpha of the output layer.
        n_dec = len(self._dec)
        dh = g
        for k in range(n_dec - 1, -1, -1):
            if k < n_dec - 1:
                _tanh_backward(dh, plan.dec_h[k], grad_input=dh)
            iw, ib = self._dec_idx[k]
            dh = _linear_backward(
                dh,
                plan.dec_h[k - 1] if k > 0 else plan.z2,
                self._dec_w[k],
                self._dec_b[k],
                c if k == n_dec - 1 else 1.0,
                wd,
                grads[iw],
                grads[ib],
                plan.ones_lm,
                plan.dec_dh[k - 1] if k > 0 else plan.dz,
            )
        dz = dh  # dloss/dz, (L M, J)
        if not analytic:
            dz.add_(plan.z2, alpha=c)  # from -log p(z) = |z|^2 / 2 + const

        # ---- through z = mu + eps * sigma, sigma = exp(lv / 2), to [dmu, dlv].
        dmu, dlv = plan.dmu, plan.dlv
        if L == 1:
            dmu.copy_(dz)
            torch.mul(dz, plan.u.view(M, J), out=dlv)  # dz * eps * sigma
        else:
            dz3 = dz.view(L, M, J)
            torch.sum(dz3, 0, out=dmu)
            torch.sum(dz3.mul_(plan.u), 0, out=dlv)
        if analytic:
            dmu.add_(mu, alpha=scale)  # dKL/dmu = mu
            # dlv = 1/2 sum_l dz eps sigma + s (sigma^2 - 1) / 2
            dlv.add_(plan.sigma2, alpha=scale).sub_(scale).mul_(0.5)
        else:
            dlv.mul_(0.5).sub_(0.5 * scale)  # d log q / d lv = -1/2 (total derivative)

        # ---- backward through the encoder (no gradient for x).
        n_enc = len(self._enc)
        dh = plan.enc_dout
        for k in range(n_enc - 1, -1, -1):
            if k < n_enc - 1:
                _tanh_backward(dh, plan.enc_h[k], grad_input=dh)
            iw, ib = self._enc_idx[k]
            dh = _linear_backward(
                dh,
                plan.enc_h[k - 1] if k > 0 else x,
                self._enc_w[k],
                self._enc_b[k],
                1.0,
                wd,
                grads[iw],
                grads[ib],
                plan.ones_rows,
                plan.enc_dh[k - 1] if k > 0 else None,
            )
        return loss

    def _bound_rows(self, plan: _Plan, x: torch.Tensor) -> torch.Tensor:
        """Per-datapoint bound ``(M,)`` after :meth:`_forward`."""
        vae = self.vae
        L = self.num_particles
        M = x.shape[0]
        out = plan.dec_out
        if isinstance(vae.likelihood, BernoulliLikelihood):
            nll = _bernoulli_nll_rows(out, x, plan.tmp, L)
        else:
            nll = _gaussian_nll_rows(out, x, plan, L)
        nll = nll.view(L, M).mean(0)
        mu, lv, sigma = plan.mu, plan.lv, plan.sigma
        if self.estimator == "B":
            kl = (mu * mu + sigma * sigma - lv).sum(1).sub_(vae.latent_dim).mul_(0.5)
            return -kl - nll
        zz = (plan.z * plan.z - plan.eps * plan.eps).sum(2).mean(0)  # (M,)
        return 0.5 * lv.sum(1) - nll - 0.5 * zz


def _linear_backward(dpre, h_in, W, b, alpha, wd, gW, gb, ones, dh_out):
    """Gradients of ``pre = h_in W^T + b`` given ``dpre`` (to be scaled by ``alpha``).

    ``gW = alpha dpre^T h_in + wd W`` and ``gb = alpha dpre^T 1 + wd b`` (the weight-prior
    gradient fused into the same BLAS call through ``beta``) and, unless ``dh_out`` is
    ``None``, ``dh_in = alpha dpre W`` written into ``dh_out`` and returned.
    """
    dpre_t = dpre.t()
    torch.addmm(W, dpre_t, h_in, beta=wd, alpha=alpha, out=gW)
    torch.addmv(b, dpre_t, ones, beta=wd, alpha=alpha, out=gb)
    if dh_out is None:
        return None
    # beta=0: the old contents of dh_out are ignored (NaN-safe, per the torch docs).
    return torch.addmm(dh_out, dpre, W, beta=0.0, alpha=alpha, out=dh_out)


def _bernoulli_nll_grad(a, x, g, L) -> float:
    """``sum softplus(a) - x a`` over all ``L M D`` entries; ``g = sigmoid(a) - x``.

    ``softplus(a) = relu(a) - log max(y, 1 - y)`` with ``y = sigmoid(a)`` (and
    ``max(y, 1 - y) = |y - 1/2| + 1/2``): accurate in both tails, no overflow, and it reuses
    ``y``, which the gradient needs anyway -- cheaper than a separate softplus or
    BCE-with-logits kernel (both are slow on CPU). The sum of logs is taken with one ``log``
    per chunk of entries (:func:`~pyro_aevb.nn.sum_log.sum_log_max_complement`). ``a`` is used
    as scratch space: the backward pass needs only ``g``, not the logits.
    """
    if L == 1:
        xa = torch.dot(a.view(-1), x.view(-1))
    else:
        xa = torch.mv(a.view(L, -1), x.view(-1)).sum()
    torch.sigmoid(a, out=g)
    relu = a.clamp_min_(0.0).sum().item()
    log_m = sum_log_max_complement(g, out=a).item()
    if L == 1:
        g.sub_(x)
    else:
        g.view(L, *x.shape).sub_(x)
    return relu - log_m - xa.item()


def _bernoulli_nll_rows(a, x, tmp, L) -> torch.Tensor:
    """Per-row ``sum_d softplus(a) - x a``, shape ``(L M,)``; same formula as above."""
    torch.sigmoid(a, out=tmp)
    log_m = sum_log_max_complement(tmp, out=tmp, per_row=True)
    relu = torch.clamp_min(a, 0.0, out=tmp).sum(1)
    xa = torch.mul(a.view(L, *x.shape), x, out=tmp.view(L, *x.shape)).sum(2).view(-1)
    return relu.sub_(log_m).sub_(xa)


def _gaussian_terms(out, x, plan, L):
    """Shared part of the Gaussian NLL: ``(mean, v, r = m - x, 1/var, q = r^2 / var)``."""
    D = x.shape[1]
    mean, v = out[:, :D], out[:, D:]
    g = plan.dec_dout
    gm, gv = g[:, :D], g[:, D:]
    if plan.tmp2 is not None:
        mean = torch.sigmoid(mean, out=plan.tmp2)
    r = torch.sub(mean.view(L, *x.shape), x, out=gm.view(L, *x.shape)).view(-1, D)
    iv = torch.neg(v, out=gv).exp_()  # 1 / var
    q = torch.mul(r, r, out=plan.tmp).mul_(iv)  # r^2 / var
    return mean, v, gm, gv, iv, q


def _gaussian_nll_grad(out, x, g, plan, L) -> float:
    """``sum (x - m)^2 exp(-v) / 2 + v / 2 + log(2 pi) / 2``; gradient into ``g``.

    ``g[:, :D] = (m - x) exp(-v)`` (times ``m (1 - m)`` with a sigmoid mean) and
    ``g[:, D:] = (1 - (x - m)^2 exp(-v)) / 2``.
    """
    mean, v, gm, gv, iv, q = _gaussian_terms(out, x, plan, L)
    nll = 0.5 * (q.sum().item() + v.sum().item()) + q.numel() * _HALF_LOG_2PI
    gm.mul_(iv)
    if plan.tmp2 is not None:
        _sigmoid_backward(gm, mean, grad_input=gm)
    torch.mul(q, -0.5, out=gv).add_(0.5)
    return nll


def _gaussian_nll_rows(out, x, plan, L) -> torch.Tensor:
    """Per-row Gaussian NLL, shape ``(L M,)``."""
    mean, v, gm, gv, iv, q = _gaussian_terms(out, x, plan, L)
    return (q.sum(1) + v.sum(1)).mul_(0.5).add_(x.shape[1] * _HALF_LOG_2PI)


class FastVAEObjective(BoundObjective):
    """The trainer's interface to :class:`FastVAE`: estimator A or B of a
    :class:`~pyro_aevb.poutine.TrainingProgram` whose programs are a supported VAE's own
    ``model``/``guide`` methods."""

    path = "fast"

    def __init__(self, program: TrainingProgram, estimator: str = "B", num_particles: int = 1):
        reason = self.unsupported_reason(program, estimator, num_particles)
        if reason is not None:
            raise ValueError(f"FastVAEObjective does not support this model: {reason}")
        super().__init__(program, estimator, num_particles)
        self.kernel = FastVAE(program.model.__self__, estimator, num_particles)

    @classmethod
    def unsupported_reason(
        cls, program: TrainingProgram, estimator: str = "B", num_particles: int = 1
    ) -> str | None:
        """``None`` if the program is a supported VAE's ``model``/``guide`` pair (see
        :meth:`FastVAE.unsupported_reason`), else why not."""
        vae = getattr(program.model, "__self__", None)
        if not isinstance(vae, VAE):
            return "the model is not a pyro_aevb VAE's model method"
        reason = FastVAE.unsupported_reason(vae, estimator, num_particles)
        if reason is not None:
            return reason
        model_fn, guide_fn = (
            getattr(program.model, "__func__", None),
            getattr(program.guide, "__func__", None),
        )
        if model_fn is not VAE.model or getattr(program.guide, "__self__", None) is not vae:
            return "the model/guide are not the VAE's own model and guide methods"
        if guide_fn is not VAE.guide:
            return f"{type(vae).__name__} overrides VAE.guide"
        if program.plate_name != "data":
            return f"plate_name is {program.plate_name!r}; the VAE's plate is 'data'"
        if any(m is not vae for m in program.modules):
            return "the program trains modules besides the VAE"
        return None

    def setup(self, x: torch.Tensor) -> None:
        # the VAE's programs register exactly its parameters; no trace needed for the fast path
        super().setup(x)
        if [id(p) for p in self.params] != [id(p) for p in self.kernel.params]:
            raise ValueError(
                "the VAE's programs touch parameters outside the VAE (Pyro's param store); "
                "use fast='off'"
            )

    def loss_and_grads(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel.loss_and_grads(x, self.program.num_data)

    def bound(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel.bound(x)
