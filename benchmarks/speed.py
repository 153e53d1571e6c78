#!/usr/bin/env python
"""Training speed of pyro-aevb's fast path against stock Pyro and a hand-written PyTorch loop.

A script, not a test. For each architecture (the paper's MNIST model 784-500-20 and the small
784-100-3 model; batch 100, Adagrad step size 0.01, all parameters initialised from
N(0, 0.1^2) -- the paper's N(0, 0.01), variance 0.01 -- N(0, I) weight prior, N/M minibatch
scaling), it times, in one process:

* ``ours``            -- what :mod:`pyro_aevb.train.trainer` does each step with the default
  objective (``ELBO("B").bind(...)``, the fast path) and optimizer
  (``make_optimizer("adagrad", ...)``): gather the minibatch as the trainer does,
  ``torch.index_select(x, 0, idx)`` (the loops written by hand and the stock-Pyro rows use
  ``x[idx]``, as users write it; the gather is 59 us against 15 us for 100 MNIST rows here),
  ``loss = objective.loss_and_grads(xb, N)``, ``loss.item()``, finiteness check,
  ``optimizer.step()``;
* ``pytorch``         -- the reference: a hand-written PyTorch loop of the same model and loss
  (``nn.Module`` encoder/decoder, BCE-with-logits sum + analytic KL, same N/M scaling and
  weight prior, ``loss.backward()``, ``torch.optim.Adagrad`` with its defaults,
  ``loss.item()``);
* ``pyro``            -- stock Pyro ``SVI`` + ``Trace_ELBO`` (estimator A) on ``vae.model`` /
  ``vae.guide`` with ``pyro.optim.Adagrad``;
* ``pyro-meanfield``  -- stock Pyro ``SVI`` + ``TraceMeanField_ELBO`` (analytic KL);
* ``numpyro``         -- optional (when ``import numpyro`` works): the same model in NumPyro,
  ``SVI`` + ``TraceMeanField_ELBO``, ``jax.jit``-compiled update, Adagrad without momentum;
* ``pytorch-compile`` -- optional (``--variants``): the reference loss under
  ``torch.compile``.

User-model rows (the main use of the library: a model that is not the paper's class). The
model is Pyro's ``examples/vae/vae.py`` VAE as users write it -- softplus MLPs, a Bernoulli
decoder on probabilities, ``pyro.module``, ``pyro.plate("data", len(x))``, no ``num_data``
keyword and no weight prior -- at 784-400-50 (Pyro's example) and 784-100-3, estimator B,
batch 100, Adagrad:

* ``user-compiled`` -- what ``fit`` runs for it: ``ELBO("B").bind(...)`` takes the compiled
  path (:mod:`pyro_aevb.infer.objectives.compiled`), here with the inductor engine that
  ``engine="auto"`` picks for long runs (its compile time is in the warm-up column);
* ``user-replay`` -- the compiled path's replay engine (no compilation, bitwise stock Pyro);
* ``user-pyro`` -- stock Pyro ``SVI`` + ``Trace_ELBO`` on the same programs;
* ``user-pytorch`` -- the reference for these rows: a hand-written PyTorch loop of the same
  network and loss (``binary_cross_entropy`` on the probabilities + analytic KL, N/M scaling,
  ``loss.backward()``, ``torch.optim.Adagrad`` with its defaults);
* ``autoguide`` -- the same model with its hand-written guide replaced by
  ``AmortizedNormal(model)`` (one softplus hidden layer of the same size), through the
  compiled path.

Paper variants run on the paper's architectures (784-500-20, 784-100-3), user variants on
784-400-50 and 784-100-3; each family's ratios are against its own hand-written loop.

Every variant takes its minibatches the same way (consecutive slices of a random permutation
of the training rows, like the trainer). Timing runs in interleaved blocks: in each round
every variant runs ``--steps`` steps, the reference first in even rounds and last in odd
rounds. Reported per variant: the median samples/s over blocks, and the median of the paired
ratios (each block of the variant divided by the same round's reference block -- drift and
background load largely cancel), against the PyTorch loop and against stock Pyro.

Warm-up is reported separately: the seconds to build the variant (including any compilation)
plus its first ``--warmup`` steps, which are excluded from the timed blocks, and the first
step alone. Peak memory is measured in a fresh subprocess per variant and architecture: the
peak resident set size (Linux ``VmHWM``, reset via ``/proc/self/clear_refs`` right before the
variant is built) minus the resident set size at that moment, i.e. the extra memory the
variant needs on top of the imported libraries and the data set; where ``/proc`` is not
available, the growth of ``resource.getrusage(RUSAGE_SELF).ru_maxrss``.

Data: real MNIST training rows when ``PYRO_AEVB_DATA`` is set and
``pyro_aevb.data.load_dataset("mnist")`` works, else ``torch.rand(50000, 784)``.

Example::

    python benchmarks/speed.py --threads 1 --steps 100 --blocks 7 --json speed.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ARCHS = {"784-500-20": (784, 500, 20), "784-100-3": (784, 100, 3), "784-400-50": (784, 400, 50)}
PAPER_VARIANTS = ["ours", "pytorch", "pyro", "pyro-meanfield", "numpyro"]
USER_VARIANTS = ["user-compiled", "user-replay", "user-pyro", "user-pytorch", "autoguide"]
DEFAULT_VARIANTS = PAPER_VARIANTS + USER_VARIANTS
ALL_VARIANTS = DEFAULT_VARIANTS + ["pytorch-compile"]
#: Which architectures each family runs on, and its reference (the hand-written loop).
FAMILY_ARCHS = {"paper": ("784-500-20", "784-100-3"), "user": ("784-400-50", "784-100-3")}
FAMILY_REFERENCE = {"paper": "pytorch", "user": "user-pytorch"}
FAMILY_STOCK = {"paper": "pyro", "user": "user-pyro"}
REFERENCE = "pytorch"


def family(variant: str) -> str:
    return "user" if variant in USER_VARIANTS else "paper"


def _autoguide_available() -> bool:
    try:
        import pyro_aevb.autoguide  # noqa: F401
    except ImportError:
        return False
    return True


def _numpyro_available() -> bool:
    try:
        import numpyro  # noqa: F401
    except Exception:
        return False
    return True


def _setup_threads(threads: int) -> None:
    """Thread count for torch (and XLA, which reads its flags at import)."""
    if threads == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (
            flags + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        ).strip()
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)


# ---------------------------------------------------------------------------- data
def load_data(num_rows: int, seed: int):
    """``(X, source)``: MNIST training rows if available, else uniform [0, 1) noise."""
    import torch

    if os.environ.get("PYRO_AEVB_DATA"):
        try:
            from pyro_aevb.data import load_dataset

            ds = load_dataset("mnist", download=False)
            X = ds.train.to(torch.float32).contiguous()
            return X, f"MNIST train ({X.shape[0]} rows) from $PYRO_AEVB_DATA"
        except Exception as err:  # the data package may be missing or incomplete
            print(f"[speed] MNIST not loaded ({type(err).__name__}: {err}); using torch.rand")
    g = torch.Generator().manual_seed(seed)
    return torch.rand(num_rows, 784, generator=g), f"torch.rand({num_rows}, 784)"


class Batches:
    """Consecutive minibatches of a fresh random permutation per epoch (as the trainer)."""

    def __init__(self, X, batch_size: int, seed: int):
        import torch

        self.X, self.M = X, batch_size
        self.N = X.shape[0]
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(self.N, generator=self.gen)
        self.pos = 0

    def next_index(self):
        import torch

        if self.pos + self.M > self.N:
            self.perm = torch.randperm(self.N, generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.M]
        self.pos += self.M
        return idx


# ---------------------------------------------------------------------------- variants
def make_ours(arch, X, args):
    import torch

    from pyro_aevb.infer import ELBO
    from pyro_aevb.models import mlp_vae
    from pyro_aevb.poutine import TrainingProgram
    from pyro_aevb.train.optim import make_optimizer

    D, H, J = arch
    torch.manual_seed(args.seed)
    vae = mlp_vae(
        D, J, H, weight_prior_std=args.weight_prior, init_std=args.init_std, name="vae_ours"
    )
    N = X.shape[0]
    # the objective the trainer binds for fit(vae, X, estimator="B")
    program = TrainingProgram(vae.model, vae.guide, num_data=N)
    objective = ELBO("B", 1).bind(program, fast="auto")
    if objective.path != "fast":
        raise RuntimeError(f"expected the fast path, got {objective.path!r}")
    objective.setup(X[: args.batch_size])
    optimizer = make_optimizer("adagrad", list(objective.params), lr=args.lr)
    batches = Batches(X, args.batch_size, args.seed)

    def step():
        idx = batches.next_index()
        xb = torch.index_select(X, 0, idx)  # the trainer's gather (4x faster than X[idx])
        # The trainer's step: loss_and_grads(xb).item(), finiteness check, optimizer.step().
        value = objective.train_step(xb, idx, optimizer)
        if not math.isfinite(value):
            raise FloatingPointError(f"non-finite loss {value}")
        return value

    return step


def _reference_module(arch, weight_prior, init_std):
    import torch
    import torch.nn.functional as F
    from torch import nn

    D, H, J = arch

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Linear(D, H)
            self.out = nn.Linear(H, 2 * J)

        def forward(self, x):
            return self.out(torch.tanh(self.hidden(x))).chunk(2, dim=-1)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Linear(J, H)
            self.out = nn.Linear(H, D)

        def forward(self, z):
            return self.out(torch.tanh(self.hidden(z)))

    class ReferenceVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder = Encoder(), Decoder()
            with torch.no_grad():
                for p in self.parameters():
                    p.normal_(0.0, init_std)

        def loss(self, x, scale: float):
            """-(N/M) sum_i L^B_i + |theta|^2 / (2 s^2), estimator B, one particle."""
            mu, log_var = self.encoder(x)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
            logits = self.decoder(z)
            rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            kl = -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp())
            loss = scale * (rec + kl)
            if weight_prior is not None:
                loss = loss + sum(p.pow(2).sum() for p in self.parameters()) / (2 * weight_prior**2)
            return loss

    return ReferenceVAE()


def make_pytorch(arch, X, args, compile_loss=False):
    import torch

    torch.manual_seed(args.seed)
    net = _reference_module(arch, args.weight_prior, args.init_std)
    optimizer = torch.optim.Adagrad(net.parameters(), lr=args.lr)
    loss_fn = torch.compile(net.loss) if compile_loss else net.loss
    batches = Batches(X, args.batch_size, args.seed)
    N = X.shape[0]
    scale = N / args.batch_size

    def step():
        xb = X[batches.next_index()]
        optimizer.zero_grad()
        loss = loss_fn(xb, scale)
        loss.backward()
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"non-finite loss {value}")
        optimizer.step()
        return value

    return step


def make_pyro(arch, X, args, meanfield=False):
    import pyro
    import torch
    from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

    from pyro_aevb.models import mlp_vae

    D, H, J = arch
    torch.manual_seed(args.seed)
    name = "vae_pyro_mf" if meanfield else "vae_pyro"
    # validate=False: our model's own per-call data check is not part of stock Pyro.
    vae = mlp_vae(
        D,
        J,
        H,
        weight_prior_std=args.weight_prior,
        init_std=args.init_std,
        name=name,
        validate=False,
    )
    elbo = TraceMeanField_ELBO() if meanfield else Trace_ELBO()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adagrad({"lr": args.lr}), elbo)
    batches = Batches(X, args.batch_size, args.seed)
    N = X.shape[0]

    def step():
        xb = X[batches.next_index()]
        value = svi.step(xb, N)  # loss.backward(), optimizer step; returns a float
        if not math.isfinite(value):
            raise FloatingPointError(f"non-finite loss {value}")
        return value

    return step


def make_numpyro(arch, X, args):
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    import numpyro.distributions as nd
    from numpyro.handlers import scale as scale_handler
    from numpyro.infer import SVI, TraceMeanField_ELBO

    D, H, J = arch
    M = args.batch_size
    N = X.shape[0]
    keys = iter(jax.random.split(jax.random.PRNGKey(args.seed), 16))
    shapes = {
        "enc_W1": (D, H), "enc_b1": (H,), "enc_W2": (H, 2 * J), "enc_b2": (2 * J,),
        "dec_W1": (J, H), "dec_b1": (H,), "dec_W2": (H, D), "dec_b2": (D,),
    }  # fmt: skip
    init = {k: args.init_std * jax.random.normal(next(keys), s) for k, s in shapes.items()}
    enc_names = [k for k in shapes if k.startswith("enc")]
    dec_names = [k for k in shapes if k.startswith("dec")]
    wp = args.weight_prior

    def model(x):
        p = {k: numpyro.param(k, init[k]) for k in dec_names}
        if wp is not None:
            q = {k: numpyro.param(k, init[k]) for k in enc_names}
            sq = sum(jnp.sum(v**2) for v in [*p.values(), *q.values()])
            numpyro.factor("weight_prior", -0.5 * sq / wp**2)
        with scale_handler(scale=N / M), numpyro.plate("data", M):
            z = numpyro.sample("z", nd.Normal(jnp.zeros((M, J)), 1.0).to_event(1))
            logits = jnp.tanh(z @ p["dec_W1"] + p["dec_b1"]) @ p["dec_W2"] + p["dec_b2"]
            # -BCE-with-logits; numpyro's Bernoulli rejects the fractional targets.
            log_lik = jnp.sum(x * logits - jax.nn.softplus(logits), axis=-1)
            numpyro.factor("x", log_lik)

    def guide(x):
        q = {k: numpyro.param(k, init[k]) for k in enc_names}
        out = jnp.tanh(x @ q["enc_W1"] + q["enc_b1"]) @ q["enc_W2"] + q["enc_b2"]
        mu, log_var = out[:, :J], out[:, J:]
        with scale_handler(scale=N / M), numpyro.plate("data", M):
            numpyro.sample("z", nd.Normal(mu, jnp.exp(0.5 * log_var)).to_event(1))

    svi = SVI(model, guide, numpyro.optim.Adagrad(step_size=args.lr, momentum=0.0),
              TraceMeanField_ELBO())  # fmt: skip
    Xn = X.numpy()
    batches = Batches(X, M, args.seed)
    state = [svi.init(jax.random.PRNGKey(args.seed), jnp.asarray(Xn[:M]))]
    update = jax.jit(functools.partial(svi.update))

    def step():
        xb = jnp.asarray(Xn[batches.next_index().numpy()])
        state[0], loss = update(state[0], xb)
        value = float(loss)
        if not math.isfinite(value):
            raise FloatingPointError(f"non-finite loss {value}")
        return value

    del np
    return step


def _pyro_example_vae(arch, seed, name):
    """Pyro's example VAE, written the ordinary Pyro way (model(x) / guide(x))."""
    import torch

    from pyro_aevb.models import PyroExampleVAE

    D, H, J = arch
    torch.manual_seed(seed)
    return PyroExampleVAE(z_dim=J, hidden_dim=H, data_dim=D, prefix=name + "_")


