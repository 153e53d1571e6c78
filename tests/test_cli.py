import json

from pyro_aevb.cli import main


def test_demo_writes_figures_and_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(
        [
            "demo",
            "--out",
            str(out),
            "--num-samples",
            "3000",
            "--hidden",
            "64",
            "--no-progress",
            "--eval-size",
            "200",
        ]
    )
    assert code == 0
    for name in (
        "manifold.png",
        "samples.png",
        "reconstructions.png",
        "learning_curve.png",
        "summary.json",
        "history.json",
        "checkpoint.pt",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "embedded-mnist" and summary["samples"] == 3000
    assert summary["test_bound"] < 0
    assert "test bound" in capsys.readouterr().out


def test_train_resume_and_figures(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--dataset",
        "embedded-mnist",
        "--out",
        str(out),
        "--latent-dim",
        "3",
        "--hidden",
        "32",
        "--no-progress",
        "--eval-size",
        "100",
        "--no-figures",
    ]
    assert main([*args, "--num-samples", "1000"]) == 0
    assert main([*args, "--num-samples", "2000", "--resume"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["samples"] == 2000
    assert main(["figures", str(out), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "samples.png").is_file()


def test_errors_are_reported_without_a_traceback(tmp_path, capsys):
    assert main(["train", "--dataset", "cifar", "--out", str(tmp_path)]) == 2
    assert "cifar" in capsys.readouterr().err
    assert main(["figures", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_evaluate_writes_json_with_estimates_and_elbo_gap(tmp_path, capsys):
    out = tmp_path / "run"
    main(
        [
            "train",
            "--dataset",
            "embedded-mnist",
            "--out",
            str(out),
            "--latent-dim",
            "2",
            "--hidden",
            "32",
            "--num-samples",
            "2000",
            "--no-progress",
            "--no-figures",
        ]
    )
    code = main(
        ["evaluate", str(out), "--method", "iwae", "--n", "20", "--option", "num_particles=200"]
    )
    assert code == 0
    report = json.loads((out / "evaluate-iwae-test.json").read_text())
    assert report["n"] == 20 and len(report["estimate"]) == 20
    assert report["settings"]["num_particles"] == 200
    assert report["mean"] >= report["elbo_mean"] - 4 * report["mean_stderr"]
    assert "log p(x) - ELBO" in capsys.readouterr().out
    assert main(["evaluate", str(out), "--option", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_train_with_autoguides_then_evaluate_and_resume(tmp_path, capsys):
    base = ["train", "--dataset", "embedded-mnist", "--latent-dim", "2", "--hidden", "16",
            "--no-progress", "--eval-size", "50", "--num-samples", "400"]  # fmt: skip
    full = tmp_path / "full"
    assert main([*base, "--guide", "full", "--out", str(full)]) == 0
    config = json.loads((full / "config.json").read_text())
    assert config["guide"]["guide"] == "multivariate_normal"
    assert config["guide"]["hidden_dims"] == [16] and config["model"]["preset"] == "mlp_vae"
    summary = json.loads((full / "summary.json").read_text())
    assert summary["guide"] == config["guide"] and summary["path"] == "compiled"
    assert (full / "reconstructions.png").is_file()  # decoded from the autoguide's z
    code = main(["evaluate", str(full), "--n", "10", "--option", "num_particles=50"])
    assert code == 0
    report = json.loads((full / "evaluate-iwae-test.json").read_text())
    # one vector site: the full-covariance Gaussian has a closed-form KL (estimator B)
    assert report["elbo_estimator"] == "B" and len(report["estimate"]) == 10
    resume = [*base[:-1], "800", "--guide", "full", "--out", str(full), "--resume", "--no-figures"]
    assert main(resume) == 0
    assert json.loads((full / "history.json").read_text())[-1]["samples"] == 800
    iaf = tmp_path / "iaf"
    capsys.readouterr()
    base.append("--no-figures")
    assert main([*base, "--guide", "iaf", "--out", str(iaf)]) == 2  # estimator B by default
    assert "site 'z'" in capsys.readouterr().err
    assert main([*base, "--guide", "iaf", "--estimator", "A", "--out", str(iaf)]) == 0
    assert main(["evaluate", str(iaf), "--n", "5", "--option", "num_particles=20"]) == 0
    assert "estimator B does not apply" in capsys.readouterr().out
    report = json.loads((iaf / "evaluate-iwae-test.json").read_text())
    assert report["elbo_estimator"] == "A"


def test_gap_refines_the_guide_the_run_trained(tmp_path, monkeypatch, capsys):
    import pyro_aevb.cli as cli

    out = tmp_path / "run"
    assert main(["train", "--dataset", "embedded-mnist", "--latent-dim", "2", "--hidden", "16",
                 "--guide", "full", "--num-samples", "300", "--eval-size", "20",
                 "--no-progress", "--no-figures", "--out", str(out)]) == 0  # fmt: skip
    seen = []
    real = cli.gap_report

    def spy(model, guide, x, **kwargs):
        seen.append(guide)
        return real(model, guide, x, **kwargs)

    monkeypatch.setattr(cli, "gap_report", spy)
    code = main(["gap", str(out), "--n", "4", "--method", "iwae", "--option",
                 "num_particles=30", "--refine-steps", "5", "--particles", "10"])  # fmt: skip
    assert code == 0
    assert type(seen[0]).__name__ == "AmortizedMultivariateNormal"  # not the VAE's own encoder
    saved = json.loads((out / "gaps-test.json").read_text())
    assert saved["split"] == "test" and (out / "gaps-test.png").is_file()


def test_train_the_convolutional_vae_on_images(tmp_path):
    out = tmp_path / "conv"
    args = ["train", "--dataset", "embedded-mnist", "--arch", "conv", "--guide", "diag",
            "--latent-dim", "2", "--num-samples", "200", "--eval-size", "20", "--optimizer",
            "adam", "--lr", "1e-3", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["event_shape"] == [1, 28, 28] and config["model"]["preset"] == "conv_vae"
    assert config["guide"]["encoder"] == "conv"
    for name in ("manifold.png", "samples.png", "reconstructions.png"):
        assert (out / name).is_file()
    assert main(["evaluate", str(out), "--n", "4", "--option", "num_particles=10"]) == 0
    assert main(["figures", str(out), "--out", str(tmp_path / "figs")]) == 0


def test_sigterm_outside_a_training_step_stops_the_command_in_one_line(monkeypatch, capsys):
    """SIGTERM landing outside a training step (here, while the figures are drawn) ends the
    command like Ctrl-C: one line, exit status 128 + 15, and the handler is put back."""
    import os
    import signal
    import time

    from pyro_aevb import cli

    def drawing(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler raises before this returns
        return 0

    monkeypatch.setattr(cli, "cmd_figures", drawing)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["figures", "some-run"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines()[-1] == "pyro-aevb: interrupted by SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before
