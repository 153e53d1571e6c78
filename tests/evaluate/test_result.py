import json
import math

import numpy as np
import torch

from pyro_aevb.evaluate.result import (
    LogMarginalResult,
    fewer_than_two_effective,
    importance_ess,
    logmeanexp_with_stderr,
)


def test_logmeanexp_with_stderr_matches_direct_formula():
    log_w = torch.randn(50, 4, dtype=torch.float64) - 300.0  # would underflow in exp()
    est, se = logmeanexp_with_stderr(log_w, dim=0)
    w = np.exp(log_w.numpy() + 300.0)
    np.testing.assert_allclose(est.numpy() + 300.0, np.log(w.mean(0)))
    np.testing.assert_allclose(se.numpy(), w.std(0, ddof=1) / w.mean(0) / np.sqrt(50))
    _, se_ess = logmeanexp_with_stderr(log_w, dim=0, ess=torch.full((4,), 12.5))
    torch.testing.assert_close(se_ess, se * 2)
    est1, se1 = logmeanexp_with_stderr(log_w[:1], dim=0)
    torch.testing.assert_close(est1, log_w[0])
    assert bool(torch.isnan(se1).all())


def test_to_dict_is_json_and_summary_reads_well():
    result = LogMarginalResult(
        estimate=torch.tensor([-1.0, -2.0]),
        stderr=torch.tensor([0.1, float("nan")]),
        method="bdmc",
        settings={"num_temps": 10},
        diagnostics={"accept_rate": torch.tensor([0.9, 0.8]), "inference_data": object()},
        seconds=1.5,
        upper=torch.tensor([-0.9, -1.8]),
        upper_stderr=torch.tensor([0.1, 0.2]),
    )
    d = json.loads(json.dumps(result.to_dict()))
    assert d["method"] == "bdmc" and d["num_datapoints"] == 2
    assert d["estimate"] == [-1.0, -2.0] and d["stderr"][1] is None
    assert math.isclose(d["upper_mean"], -1.35, rel_tol=1e-6)
    assert "inference_data" not in d["diagnostics"]
    short = result.to_dict(per_datapoint=False)
    assert "estimate" not in short and set(short["diagnostics"]["accept_rate"]) == {
        "mean",
        "median",
        "min",
        "max",
    }
    text = result.summary()
    assert "log p(x) [bdmc] over 2 datapoints" in text and "BDMC upper bound" in text
    assert "accept_rate" in text and "num_temps=10" in text


def test_two_equal_weights_are_not_fewer_than_two_effective():
    """An exact proposal at K = 2 gives equal weights: ESS 2 up to rounding, not a warning."""
    log_w = torch.full((2, 5), -3.7) + torch.tensor([0.0, 1e-7, 0.0, 0.0, 0.0])
    assert not bool(fewer_than_two_effective(importance_ess(log_w)).any())
    assert bool(fewer_than_two_effective(importance_ess(torch.tensor([[0.0], [-5.0]]))).all())