def make_user_compiled(arch, X, args, engine="inductor", autoguide=False):
    import pyro
    import torch

    from pyro_aevb.infer import ELBO
    from pyro_aevb.poutine import TrainingProgram
    from pyro_aevb.train.optim import make_optimizer

    pyro.clear_param_store()
    vae = _pyro_example_vae(arch, args.seed, f"user_{engine}")
    guide = vae.guide
    if autoguide:
        from pyro_aevb.autoguide import AmortizedNormal

        # the hand-written guide's encoder: one softplus hidden layer of Pyro's example size
        guide = AmortizedNormal(vae.model, hidden_dims=[arch[1]], activation="softplus")
    N = X.shape[0]
    program = TrainingProgram(vae.model, guide, num_data=N, modules=[vae])
    objective = ELBO("B", 1, engine=engine).bind(program, fast="on")
    with torch.random.fork_rng(devices=[]):
        objective.setup(X[: args.batch_size])
    optimizer = make_optimizer("adagrad", list(objective.params), lr=args.lr)
    batches = Batches(X, args.batch_size, args.seed)

    def step():
        idx = batches.next_index()
        xb = torch.index_select(X, 0, idx)  # the trainer's gather (4x faster than X[idx])
        value = objective.train_step(xb, idx, optimizer)
        if not math.isfinite(value):
            raise FloatingPointError(f"non-finite loss {value}")
        return value

    step()  # the first step compiles (inductor) and is part of the warm-up
    if objective.path != "compiled" or objective.engine != engine:
        raise RuntimeError(f"expected the compiled path ({engine}), got {objective.path_reason}")
    return step


