"""Named model settings, in one place: the paper's VAEs, and how to rebuild a model from a
config saved with a run.

* :func:`mlp_vae`: a VAE with tanh-MLP encoder and decoder (Appendix C) for flat data.
* :func:`paper_mnist_vae` (784-500-J Bernoulli) and :func:`paper_frey_face_vae` (560-200-J
  Gaussian with a sigmoid mean): the paper's two models.
* :func:`paper_vae`: the paper's model for a data set by name (its hidden size and decoder).
* :func:`conv_vae`: a VAE with the convolutional encoder and decoder of
  :mod:`pyro_aevb.nn.conv` for image-shaped data ``(C, H, W)``;
  :func:`fashion_mnist_conv_vae`: the course material's Fashion-MNIST model (Bernoulli on
  [0, 1] pixels).
* :func:`build_model`: rebuild a preset model from the ``config`` it carries (what
  :func:`pyro_aevb.load_run` uses).

Every preset records its name and options on the model (``model.preset``), so a run directory
knows how to rebuild what it trained.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..nn.conv import ConvDecoder, ConvEncoder, image_shape_of
from ..nn.likelihoods import make_likelihood
from ..nn.mlp import MAX_LAYER_SIZE, MLP, as_hidden_dims, init_normal_
from ..validation import check_positive_float, check_positive_int
from .vae import VAE

__all__ = [
    "PAPER_HIDDEN",
    "PRESETS",
    "mlp_vae",
    "paper_mnist_vae",
    "paper_frey_face_vae",
    "paper_vae",
    "conv_vae",
    "fashion_mnist_conv_vae",
    "build_model",
    "register_preset",
]

#: Hidden units of the paper's networks per data set (500 for MNIST, 200 for the small Frey
#: Face set); Fashion-MNIST takes MNIST's.
PAPER_HIDDEN = {"mnist": 500, "fashion-mnist": 500, "embedded-mnist": 500, "frey-face": 200}

#: Preset builders by name, for :func:`build_model`.
PRESETS: dict[str, Callable[..., Any]] = {}


def register_preset(name: str):
    """Decorator: register a builder under ``name``; the model it returns records the call."""

    def decorate(builder):
        def build(*args, **kwargs):
            model = builder(*args, **kwargs)
            model.preset = (name, _call_options(builder, args, kwargs))
            return model

        build.__name__ = builder.__name__
        build.__qualname__ = builder.__qualname__
        build.__doc__ = builder.__doc__
        build.__wrapped__ = builder
        PRESETS[name] = build
        return build

    return decorate


def _call_options(builder, args, kwargs) -> dict[str, Any]:
    import inspect

    bound = inspect.signature(builder).bind(*args, **kwargs)
    bound.apply_defaults()
    options = {}
    for key, value in bound.arguments.items():
        options[key] = list(value) if isinstance(value, tuple) else value
    return options


@register_preset("mlp_vae")
def mlp_vae(
    data_dim: int,
    latent_dim: int,
    hidden_dims: int | Sequence[int] = 500,
    likelihood: str = "bernoulli",
    sigmoid_mean: bool = False,
    weight_prior_std: float | None = 1.0,
    init_std: float | None = 0.1,
    activation: str = "tanh",
    name: str = "vae",
    validate: bool = True,
) -> VAE:
    """A VAE with MLP encoder ``D -> hidden -> 2J`` and decoder ``J -> hidden -> kD``.

    Parameters
    ----------
    data_dim : int
        D, the size of one flattened datapoint.
    latent_dim : int
        J = N_z.
    hidden_dims : int or sequence of int
        Hidden layer sizes of both networks (the paper: one layer, 500 for MNIST, 200 for
        Frey Face).
    likelihood : {"bernoulli", "gaussian"}
        Decoder family; Bernoulli requires data in [0, 1].
    sigmoid_mean : bool
        Gaussian only: squash the mean through a sigmoid (the paper's Frey Face setting).
    weight_prior_std : float or None
        The N(0, s^2 I) MAP prior on all parameters (the paper: 1); ``None``: maximum
        likelihood.
    init_std : float or None
        Initialise every parameter from N(0, init_std^2); the default 0.1 is the paper's
        N(0, 0.01) (variance 0.01). ``None`` keeps PyTorch's default.
    activation : str
        Hidden activation (the paper: tanh; the fast path needs tanh).
    name, validate
        See :class:`~pyro_aevb.models.VAE`.
    """
    data_dim = check_positive_int(data_dim, "data_dim", maximum=MAX_LAYER_SIZE)
    latent_dim = check_positive_int(latent_dim, "latent_dim", maximum=MAX_LAYER_SIZE // 2)
    hidden = as_hidden_dims(hidden_dims)
    head = make_likelihood(likelihood, sigmoid_mean)
    encoder = MLP(data_dim, hidden, 2 * latent_dim, activation)
    decoder = MLP(latent_dim, hidden, head.num_params * data_dim, activation)
    vae = VAE(
        encoder,
        decoder,
        head,
        latent_dim,
        (data_dim,),
        weight_prior_std=weight_prior_std,
        name=name,
        validate=validate,
    )
    if init_std is not None:
        init_normal_(vae, check_positive_float(init_std, "init_std", allow_zero=True))
    return vae


def paper_mnist_vae(latent_dim: int = 20, hidden_dims: int = 500, **kwargs) -> VAE:
    """The paper's MNIST model: 784-500-J Bernoulli VAE, N(0, 0.01) init, N(0, I) weight prior."""
    return mlp_vae(28 * 28, latent_dim, hidden_dims, likelihood="bernoulli", **kwargs)


def paper_frey_face_vae(latent_dim: int = 2, hidden_dims: int = 200, **kwargs) -> VAE:
    """The paper's Frey Face model: 560-200-J Gaussian VAE with a sigmoid mean."""
    kwargs.setdefault("sigmoid_mean", True)
    return mlp_vae(28 * 20, latent_dim, hidden_dims, likelihood="gaussian", **kwargs)


def paper_vae(dataset, latent_dim: int, hidden_dims: int | None = None, **kwargs) -> VAE:
    """The paper's VAE for a data set (a :class:`~pyro_aevb.data.Dataset`, whose ``name``,
    ``data_dim`` and ``likelihood`` are read): its hidden size (:data:`PAPER_HIDDEN`) unless
    given, its decoder (Gaussian data get the sigmoid mean)."""
    if not all(hasattr(dataset, a) for a in ("name", "data_dim", "likelihood")):
        raise TypeError(
            f"paper_vae needs a Dataset (e.g. load_dataset('mnist')), whose data_dim and "
            f"likelihood it reads, got {dataset!r}"
        )
    name = dataset.name
    if hidden_dims is None:
        hidden_dims = PAPER_HIDDEN.get(name, 500)
    likelihood = dataset.likelihood
    kwargs.setdefault("sigmoid_mean", likelihood == "gaussian")
    return mlp_vae(dataset.data_dim, latent_dim, hidden_dims, likelihood=likelihood, **kwargs)


@register_preset("conv_vae")
def conv_vae(
    image_shape: Sequence[int],
    latent_dim: int,
    channels: Sequence[int] = (32, 64, 128),
    likelihood: str = "bernoulli",
    sigmoid_mean: bool = False,
    weight_prior_std: float | None = 1.0,
    padded_size: int = 32,
    activation: str = "relu",
    name: str = "vae",
    validate: bool = True,
) -> VAE:
    """A VAE with the convolutional encoder and decoder of :mod:`pyro_aevb.nn.conv`.

    Parameters
    ----------
    image_shape : sequence of int
        ``(C, H, W)`` of one image (or ``(H, W)`` for one channel); the data are
        ``(batch, C, H, W)``, e.g. ``load_dataset("fashion-mnist", flatten=False)``.
    latent_dim : int
        J = N_z.
    channels : sequence of int
        The encoder's convolution channels (the course example: 32, 64, 128); the decoder
        mirrors them.
    likelihood : {"bernoulli", "gaussian"}
        Decoder family (Bernoulli: data in [0, 1]).
    sigmoid_mean : bool
        Gaussian only: squash the mean through a sigmoid.
    weight_prior_std : float or None
        The N(0, s^2 I) MAP prior on all parameters; ``None``: maximum likelihood.
    padded_size : int
        The images are padded to ``padded_size`` squared (32 for 28x28 images).
    activation : str
        Hidden activation of both networks (PyTorch's default initialisation).
    name, validate
        See :class:`~pyro_aevb.models.VAE`.
    """
    shape = image_shape_of(image_shape)
    latent_dim = check_positive_int(latent_dim, "latent_dim")
    head = make_likelihood(likelihood, sigmoid_mean)
    encoder = ConvEncoder(shape, channels, 2 * latent_dim, padded_size, activation)
    decoder = ConvDecoder(latent_dim, shape, channels, head.num_params, padded_size, activation)
    return VAE(
        encoder,
        decoder,
        head,
        latent_dim,
        shape,
        weight_prior_std=weight_prior_std,
        name=name,
        validate=validate,
    )


def fashion_mnist_conv_vae(latent_dim: int = 2, **kwargs) -> VAE:
    """The course material's convolutional VAE for Fashion-MNIST: 28x28 images padded to
    32x32, convolutions of 32/64/128 channels and their mirror, Bernoulli on [0, 1] pixels
    (data: ``load_dataset("fashion-mnist", flatten=False)``)."""
    return conv_vae((1, 28, 28), latent_dim, likelihood="bernoulli", **kwargs)


def build_model(config: dict[str, Any]):
    """Rebuild a model from ``model.config`` (``{"preset": name, **options}``).

    Raises ``ValueError`` for a config without a known preset (a model composed by hand:
    build it yourself and pass it in).
    """
    if not isinstance(config, dict) or config.get("preset") not in PRESETS:
        known = ", ".join(sorted(PRESETS))
        raise ValueError(
            f"cannot rebuild a model from config {config!r}: it names no preset ({known}); "
            f"build the model yourself and pass it in"
        )
    options = {k: v for k, v in config.items() if k != "preset"}
    return PRESETS[config["preset"]](**options)
