import pytest
import torch

from pyro_aevb.validation import (
    MAX_SEED,
    check_data,
    check_num_data,
    check_positive_float,
    check_seed,
)


def test_check_data_accepts_good_input_and_names_the_argument():
    x = torch.rand(3, 4)
    assert check_data(x, "train", 4, unit_interval=True) is x
    with pytest.raises(ValueError, match="^train contains non-finite values.*index \\(1, 2\\)"):
        bad = x.clone()
        bad[1, 2] = float("inf")
        check_data(bad, "train")
    huge = torch.full((2, 2), 3e38)  # finite entries whose sum overflows
    assert check_data(huge, "x") is huge
    with pytest.raises(TypeError, match="^data must be a torch.Tensor"):
        check_data([[0.5]], "data")


def test_scalar_checks():
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        check_positive_float(float("nan"), "lr")
    assert check_num_data(None, 7) == 7
    with pytest.raises(TypeError, match="num_data"):
        check_num_data(2.5, 1)


def test_check_seed_accepts_torch_seeds_and_names_the_argument():
    assert check_seed(0) == 0 and check_seed(MAX_SEED) == MAX_SEED
    torch.Generator().manual_seed(MAX_SEED + 1000)  # room for the offsets derived seeds add
    for bad in (-1, MAX_SEED + 1, 10**30):
        with pytest.raises(ValueError, match=r"init_seed must be an int in \[0, 2\*\*63 - 1\]"):
            check_seed(bad, "init_seed")
    for bad in (1.0, True, "3", None):
        with pytest.raises(TypeError, match="seed must be an int"):
            check_seed(bad)


def test_flags_of_the_estimators_must_be_booleans():
    """A string from a command line (--option vectorize=maybe) is not taken as true."""
    import pytest
    import torch

    from pyro_aevb import log_marginal, mlp_vae

    vae = mlp_vae(20, 2, (8,))
    x = (torch.rand(3, 20) < 0.3).float()
    with pytest.raises(TypeError, match="vectorize must be True or False, got 'maybe'"):
        log_marginal(vae.model, vae.guide, x, method="iwae", vectorize="maybe")
    with pytest.raises(TypeError, match="adapt_mass must be True or False, got 'yes'"):
        log_marginal(
            vae.model,
            vae.guide,
            x,
            method="appendix_d",
            adapt_mass="yes",
            num_samples=4,
            num_warmup=4,
        )


def test_float64_data_beyond_float32_range_is_named_not_made_inf():
    import warnings

    from pyro_aevb import evaluate_bound, fit, log_marginal, paper_frey_face_vae
    from pyro_aevb.validation import data_to_dtype

    torch.manual_seed(0)
    vae = paper_frey_face_vae(latent_dim=2, hidden_dims=10)
    x = torch.rand(20, 560, dtype=torch.float64)
    x[3, 7] = -1e39  # finite in float64, -inf in float32
    says = r"beyond the range of float32 .* first at index \(3, 7\): -1e\+39"
    with pytest.raises(ValueError, match="data holds values " + says):
        evaluate_bound(vae, x)
    with pytest.raises(ValueError, match="x holds values " + says):
        log_marginal(vae.model, vae.guide, x, "iwae", num_particles=2)
    with warnings.catch_warnings(), pytest.raises(ValueError, match="train holds values " + says):
        warnings.simplefilter("ignore")
        fit(vae, x, num_samples=20, batch_size=10, progress=False)
    fine = x.clamp(-1, 1)
    assert data_to_dtype(fine, torch.float32).dtype == torch.float32
    assert data_to_dtype(x, torch.float64) is x  # widening or equal: nothing to refuse