def make_user_pyro(arch, X, args):
    import pyro
    from pyro.infer import SVI, Trace_ELBO

    pyro.clear_param_store()
    vae = _pyro_example_vae(arch, args.seed, "user_pyro")
    svi = SVI(vae.model, vae.guide, pyro.optim.Adagrad({"lr": args.lr}), Trace_ELBO())
    batches = Batches(X, args.batch_size, args.seed)
    scale = X.shape[0] / args.batch_size

    def step():
        xb = X[batches.next_index()]
        with pyro.poutine.scale(scale=scale):  # N/M, as the trainer's DataPlateScale does
            value = svi.step(xb)
        if not math.isfinite(value):
            raise FloatingPointError(f"non-finite loss {value}")
        return value

    return step


def make_user_pytorch(arch, X, args):
    import torch
    import torch.nn.functional as F

    vae = _pyro_example_vae(arch, args.seed, "user_pytorch")  # the same networks, no Pyro
    encoder, decoder = vae.encoder, vae.decoder
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adagrad(params, lr=args.lr)
    batches = Batches(X, args.batch_size, args.seed)
    scale = X.shape[0] / args.batch_size

    def step():
        xb = X[batches.next_index()]
        optimizer.zero_grad()
        mu, sigma = encoder(xb)
        z = mu + torch.randn_like(mu) * sigma
        rec = F.binary_cross_entropy(decoder(z), xb, reduction="sum")
        kl = (0.5 * (mu * mu + sigma * sigma) - sigma.log() - 0.5).sum()
        loss = scale * (rec + kl)
        loss.backward()
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"non-finite loss {value}")
        optimizer.step()
        return value

    return step


