r"""Fast fused training and evaluation path for :class:`pyro_aevb.models.VAE`.

:class:`FastVAEObjective` computes exactly what the stock Pyro estimators compute on
``vae.model``/``vae.guide`` -- the minibatch loss of eq. 8 with estimator A
(:class:`~pyro.infer.Trace_ELBO`) or B (:class:`~pyro_aevb.infer.elbo.AnalyticKL_ELBO`) and its
gradient -- but with a hand-derived forward and backward pass in plain torch instead of Pyro
traces plus autograd. Everything runs in preallocated buffers with fused BLAS calls
(``torch.addmm`` with ``alpha``/``beta`` and ``out=``), gradients are written straight into
each parameter's ``.grad`` and no autograd graph is built. The model and guide stay ordinary
Pyro programs: this module only recognises the :class:`~pyro_aevb.models.VAE` class and
reproduces its programs' arithmetic; anything it does not recognise runs on stock Pyro (see
:meth:`FastVAEObjective.unsupported_reason` and :func:`~pyro_aevb.infer.objective.make_objective`).

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
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from ..models.vae import VAE
from ..nets import BernoulliMLPDecoder, GaussianMLPDecoder, GaussianMLPEncoder
from ..validation import check_choice, check_data, check_positive_int
from .elbo import ESTIMATORS
from .objective import FAST_MODES, Objective
from .per_datapoint import elbo_per_datapoint

__all__ = ["FastVAEObjective", "evaluate_bound"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

# Methods of VAE that together define the Pyro programs whose arithmetic we reproduce. A
# subclass overriding any of them may compute something else, so it runs on stock Pyro.
_PROGRAM_METHODS = (
    "model",
    "guide",
    "likelihood_dist",
    "encode",
    "log_weight_prior",
    "_plate",
    "_check_x",
)

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
        out_dim = D if vae.likelihood == "bernoulli" else 2 * D
        self.enc_h = [new(rows, lin.out_features) for lin in vae.encoder.hidden]
        self.enc_dh = [new(rows, lin.out_features) for lin in vae.encoder.hidden]
        self.enc_out = new(rows, 2 * J)  # [mu, lv]
        self.enc_dout = new(rows, 2 * J)  # [dmu, dlv]
        self.sigma = new(rows, J)
        self.tmp_mj = new(rows, J)
        self.eps = new(particles, rows, J)
        self.z = new(particles, rows, J)
        self.dz = new(LM, J)
        self.dec_h = [new(LM, lin.out_features) for lin in vae.decoder.hidden]
        self.dec_dh = [new(LM, lin.out_features) for lin in vae.decoder.hidden]
        self.dec_out = new(LM, out_dim)
        self.dec_dout = new(LM, out_dim)  # dNLL/d(decoder output), unscaled
        self.tmp = new(LM, D)
        self.tmp2 = new(LM, D) if vae.likelihood == "gaussian" and vae.sigmoid_mean else None


class FastVAEObjective(Objective):
    """Estimator A or B for :class:`~pyro_aevb.models.VAE`, forward and backward by hand.

    Parameters
    ----------
    module : VAE
        Must be supported (:meth:`unsupported_reason` returns ``None``), else ``ValueError``.
    estimator : {"A", "B"}
        ``"A"``: generic SGVB (eq. 6, ``Trace_ELBO``); ``"B"``: analytic KL (eq. 7,
        ``AnalyticKL_ELBO``).
    num_particles : int
        ``L``, the number of ``z`` draws per datapoint, averaged. The decoder runs once on
        the ``L * M`` stacked draws (the encoder output is the same for every particle).

    Notes
    -----
    The objective owns one gradient buffer per parameter and assigns it to ``p.grad`` on
    every :meth:`loss_and_grads` call (overwriting the previous values), so
    ``optimizer.zero_grad()`` between steps is allowed but unnecessary.
    """

    path = "fast"

    def __init__(self, module: VAE, estimator: str = "B", num_particles: int = 1):
        reason = self.unsupported_reason(module, estimator, num_particles)
        if reason is not None:
            raise ValueError(f"FastVAEObjective does not support this model: {reason}")
        super().__init__(module, estimator, num_particles)
        self.vae = module
        self._enc = _linear_layers(module.encoder)
        self._dec = _linear_layers(module.decoder)
        # Position in self.params (= module.parameters()) of each layer's (weight, bias).
        index = {id(p): i for i, p in enumerate(self.params)}
        self._enc_idx = [(index[id(lin.weight)], index[id(lin.bias)]) for lin in self._enc]
        self._dec_idx = [(index[id(lin.weight)], index[id(lin.bias)]) for lin in self._dec]
        self._plans: OrderedDict = OrderedDict()
        self._grads: dict = {}

    # ------------------------------------------------------------------ support
    @classmethod
    def unsupported_reason(
        cls, module: nn.Module, estimator: str = "B", num_particles: int = 1
    ) -> str | None:
        """``None`` if the fast path computes this model's objective exactly, else why not.

        Supported: a :class:`~pyro_aevb.models.VAE` (or a subclass that overrides none of
        the methods defining its Pyro programs) whose encoder is a
        :class:`~pyro_aevb.nets.GaussianMLPEncoder` and decoder a
        :class:`~pyro_aevb.nets.BernoulliMLPDecoder` or
        :class:`~pyro_aevb.nets.GaussianMLPDecoder` (exact classes: tanh layers, any number,
        plain ``nn.Linear`` with bias), all parameters trainable and of one float32/float64
        dtype on one device; estimator ``"A"`` or ``"B"``; any ``num_particles >= 1``.
        """
        if not isinstance(module, VAE):
            return f"{type(module).__name__} is not a pyro_aevb.models.VAE"
        for name in _PROGRAM_METHODS:
            if getattr(type(module), name) is not getattr(VAE, name):
                return f"{type(module).__name__} overrides VAE.{name}"
        if estimator not in ESTIMATORS:
            return f"unknown estimator {estimator!r}"
        if isinstance(num_particles, bool) or not isinstance(num_particles, int):
            return f"num_particles must be an int, got {num_particles!r}"
        if num_particles < 1:
            return f"num_particles must be >= 1, got {num_particles}"
        enc, dec = module.encoder, module.decoder
        if type(enc) is not GaussianMLPEncoder:
            return f"encoder is a {type(enc).__name__}, not a GaussianMLPEncoder"
        dec_type = BernoulliMLPDecoder if module.likelihood == "bernoulli" else GaussianMLPDecoder
        if type(dec) is not dec_type:
            return (
                f"decoder is a {type(dec).__name__}, not the {dec_type.__name__} that "
                f"likelihood={module.likelihood!r} expects"
            )
        if module.likelihood == "gaussian" and dec.sigmoid_mean != module.sigmoid_mean:
            return "decoder.sigmoid_mean differs from the VAE's sigmoid_mean"
        for net_name, net in (("encoder", enc), ("decoder", dec)):
            if net.activation != "tanh":
                return f"{net_name} activation is {net.activation!r}, not 'tanh'"
            for lin in _linear_layers(net):
                if type(lin) is not nn.Linear or lin.bias is None:
                    return f"{net_name} has a layer that is not an nn.Linear with bias"
        if (enc.data_dim, enc.latent_dim) != (module.data_dim, module.latent_dim) or (
            dec.data_dim,
            dec.latent_dim,
        ) != (module.data_dim, module.latent_dim):
            return "encoder/decoder dimensions differ from the VAE's data_dim/latent_dim"
        net_params = [
            p for lin in _linear_layers(enc) + _linear_layers(dec) for p in lin.parameters()
        ]
        params = list(module.parameters())
        if len(params) != len(net_params) or {id(p) for p in params} != {id(p) for p in net_params}:
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
    def _plan(self, rows: int, particles: int, dtype, device) -> _Plan:
        key = (rows, particles, dtype, device)
        plan = self._plans.get(key)
        if plan is None:
            plan = _Plan(self.vae, rows, particles, dtype, device)
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
    def loss_and_grads(self, x: torch.Tensor, num_data: int) -> torch.Tensor:
        """Minibatch loss of eq. 8 and its gradient; see the module docstring for formulas.

        Parameters
        ----------
        x : torch.Tensor
            Minibatch, shape ``(M, D)``, the parameters' dtype and device; values are
            assumed valid (checked once by the caller).
        num_data : int
            ``N``, the full data set size (``N >= M``); the data terms are scaled by
            ``N / M``.

        Returns
        -------
        torch.Tensor
            The loss ``-(N/M) sum_i L_i - log p(theta)``, a detached 0-dim tensor; the
            gradient of this loss is written into ``p.grad`` for every parameter.
        """
        dtype, device = self._check_x(x)
        M = x.shape[0]
        if num_data is None:
            num_data = M
        elif isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < M:
            raise ValueError(
                f"num_data (the full data set size N) must be an int >= the minibatch size "
                f"{M}, got {num_data!r}"
            )
        with torch.no_grad():
            plan = self._plan(M, self.num_particles, dtype, device)
            grads = self._grad_buffers(dtype, device)
            loss = self._run(plan, x, num_data / M, grads)
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g
        return loss

    def bound(self, x: torch.Tensor) -> torch.Tensor:
        """Per-datapoint bound ``L_i`` (no weight prior, unscaled), ``(M,)``, no gradient.

        Averaged over ``num_particles`` draws of ``z``; estimator A or B as configured::

            L_i^B = -KL_i - (1/L) sum_l NLL_li
            L_i^A = -(1/L) sum_l [NLL_li + 1/2 sum_j (z^2 - eps^2 - lv)]
        """
        dtype, device = self._check_x(x)
        with torch.no_grad():
            plan = self._plan(x.shape[0], self.num_particles, dtype, device)
            return self._run(plan, x, 1.0, None)

    # ------------------------------------------------------------------ the computation
    def _run(self, plan: _Plan, x: torch.Tensor, scale: float, grads):
        """Forward pass, loss, and (if ``grads`` is a buffer list) the backward pass.

        With ``grads=None`` returns the per-datapoint bound ``(M,)`` instead of the loss.
        """
        vae = self.vae
        L = self.num_particles
        M = x.shape[0]
        J = vae.latent_dim
        per_row = grads is None
        c = scale / L
        analytic = self.estimator == "B"

        # ---- encoder: tanh layers, then the fused (mu, lv) head.
        h = x
        for lin, buf in zip(self._enc[:-1], plan.enc_h, strict=True):
            torch.addmm(lin.bias, h, lin.weight.t(), out=buf)
            buf.tanh_()
            h = buf
        head = self._enc[-1]
        o = plan.enc_out
        torch.addmm(head.bias, h, head.weight.t(), out=o)
        mu, lv = o[:, :J], o[:, J:]

        # ---- guide draws, in the order Pyro's guide makes them (one (M, J) block each).
        sigma = plan.sigma
        torch.mul(lv, 0.5, out=sigma)
        sigma.exp_()
        eps, z = plan.eps, plan.z
        for l in range(L):
            eps[l].normal_()
        torch.mul(eps, sigma, out=z)  # same rounding as Normal.rsample: mu + eps * sigma
        z.add_(mu)
        z2 = z.view(L * M, J)

        # ---- decoder.
        h = z2
        for lin, buf in zip(self._dec[:-1], plan.dec_h, strict=True):
            torch.addmm(lin.bias, h, lin.weight.t(), out=buf)
            buf.tanh_()
            h = buf
        out_lin = self._dec[-1]
        out = plan.dec_out
        torch.addmm(out_lin.bias, h, out_lin.weight.t(), out=out)

        # ---- reconstruction term NLL and its gradient dNLL/d(out) (unscaled) in dec_dout.
        x3 = x.unsqueeze(0)  # broadcasts over the L particles
        g = plan.dec_dout
        if vae.likelihood == "bernoulli":
            nll = self._bernoulli(out, x, g, plan.tmp, L, M, per_row)
        else:
            nll = self._gaussian(out, x3, g, plan, L, M, per_row)

        # ---- latent terms.
        if analytic:
            # KL_i = 1/2 sum_j (mu^2 + sigma^2 - 1 - lv)
            t = plan.tmp_mj
            torch.mul(mu, mu, out=t)
            t.addcmul_(sigma, sigma).sub_(lv)
            if per_row:
                return -(t.sum(1).sub_(J).mul_(0.5)) - nll.view(L, M).mean(0)
            latent = (t.sum() - M * J) * (0.5 * scale)
        else:
            # log q - log p(z) = 1/2 sum_j (z^2 - eps^2 - lv) per particle
            if per_row:
                zz = (z * z - eps * eps).sum(2)  # (L, M)
                return -((nll.view(L, M) + 0.5 * zz).mean(0) - 0.5 * lv.sum(1))
            zz = torch.dot(z2.reshape(-1), z2.reshape(-1)) - torch.dot(eps.view(-1), eps.view(-1))
            latent = zz * (0.5 * c) - lv.sum() * (0.5 * scale)
        loss = nll * c + latent

        # ---- weight prior |theta|^2 / (2 s_p^2); its gradient enters through beta below.
        wd = 0.0
        if vae.weight_prior_std is not None:
            wd = 1.0 / vae.weight_prior_std**2
            sq = [torch.dot(p.view(-1), p.view(-1)) for p in self.params]
            loss = loss + torch.stack(sq).sum() * (0.5 * wd)

        # ---- backward through the decoder; the factor c enters via alpha of the matmuls.
        n_dec = len(self._dec)
        dh = g
        for k in range(n_dec - 1, -1, -1):
            if k < n_dec - 1:
                _tanh_backward(dh, plan.dec_h[k], grad_input=dh)
            h_in = plan.dec_h[k - 1] if k > 0 else z2
            iw, ib = self._dec_idx[k]
            dh = self._linear_backward(
                self._dec[k],
                dh,
                h_in,
                c if k == n_dec - 1 else 1.0,
                wd,
                grads[iw],
                grads[ib],
                plan.dec_dh[k - 1] if k > 0 else plan.dz,
            )
        dz = dh  # dloss/dz, (L M, J), already scaled
        if not analytic:
            dz.add_(z2, alpha=c)  # -log p(z) = z^2/2 + const

        # ---- through z = mu + eps * sigma to the encoder head [dmu, dlv].
        dz3 = dz.view(L, M, J)
        do = plan.enc_dout
        dmu, dlv = do[:, :J], do[:, J:]
        torch.sum(dz3, 0, out=dmu)
        dz3.mul_(eps)
        torch.sum(dz3, 0, out=dlv)
        dlv.mul_(sigma).mul_(0.5)
        if analytic:
            dmu.add_(mu, alpha=scale)  # d KL / d mu = mu
            dlv.addcmul_(sigma, sigma, value=0.5 * scale).sub_(0.5 * scale)  # (sigma^2-1)/2
        else:
            dlv.sub_(0.5 * scale)  # d log q / d lv = -1/2 (total derivative)

        # ---- backward through the encoder (no gradient for x).
        n_enc = len(self._enc)
        dh = do
        for k in range(n_enc - 1, -1, -1):
            lin = self._enc[k]
            if k < n_enc - 1:
                _tanh_backward(dh, plan.enc_h[k], grad_input=dh)
            h_in = plan.enc_h[k - 1] if k > 0 else x
            iw, ib = self._enc_idx[k]
            dh = self._linear_backward(
                lin, dh, h_in, 1.0, wd, grads[iw], grads[ib], plan.enc_dh[k - 1] if k > 0 else None
            )
        return loss

    @staticmethod
    def _linear_backward(lin, dpre, h_in, alpha, wd, gW, gb, dh_out):
        """Gradients of ``pre = h_in W^T + b`` given ``dpre`` (to be scaled by ``alpha``).

        ``gW = alpha dpre^T h_in + wd W``, ``gb = alpha sum_rows dpre + wd b`` and, unless
        ``dh_out`` is ``None``, ``dh_in = alpha dpre W`` written into ``dh_out``.
        """
        W, b = lin.weight, lin.bias
        torch.addmm(W, dpre.t(), h_in, beta=wd, alpha=alpha, out=gW)
        torch.sum(dpre, 0, out=gb)
        if alpha != 1.0:
            gb.mul_(alpha)
        if wd:
            gb.add_(b, alpha=wd)
        if dh_out is None:
            return None
        # beta=0: the old contents of dh_out are ignored (NaN-safe, per torch docs).
        torch.addmm(dh_out, dpre, W, beta=0.0, alpha=alpha, out=dh_out)
        return dh_out

    @staticmethod
    def _bernoulli(a, x, g, tmp, L, M, per_row):
        """``NLL = sum softplus(a) - x a`` (total, or per row ``(L M,)``); ``g = sigmoid(a) - x``.

        ``softplus(a) = relu(a) - log(max(y, 1 - y))`` with ``y = sigmoid(a)``: exact in both
        tails and reuses ``y``, which the gradient needs anyway (cheaper than a separate
        softplus or BCE kernel).
        """
        torch.sigmoid(a, out=g)
        torch.mul(g, -1.0, out=tmp).add_(1.0)  # 1 - y
        torch.maximum(g, tmp, out=tmp).log_()
        if per_row:
            nll = torch.relu(a).sum(1) - tmp.sum(1) - (a.view(L, M, -1) * x).sum(2).view(-1)
        else:
            xa = (
                torch.mv(a.view(L, -1), x.reshape(-1)).sum()
                if L > 1
                else torch.dot(a.view(-1), x.reshape(-1))
            )
            nll = torch.relu(a).sum() - tmp.sum() - xa
        g.view(L, M, -1).sub_(x)
        return nll

    @staticmethod
    def _gaussian(out, x3, g, plan, L, M, per_row):
        """Gaussian ``NLL = sum (x - m)^2 exp(-v) / 2 + v / 2 + log(2 pi) / 2``; gradient in g.

        ``g[:, :D] = (m - x) exp(-v)`` (times ``m (1 - m)`` with a sigmoid mean) and
        ``g[:, D:] = (1 - (x - m)^2 exp(-v)) / 2``.
        """
        D = x3.shape[-1]
        mean, v = out[:, :D], out[:, D:]
        gm, gv = g[:, :D], g[:, D:]
        if plan.tmp2 is not None:
            mean = torch.sigmoid(mean, out=plan.tmp2)
        torch.sub(mean.view(L, M, D), x3, out=gm.view(L, M, D))  # r = m - x
        torch.neg(v, out=gv).exp_()  # 1 / var
        q = plan.tmp
        torch.mul(gm, gm, out=q).mul_(gv)  # r^2 / var
        if per_row:
            nll = (q.sum(1) + v.sum(1)) * 0.5 + D * _HALF_LOG_2PI
        else:
            nll = (q.sum() + v.sum()) * 0.5 + (out.shape[0] * D * _HALF_LOG_2PI)
        gm.mul_(gv)
        if plan.tmp2 is not None:
            _sigmoid_backward(gm, mean, grad_input=gm)
        torch.mul(q, -0.5, out=gv).add_(0.5)
        return nll


def evaluate_bound(
    module: nn.Module,
    data: torch.Tensor,
    batch_size: int = 1000,
    estimator: str = "B",
    num_particles: int = 1,
    fast: str = "auto",
) -> torch.Tensor:
    """Per-datapoint bound ``L_i`` of every row of ``data``, in batches, without gradient.

    Parameters
    ----------
    module : nn.Module
        A model object with Pyro ``model(x, num_data)``/``guide(x, num_data)``, e.g. a
        :class:`~pyro_aevb.models.VAE`.
    data : torch.Tensor
        ``(N, D)``, validated once here (finite; in [0, 1] for a Bernoulli decoder) and
        converted to the parameters' dtype.
    batch_size : int
        Rows per batch (memory grows with ``batch_size * num_particles * D``).
    estimator : {"A", "B"}
        Generic (eq. 6) or analytic-KL (eq. 7) estimator.
    num_particles : int
        ``L``, draws of ``z`` averaged per datapoint.
    fast : {"auto", "on", "off"}
        Use :class:`FastVAEObjective` when it supports ``module`` (``"auto"``), require it
        (``"on"``, ``ValueError`` otherwise) or use Pyro's traces
        (:func:`~pyro_aevb.infer.per_datapoint.elbo_per_datapoint`, ``"off"``).

    Returns
    -------
    torch.Tensor
        ``(N,)``, ``L_i`` without the weight prior and without minibatch scaling. Draws come
        from the global torch RNG in batch order, so the result equals one pass over all rows
        only in distribution (and exactly, for a fixed seed, the same computation batch by
        batch).
    """
    check_choice(estimator, "estimator", ESTIMATORS)
    check_choice(fast, "fast", FAST_MODES)
    num_particles = check_positive_int(num_particles, "num_particles")
    batch_size = check_positive_int(batch_size, "batch_size")
    params = list(module.parameters())
    dtype = params[0].dtype if params else torch.get_default_dtype()
    data = check_data(
        data,
        "data",
        getattr(module, "data_dim", None),
        unit_interval=getattr(module, "likelihood", None) == "bernoulli",
    ).to(dtype)
    objective = None
    if fast != "off":
        reason = FastVAEObjective.unsupported_reason(module, estimator, num_particles)
        if reason is None:
            objective = FastVAEObjective(module, estimator, num_particles)
        elif fast == "on":
            raise ValueError(f"fast='on' but the fast path does not support this model: {reason}")
    if objective is not None:
        # The fast path never scans values per batch; data was validated above.
        return torch.cat([objective.bound(xb) for xb in data.split(batch_size)])
    validate = getattr(module, "validate", None)
    try:
        if validate is not None:
            module.validate = False  # validated once above, not once per batch
        with torch.no_grad():
            return torch.cat(
                [
                    elbo_per_datapoint(
                        module.model,
                        module.guide,
                        xb,
                        estimator=estimator,
                        num_particles=num_particles,
                    )
                    for xb in data.split(batch_size)
                ]
            )
    finally:
        if validate is not None:
            module.validate = validate
