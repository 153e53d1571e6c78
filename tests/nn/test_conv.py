"""The convolutional trunks (the course example: 28x28 padded to 32x32, stride-2 convolutions
of 32/64/128 channels and their mirror) and the convolutional VAE preset."""

import pytest
import torch
import torch.nn.functional as F
from marginal_helpers import requires_data

from pyro_aevb import elbo_per_datapoint, evaluate_bound, fit, load_dataset
from pyro_aevb.models import build_model, conv_vae, fashion_mnist_conv_vae
from pyro_aevb.nn import ConvDecoder, ConvEncoder


def test_encoder_pads_to_32_and_halves_three_times():
    enc = ConvEncoder((1, 28, 28))
    x = torch.rand(5, 1, 28, 28)
    h = enc(x)
    assert h.shape == (5, 2048) and enc.out_dim == 2048  # 128 x 4 x 4
    assert torch.equal(enc(x.reshape(5, 784)), h)  # flat rows are the same images
    expected = F.pad(x, (2, 2, 2, 2))  # centred in 32 x 32
    for conv in enc.convs:
        expected = F.relu(conv(expected))
    assert [c.out_channels for c in enc.convs] == [32, 64, 128]
    assert torch.equal(h, expected.reshape(5, -1))
    head = ConvEncoder((28, 20), out_dim=6)  # Frey Face: padded 2 + 2 rows, 6 + 6 columns
    assert head(torch.rand(3, 560)).shape == (3, 6) and head._pad == (6, 6, 2, 2)


def test_decoder_mirrors_the_encoder_and_crops_to_the_image():
    dec = ConvDecoder(4, (1, 28, 28), params_per_pixel=2)
    z = torch.randn(3, 7, 4)
    out = dec(z)
    assert out.shape == (3, 7, 2, 28, 28)
    assert [d.out_channels for d in dec.deconvs] == [64, 32, 2]
    h = F.relu(dec.linear(z.reshape(-1, 4))).reshape(-1, 128, 4, 4)
    for k, deconv in enumerate(dec.deconvs):
        h = deconv(h) if k == 2 else F.relu(deconv(h))
    assert h.shape[-2:] == (32, 32)
    assert torch.allclose(out.reshape(21, 2, 28, 28), h[..., 2:30, 2:30], atol=1e-6)


def test_geometry_errors_name_the_argument():
    with pytest.raises(ValueError, match="divisible by 2 \\*\\* len\\(channels\\) = 8"):
        ConvEncoder((1, 28, 28), padded_size=36)
    with pytest.raises(ValueError, match="padded_size must be an int >= "):
        ConvEncoder((1, 40, 40))
    with pytest.raises(ValueError, match=r"images of shape \(1, 28, 28\)"):
        ConvEncoder()(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"z of shape \(\.\.\., 5\)"):
        ConvDecoder(5)(torch.randn(2, 4))
    with pytest.raises(ValueError, match="image_shape must be"):
        ConvEncoder((28,))


def test_conv_vae_preset_rebuilds_and_runs_on_images():
    torch.manual_seed(0)
    vae = fashion_mnist_conv_vae(latent_dim=3, channels=(4, 8, 16))
    assert vae.config["preset"] == "conv_vae" and vae.config["image_shape"] == [1, 28, 28]
    again = build_model(vae.config)
    assert type(again.encoder) is ConvEncoder and again.event_shape == (1, 28, 28)
    x = torch.rand(6, 1, 28, 28)
    assert elbo_per_datapoint(vae.model, vae.guide, x).shape == (6,)
    assert vae.sample(2).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="reshape it"):
        vae.model(x.reshape(6, 784))
    gaussian = conv_vae((28, 20), 2, channels=(4, 8, 16), likelihood="gaussian")
    assert gaussian.decoder.out_channels == 2 and gaussian.event_shape == (1, 28, 20)


@requires_data
def test_the_conv_vae_trains_on_fashion_mnist_and_improves_its_test_bound():
    images = load_dataset("fashion-mnist", flatten=False).subset(3000, 200)
    torch.manual_seed(0)
    vae = fashion_mnist_conv_vae(latent_dim=8)
    before = float(evaluate_bound(vae, images.test).mean())
    result = fit(vae, images, optimizer="adam", lr=2e-3, num_samples=2000, eval_every=1000,
                 eval_size=200, progress=False)  # fmt: skip
    assert "not flat rows" in result.path_reason  # no fused path for images (said at INFO)
    after = result.history[-1]["test_bound"]
    assert after > result.history[0]["test_bound"] and after > before + 100.0