def preimport(variant) -> None:
    """Import what ``variant`` needs and initialise BLAS, so that neither the warm-up times
    nor the memory deltas include one-off library start-up shared by all variants."""
    import torch

    if variant in ("ours", "pyro", "pyro-meanfield") or family(variant) == "user":
        import pyro.infer  # noqa: F401

        import pyro_aevb.infer.objectives.base  # noqa: F401
        import pyro_aevb.infer.objectives.fast_vae  # noqa: F401
        import pyro_aevb.train.optim  # noqa: F401
    elif variant == "numpyro":
        import jax.numpy as jnp
        import numpyro.infer  # noqa: F401

        (jnp.ones((8, 8)) @ jnp.ones((8, 8))).block_until_ready()
    a = torch.ones(64, 64, requires_grad=True)
    (a @ a).sum().backward()
    torch.optim.Adagrad([a], lr=0.01).step()  # first optimizer: imports torch._dynamo (~70 MB)


def build(variant, arch, X, args):
    if variant == "ours":
        return make_ours(arch, X, args)
    if variant == "pytorch":
        return make_pytorch(arch, X, args)
    if variant == "pytorch-compile":
        return make_pytorch(arch, X, args, compile_loss=True)
    if variant == "pyro":
        return make_pyro(arch, X, args)
    if variant == "pyro-meanfield":
        return make_pyro(arch, X, args, meanfield=True)
    if variant == "numpyro":
        return make_numpyro(arch, X, args)
    if variant == "user-compiled":
        return make_user_compiled(arch, X, args, "inductor")
    if variant == "user-replay":
        return make_user_compiled(arch, X, args, "replay")
    if variant == "autoguide":
        return make_user_compiled(arch, X, args, "inductor", autoguide=True)
    if variant == "user-pyro":
        return make_user_pyro(arch, X, args)
    if variant == "user-pytorch":
        return make_user_pytorch(arch, X, args)
    raise ValueError(f"unknown variant {variant!r}")


# ---------------------------------------------------------------------------- memory
def _proc_status_kb(field: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def memory_probe(variant, arch_name, args) -> dict:
    """Run in a fresh process: extra peak RSS of building ``variant`` and training."""
    X, _ = load_data(args.num_rows, args.seed)
    preimport(variant)
    rss0 = _proc_status_kb("VmRSS")
    exact = rss0 is not None and _reset_peak_rss()
    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    step = build(variant, ARCHS[arch_name], X, args)
    for _ in range(args.warmup + args.steps):
        step()
    if exact:
        peak_mb = (_proc_status_kb("VmHWM") - rss0) / 1024
        how = "VmHWM - VmRSS before building (peak reset via /proc/self/clear_refs)"
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss0) / 1024
        how = "growth of ru_maxrss"
    return {"variant": variant, "arch": arch_name, "peak_extra_mb": peak_mb, "method": how}


def run_memory_probes(variants, arch_name, args) -> dict:
    out = {}
    for v in variants:
        cmd = [
            sys.executable, os.path.abspath(__file__), "--_probe", v, "--archs", arch_name,
            "--threads", str(args.threads), "--steps", str(min(args.steps, 50)),
            "--warmup", str(args.warmup), "--num-rows", str(args.num_rows),
            "--seed", str(args.seed), "--lr", str(args.lr), "--batch-size", str(args.batch_size),
            "--init-std", str(args.init_std),
        ]  # fmt: skip
        if args.weight_prior is None:
            cmd.append("--no-weight-prior")
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True)
            line = [ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1]
            out[v] = json.loads(line)
        except Exception as err:
            out[v] = {"variant": v, "peak_extra_mb": None, "error": repr(err)[:300]}
    return out


# ---------------------------------------------------------------------------- timing
def time_arch(arch_name, variants, X, args) -> dict:
    import torch

    arch = ARCHS[arch_name]
    steps, warm = {}, {}
    for v in variants:
        preimport(v)
    for v in variants:
        t0 = time.perf_counter()
        step = build(v, arch, X, args)
        t1 = time.perf_counter()
        step()
        t2 = time.perf_counter()
        for _ in range(args.warmup - 1):
            step()
        t3 = time.perf_counter()
        steps[v] = step
        warm[v] = {"build_s": t1 - t0, "first_step_s": t2 - t1, "warmup_s": t3 - t0}
    rates = {v: [] for v in variants}
    for b in range(args.blocks):
        order = list(variants) if b % 2 == 0 else list(reversed(variants))
        for v in order:
            step = steps[v]
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            rates[v].append(args.steps * args.batch_size / (time.perf_counter() - t0))
    del torch
    result = {}
    for v in variants:
        r = {
            "samples_per_s": rates[v],
            "median_samples_per_s": statistics.median(rates[v]),
            **warm[v],
        }
        fam = family(v)
        # each family against its own hand-written loop and stock Pyro (the same keys)
        refs = {REFERENCE: FAMILY_REFERENCE[fam], "pyro": FAMILY_STOCK[fam]}
        if fam == "paper":
            refs["numpyro"] = "numpyro"
        for key, ref in refs.items():
            if ref in rates and ref != v:
                paired = [a / b for a, b in zip(rates[v], rates[ref], strict=True)]
                r[f"ratio_vs_{key}"] = statistics.median(paired)
                r[f"ratio_vs_{key}_range"] = [min(paired), max(paired)]
        result[v] = r
    return result


def print_table(arch_name, res, mem) -> None:
    print(f"\n== {arch_name} ==")
    has_numpyro = "numpyro" in res
    head = (
        f"{'variant':16s} {'samples/s':>10s} {'vs pytorch':>11s} {'vs pyro':>8s} "
        + (f"{'vs numpyro':>10s} " if has_numpyro else "")
        + f"{'warm-up s':>9s} {'1st step s':>10s} {'peak MB':>8s}"
    )
    print(head)
    print("-" * len(head))
    for v, r in res.items():
        vs_ref = r.get(f"ratio_vs_{REFERENCE}", 1.0 if v in FAMILY_REFERENCE.values() else None)
        vs_pyro = r.get("ratio_vs_pyro", 1.0 if v in FAMILY_STOCK.values() else None)
        vs_np = r.get("ratio_vs_numpyro", 1.0 if v == "numpyro" else None)
        m = (mem or {}).get(v, {}).get("peak_extra_mb")
        np_col = (f"{'' if vs_np is None else f'{vs_np:.2f}x':>10s} ") if has_numpyro else ""
        print(
            f"{v:16s} {r['median_samples_per_s']:10.0f} "
            f"{'' if vs_ref is None else f'{vs_ref:.2f}x':>11s} "
            f"{'' if vs_pyro is None else f'{vs_pyro:.2f}x':>8s} "
            + np_col
            + f"{r['warmup_s']:9.2f} {r['first_step_s']:10.3f} "
            f"{'' if m is None else f'{m:.1f}':>8s}"
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch (and XLA) threads [1]")
    p.add_argument("--steps", type=int, default=100, help="steps per timed block [100]")
    p.add_argument("--blocks", type=int, default=7, help="timed blocks per variant [7]")
    p.add_argument("--warmup", type=int, default=20, help="untimed first steps [20]")
    p.add_argument("--archs", default=",".join(ARCHS), help=f"comma list of {list(ARCHS)}")
    p.add_argument(
        "--variants",
        default=None,
        help=f"comma list of {ALL_VARIANTS}; default all but pytorch-compile "
        "(numpyro and autoguide only when importable)",
    )
    p.add_argument(
        "--family",
        choices=["paper", "user", "all"],
        default="all",
        help="the paper's VAE rows, the user-model rows, or both [all]",
    )
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--init-std", type=float, default=0.1, help="init N(0, s^2) [0.1]")
    p.add_argument("--num-rows", type=int, default=50000, help="rows of random data [50000]")
    p.add_argument("--no-weight-prior", dest="weight_prior", action="store_const", const=None,
                   default=1.0, help="train without the N(0, I) weight prior")  # fmt: skip
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT", help="write all numbers to this JSON file")
    p.add_argument("--_probe", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    _setup_threads(args.threads)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    for a in archs:
        if a not in ARCHS:
            p.error(f"unknown arch {a!r}; choose from {list(ARCHS)}")

    if args._probe:
        print(json.dumps(memory_probe(args._probe, archs[0], args)))
        return 0

    if args.variants:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        bad = [v for v in variants if v not in ALL_VARIANTS]
        if bad:
            p.error(f"unknown variants {bad}; choose from {ALL_VARIANTS}")
        if "numpyro" in variants and not _numpyro_available():
            p.error("numpyro requested but `import numpyro` fails")
    else:
        variants = [
            v
            for v in DEFAULT_VARIANTS
            if (v != "numpyro" or _numpyro_available())
            and (v != "autoguide" or _autoguide_available())
            and args.family in ("all", family(v))
        ]
    if "autoguide" in variants and not _autoguide_available():
        p.error("autoguide requested but pyro_aevb.autoguide does not exist yet")
    # Each family's reference runs first: its blocks anchor the paired ratios.
    families = sorted({family(v) for v in variants})
    refs = [FAMILY_REFERENCE[f] for f in families]
    variants = refs + [v for v in variants if v not in refs]

    import pyro
    import torch

    X, source = load_data(args.num_rows, args.seed)
    meta = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "threads": args.threads,
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "data": source,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "init_std": args.init_std,
        "weight_prior": args.weight_prior,
        "steps_per_block": args.steps,
        "blocks": args.blocks,
        "warmup_steps": args.warmup,
        "memory_method": "peak RSS in a fresh subprocess per variant: VmHWM minus VmRSS "
        "just before building the variant",
    }
    try:
        with open("/proc/cpuinfo") as f:
            meta["cpu"] = next(ln.split(":", 1)[1].strip() for ln in f if "model name" in ln)
    except (OSError, StopIteration):
        pass
    print(f"[speed] {meta['cpu']}, {args.threads} thread(s), torch {torch.__version__}, "
          f"pyro {pyro.__version__}, data: {source}")  # fmt: skip
    print(f"[speed] variants: {variants}; {args.blocks} blocks x {args.steps} steps, "
          f"batch {args.batch_size}, {args.warmup} warm-up steps")  # fmt: skip

    results = {"meta": meta, "archs": {}}
    for arch_name in archs:
        here = [v for v in variants if arch_name in FAMILY_ARCHS[family(v)]]
        if not here:
            continue
        res = time_arch(arch_name, here, X, args)
        mem = None if args.no_memory else run_memory_probes(here, arch_name, args)
        if mem:
            for v, m in mem.items():
                res[v]["peak_extra_mb"] = m.get("peak_extra_mb")
                if m.get("error"):
                    res[v]["memory_error"] = m["error"]
        results["archs"][arch_name] = res
        print_table(arch_name, res, mem)
    print(
        "\nsamples/s: median over blocks; 'vs X': median over rounds of (this variant's "
        "block / X's block in the same round); warm-up s: build (incl. compile) + first "
        f"{args.warmup} steps; peak MB: extra peak RSS in a fresh process (see --help)."
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"[speed] wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
