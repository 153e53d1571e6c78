import json

import pytest

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
    # without a budget a resume continues to the run's own (not the command's 10^6): the
    # command printed after an interrupt has none
    assert json.loads((out / "config.json").read_text())["num_samples"] == 2000
    assert main([*args, "--resume"]) == 0
    assert json.loads((out / "history.json").read_text())[-1]["samples"] == 2000
    assert main(["figures", str(out), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "samples.png").is_file()
    # figures in the run's folder drawn before a resume with --no-figures are named as older
    assert main(["figures", str(out)]) == 0
    capsys.readouterr()
    assert main([*args, "--num-samples", "2500", "--resume"]) == 0
    assert f"figure (older)    {out / 'samples.png'}: from before" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["figures"] == [] and str(out / "samples.png") in summary["figures_from_before"]
    # redrawn in the run's folder: the summary lists them as current again
    assert main(["figures", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert str(out / "samples.png") in summary["figures"]
    assert summary["figures_from_before"] == []
    # another folder's figures are not replaced without --overwrite; a file is not a folder
    before = (tmp_path / "figs" / "samples.png").read_bytes()
    capsys.readouterr()
    assert main(["figures", str(out), "--out", str(tmp_path / "figs")]) == 2
    assert "holds samples.png" in capsys.readouterr().err
    assert (tmp_path / "figs" / "samples.png").read_bytes() == before
    assert main(["figures", str(out), "--out", str(tmp_path / "figs"), "--overwrite"]) == 0
    assert main(["figures", str(out), "--out", str(out / "summary.json")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_errors_are_reported_without_a_traceback(tmp_path, capsys):
    assert main(["train", "--dataset", "cifar", "--out", str(tmp_path)]) == 2
    assert "cifar" in capsys.readouterr().err
    assert main(["figures", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["train", "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err
    # refused before torchrun starts any rank
    assert main(["train", "--objective", "iwae", "--nproc", "2", "--out", str(tmp_path)]) == 2
    assert "--objective iwae trains in one process" in capsys.readouterr().err
    # the flags are named, not the Python keywords
    new = ["train", "--dataset", "embedded-mnist", "--out", str(tmp_path / "new")]
    assert main([*new, "--objective", "mcem", "--mcem-target-accept", "1.5"]) == 2
    assert "--mcem-target-accept 1.5: target_accept" in capsys.readouterr().err
    assert main([*new, "--objective", "mcem", "--guide", "diag"]) == 2
    assert "--guide diag does not apply to --objective mcem" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["train", "--out", str(tmp_path / "afile")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


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
    # an earlier result is not replaced by another evaluation unless asked, before computing
    before = (out / "evaluate-iwae-test.json").read_bytes()
    quick = ["evaluate", str(out), "--n", "2", "--option", "num_particles=5"]
    assert main(quick) == 2
    assert "exists (an earlier result); pass --overwrite" in capsys.readouterr().err
    assert (out / "evaluate-iwae-test.json").read_bytes() == before
    assert main([*quick, "--overwrite"]) == 0
    assert json.loads((out / "evaluate-iwae-test.json").read_text())["n"] == 2
    assert main([*quick, "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_an_interrupted_evaluation_continues_from_its_finished_blocks(
    tmp_path, capsys, monkeypatch
):
    """Ctrl-C during evaluate keeps the finished blocks beside the report; the same command
    continues from them and writes the report of an uninterrupted run."""
    import importlib

    log_marginal_module = importlib.import_module("pyro_aevb.evaluate.log_marginal")
    out = tmp_path / "run"
    main(["train", "--dataset", "embedded-mnist", "--out", str(out), "--latent-dim", "2",
          "--hidden", "16", "--num-samples", "500", "--no-progress", "--no-figures"])  # fmt: skip
    command = ["evaluate", str(out), "--n", "15", "--block-size", "5", "--option",
               "num_particles=20"]  # fmt: skip
    assert main([*command, "--out", str(tmp_path / "whole.json")]) == 0
    calls = {"n": 0}
    original = log_marginal_module._estimate

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(log_marginal_module, "_estimate", interrupted)
    capsys.readouterr()
    assert main(command) == 130
    kept = out / "evaluate-iwae-test.json.blocks.pt"
    assert f"the finished blocks are kept in {kept}" in capsys.readouterr().err
    assert kept.is_file() and not (out / "evaluate-iwae-test.json").exists()
    assert main(command) == 0
    assert calls["n"] == 4  # the two blocks left, not the first again
    report = json.loads((out / "evaluate-iwae-test.json").read_text())
    whole = json.loads((tmp_path / "whole.json").read_text())
    assert report["estimate"] == whole["estimate"] and report["stderr"] == whole["stderr"]
    assert not kept.exists()


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
    # the figure beside the report is a result too: neither is replaced unless asked, and a
    # .png report would be overwritten by its own figure
    quick = ["gap", str(out), "--n", "2", "--method", "iwae", "--option", "num_particles=5",
             "--refine-steps", "2", "--particles", "5"]  # fmt: skip
    (out / "other.png").write_bytes(b"a figure of the user's")
    assert main([*quick, "--out", str(out / "other.json")]) == 2
    assert "other.png exists (an earlier result)" in capsys.readouterr().err
    assert main([*quick, "--out", str(out / "report.png")]) == 2
    assert "names the JSON report" in capsys.readouterr().err
    assert (out / "other.png").read_bytes() == b"a figure of the user's"
    assert len(seen) == 1  # refused before computing


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


TINY = ["--dataset", "embedded-mnist", "--latent-dim", "2", "--hidden", "16", "--no-progress",
        "--no-figures"]  # fmt: skip


def _training(out) -> dict:
    return json.loads((out / "config.json").read_text())["training"]


def test_resume_takes_the_runs_settings_for_the_options_left_out(tmp_path, capsys):
    """The README's `train --out RUN --num-samples N --resume` continues a run trained with
    non-default settings as that run: the resumed run is the uninterrupted one."""
    settings = ["--optimizer", "adam", "--lr", "1e-3", "--estimator", "A", "--batch-size", "50",
                "--eval-size", "40", "--seed", "3", "--particles", "2"]  # fmt: skip
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(["train", *TINY, *settings, "--num-samples", "600", "--out", str(whole)]) == 0
    assert main(["train", *TINY, *settings, "--num-samples", "300", "--out", str(split)]) == 0
    before = _training(split)
    resume = ["train", "--out", str(split), "--resume", "--no-progress", "--no-figures"]
    assert main([*resume, "--num-samples", "600"]) == 0
    assert _training(split) == before == _training(whole)
    assert before["optimizer"] == "adam" and before["batch_size"] == 50
    assert before["objective"] == {"estimator": "A", "num_particles": 2}
    assert before["seed"] == 3 and before["eval_size"] == 40 and before["lr"] == 1e-3
    resumed = json.loads((split / "history.json").read_text())[-1]
    uninterrupted = json.loads((whole / "history.json").read_text())[-1]
    assert resumed["samples"] == uninterrupted["samples"] == 600
    assert resumed["test_bound"] == uninterrupted["test_bound"]
    summary = json.loads((split / "summary.json").read_text())
    assert summary["estimator"] == "A" and summary["optimizer"] == "adam (lr 0.001)"
    capsys.readouterr()
    # options given must still match the run: each refusal names the setting that differs
    for extra, says in (
        (["--batch-size", "100"], "training.batch_size (checkpoint: 50; now: 100)"),
        (["--optimizer", "adagrad"], "training.optimizer (checkpoint: 'adam'; now: 'adagrad')"),
        (["--estimator", "B"], "training.objective.estimator (checkpoint: 'A'; now: 'B')"),
        (["--seed", "0"], "training.seed (checkpoint: 3; now: 0)"),
        (["--eval-size", "1000"], "training.eval_size (checkpoint: 40; now: 1000)"),
        (["--particles", "1"], "training.objective.num_particles (checkpoint: 2; now: 1)"),
        (["--objective", "iwae"], "training.algorithm (checkpoint: 'aevb'; now: 'iwae')"),
        (["--lr", "1"], "cannot resume with lr 1.0: the run trained with lr 0.001"),
    ):
        assert main([*resume, "--num-samples", "700", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, (extra, err)
        assert "eval_size" not in err or extra[0] == "--eval-size"  # no default leaks in
    # the run's own values, given, continue it; so does a smaller step size
    same = ["--batch-size", "50", "--optimizer", "adam", "--estimator", "A", "--seed", "3"]
    assert main([*resume, "--num-samples", "700", *same, "--lr", "5e-4"]) == 0
    assert _training(split)["lr"] == 5e-4
    assert json.loads((split / "history.json").read_text())[-1]["samples"] == 700


def test_resume_keeps_the_options_of_the_runs_objective(tmp_path, capsys):
    """Left out on --resume, the objective and its options (--mcem-*, --sa-*, --particles,
    --dreg) are the run's; given and different, the resume is refused naming them."""
    runs = {
        "mcem": ["--objective", "mcem", "--mcem-num-leapfrog", "3", "--mcem-num-m-steps", "1",
                 "--mcem-init-step-size", "0.05"],
        "sa-vae": ["--objective", "sa-vae", "--sa-steps", "2", "--sa-lr", "0.05"],
        "iwae": ["--objective", "iwae", "--particles", "3", "--dreg"],
    }  # fmt: skip
    expected = {
        "mcem": {"num_leapfrog": 3, "num_m_steps": 1, "init_step_size": 0.05},
        "sa-vae": {"refine_steps": 2, "refine_lr": 0.05},
        "iwae": {"num_particles": 3, "dreg": True},
    }
    differ = {
        "mcem": (["--mcem-num-leapfrog", "4"], "training.objective.num_leapfrog (checkpoint: 3"),
        "sa-vae": (["--sa-steps", "5"], "training.objective.refine_steps (checkpoint: 2; now: 5)"),
        "iwae": (["--particles", "5"], "training.objective.num_particles (checkpoint: 3; now: 5"),
    }
    for name, options in runs.items():
        out = tmp_path / name
        # Monte Carlo EM records no bound: --eval-size does not apply
        sized = [] if name == "mcem" else ["--eval-size", "20"]
        base = ["train", *TINY, *sized, "--out", str(out)]
        assert main([*base, *options, "--num-samples", "100"]) == 0
        saved = _training(out)
        assert saved["algorithm"] == name
        assert expected[name].items() <= saved["objective"].items()
        resume = ["train", "--out", str(out), "--resume", "--no-progress", "--no-figures"]
        capsys.readouterr()
        assert main([*resume, "--num-samples", "200"]) == 0, capsys.readouterr().err
        assert _training(out) == saved
        assert json.loads((out / "history.json").read_text())[-1]["samples"] == 200
        extra, says = differ[name]
        assert main([*resume, "--num-samples", "300", *extra]) == 2
        err = capsys.readouterr().err
        assert says in err, err
        assert main([*resume, "--num-samples", "300", "--objective", "aevb"]) == 2
        assert f"training.algorithm (checkpoint: '{name}'; now: 'aevb')" in capsys.readouterr().err
    # an option of another objective than the run's is an error naming it, not ignored
    iwae = ["train", "--out", str(tmp_path / "iwae"), "--resume", "--num-samples", "300"]
    assert main([*iwae, "--estimator", "A"]) == 2
    err = capsys.readouterr().err
    assert "--estimator applies to --objective aevb / wake-sleep only, not iwae (the run's" in err
    mcem_summary = json.loads((tmp_path / "mcem" / "summary.json").read_text())
    assert mcem_summary["estimator"] is None and mcem_summary["algorithm"] == "mcem"


@pytest.mark.parametrize(
    "options, says",
    [
        (["--objective", "iwae", "--estimator", "A"],
         "--estimator applies to --objective aevb / wake-sleep only, not iwae"),
        (["--objective", "mcem", "--estimator", "A"],
         "--estimator applies to --objective aevb / wake-sleep only, not mcem"),
        (["--objective", "sa-vae", "--estimator", "B"],
         "--estimator applies to --objective aevb / wake-sleep only, not sa-vae"),
        (["--mcem-num-leapfrog", "50"],
         "--mcem-num-leapfrog applies to --objective mcem only, not aevb"),
        (["--objective", "iwae", "--mcem-adapt-gain", "0.1"],
         "--mcem-adapt-gain applies to --objective mcem only, not iwae"),
        (["--sa-steps", "50"], "--sa-steps applies to --objective sa-vae only, not aevb"),
        (["--objective", "wake-sleep", "--sa-lr", "0.5"],
         "--sa-lr applies to --objective sa-vae only, not wake-sleep"),
        (["--objective", "mcem", "--particles", "2"],
         "--particles applies to --objective aevb / wake-sleep / iwae only, not mcem"),
        (["--dreg"], "--dreg applies to --objective iwae only, not aevb"),
        (["--epochs", "0.1", "--num-samples", "300"],
         "give one training budget, --num-samples or --epochs, not both"),
    ],
)  # fmt: skip
def test_options_that_would_be_ignored_are_errors(tmp_path, capsys, options, says):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--num-samples", "100", *options]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not out.exists()  # refused before anything was trained or written


def test_the_budget_is_the_one_given(tmp_path):
    for budget, samples in ((["--epochs", "0.04"], 200), (["--num-samples", "300"], 300)):
        out = tmp_path / budget[0]
        assert main(["train", *TINY, "--eval-size", "20", "--out", str(out), *budget]) == 0
        assert json.loads((out / "history.json").read_text())[-1]["samples"] == samples


def test_demo_resumes_with_its_own_settings(tmp_path, capsys):
    # the demo's defaults (--hidden 500, --eval-size 1000) must not replace the run's
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--no-progress", "--no-figures"]
    assert main([*args, "--hidden", "16", "--eval-size", "30", "--num-samples", "200"]) == 0
    saved = _training(out)
    assert main([*args, "--num-samples", "400", "--resume"]) == 0
    assert "continuing the run" in capsys.readouterr().out
    assert _training(out) == saved and saved["optimizer"] == "adam"
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["hidden_dims"] in (16, [16])
    assert json.loads((out / "history.json").read_text())[-1]["samples"] == 400


def test_evaluate_and_gap_refuse_more_points_than_the_split_has(tmp_path, capsys):
    out = tmp_path / "run"
    train = ["train", *TINY, "--eval-size", "20", "--num-samples", "100", "--out", str(out)]
    assert main(train) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--method", "elbo", "--n", "100000"]) == 2
    err = capsys.readouterr().err
    assert "--n 100000: the test split of embedded-mnist has 1000 rows; give --n <= 1000" in err
    assert not (out / "evaluate-elbo-test.json").exists()
    assert main(["gap", str(out), "--method", "iwae", "--n", "5001", "--split", "train"]) == 2
    assert "the train split of embedded-mnist has 5000 rows" in capsys.readouterr().err
    # the whole split, asked for by its size, is evaluated
    assert main(["evaluate", str(out), "--method", "elbo", "--n", "1000"]) == 0
    assert json.loads((out / "evaluate-elbo-test.json").read_text())["n"] == 1000


def test_python_dash_m_runs_the_command_line():
    import subprocess
    import sys

    from pyro_aevb import __version__

    out = subprocess.run(
        [sys.executable, "-m", "pyro_aevb", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"pyro-aevb {__version__}"


def test_figures_of_a_monte_carlo_em_run_have_no_reconstructions_from_its_untrained_encoder(
    tmp_path,
):
    out = tmp_path / "mcem"
    args = [
        "train",
        "--dataset",
        "embedded-mnist",
        "--latent-dim",
        "2",
        "--hidden",
        "8",
        "--objective",
        "mcem",
        "--num-samples",
        "200",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    written = {p.name for p in out.glob("*.png")}
    assert {"samples.png", "manifold.png"} <= written
    assert "reconstructions.png" not in written and "learning_curve.png" not in written
    figs = tmp_path / "figs"
    assert main(["figures", str(out), "--out", str(figs)]) == 0
    assert not (figs / "reconstructions.png").exists()
    bad = [*args[:-2], "--out", str(tmp_path / "other"), "--eval-size", "10"]
    assert main(bad) == 2


def test_threads_and_verbose_are_taken_before_or_after_the_command():
    from pyro_aevb.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["train", "--threads", "1"]).threads == 1
    assert parser.parse_args(["--threads", "2", "train"]).threads == 2
    assert parser.parse_args(["evaluate", "RUN", "-v"]).verbose is True
    assert parser.parse_args(["evaluate", "RUN"]).threads is None


@pytest.mark.parametrize(
    "argv, says",
    [
        (["gap", "run", "--refine-steps", "0"], "--refine-steps: expected an integer >= 1"),
        (["gap", "run", "--refine-lr", "-1"], "--refine-lr: expected a finite number > 0"),
        (["gap", "run", "--particles", "0"], "--particles: expected an integer >= 1"),
        (["evaluate", "run", "--block-size", "0"], "--block-size: expected an integer >= 1"),
    ],
)  # fmt: skip
def test_evaluation_counts_are_checked_by_the_command_line(capsys, argv, says):
    # named as the options the user typed, before any run is loaded
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and says in capsys.readouterr().err


def test_a_run_on_other_data_than_the_files_is_refused_not_evaluated_on_them(tmp_path, capsys):
    import torch

    from pyro_aevb import fit, load_dataset, mlp_vae

    slice_ = load_dataset("embedded-mnist")
    tensors, subset = tmp_path / "tensors", tmp_path / "subset"
    torch.manual_seed(0)
    fit(mlp_vae(784, 2, (8,)), slice_.train[:200], slice_.test[:50], num_samples=200,
        eval_size=20, progress=False, out_dir=tensors)  # fmt: skip
    fit(mlp_vae(784, 2, (8,)), slice_.subset(200, 50), num_samples=200, eval_size=20,
        progress=False, out_dir=subset)  # fmt: skip
    for argv in (["evaluate", str(tensors), "--method", "elbo", "--n", "5"],
                 ["figures", str(tensors)], ["gap", str(tensors), "--n", "2"],
                 ["train", "--out", str(tensors), "--resume", "--num-samples", "400"]):  # fmt: skip
        assert main(argv) == 2
        assert "trained on data given to fit() as tensors" in capsys.readouterr().err
    assert main(["evaluate", str(subset), "--method", "elbo", "--n", "5"]) == 2
    err = capsys.readouterr().err
    assert "the train split of 'embedded-mnist' (5000x784 float32" in err
    assert "is not the data run" in err and "(200x784 float32" in err
    assert not list(subset.glob("evaluate-*")) and not list(tensors.glob("*.png"))


def test_an_output_folder_that_cannot_be_written_is_refused_before_computing(tmp_path, monkeypatch):
    import errno
    import tempfile

    import pyro_aevb.cli as cli

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    args = type("Args", (), {"out": str(tmp_path / "r.json"), "overwrite": False})()
    with pytest.raises(ValueError, match="is not writable .*Read-only file system.*nothing was"):
        cli._output_file(args, tmp_path / "default.json")


def test_the_printed_resume_command_quotes_its_paths():
    import argparse
    import shlex

    from pyro_aevb.cli import _resume_command

    args = argparse.Namespace(command="train", out="runs/my run", data_dir="/data dir", nproc=2)
    words = shlex.split("pyro-aevb " + _resume_command(args))
    assert words[words.index("--out") + 1] == "runs/my run"
    assert words[words.index("--data-dir") + 1] == "/data dir"
    assert "--resume" in words and words[words.index("--nproc") + 1] == "2"


def test_the_printed_resume_command_keeps_the_device_and_checkpoint_cadence():
    """A GPU run resumed with the printed command continues on the GPU (the device is not
    recorded in the run), and writes checkpoints as often as before."""
    import argparse
    import shlex

    from pyro_aevb.cli import _resume_command

    args = argparse.Namespace(
        command="train", out="r", data_dir=None, nproc=1, device_given="cuda:1",
        device="cuda:1", checkpoint_every=50000, checkpoint_minutes=2.5,
    )  # fmt: skip
    words = shlex.split(_resume_command(args))
    assert words[words.index("--device") + 1] == "cuda:1"
    assert words[words.index("--checkpoint-every") + 1] == "50000"
    assert words[words.index("--checkpoint-minutes") + 1] == "2.5"
    args = argparse.Namespace(command="train", out="r", device_given=None, checkpoint_minutes=5.0)
    assert _resume_command(args) == "train --out r --resume"


def test_a_result_written_meanwhile_by_another_command_is_kept(tmp_path, capsys):
    """Two evaluations to one file started together: both passed the check that the file is
    free; the second to finish keeps the first's result and writes beside it."""
    from pyro_aevb.cli import _write_result

    out = tmp_path / "evaluate-ais-test.json"
    out.write_text('{"first": true}\n')
    written = _write_result(out, {"second": True}, overwrite=False)
    assert written == tmp_path / "evaluate-ais-test~1.json"
    assert json.loads(out.read_text()) == {"first": True}
    assert json.loads(written.read_text()) == {"second": True}
    assert "is kept" in capsys.readouterr().out
    assert _write_result(out, {"third": True}, overwrite=False).name == "evaluate-ais-test~2.json"
    assert _write_result(out, {"fourth": True}, overwrite=True) == out
    assert json.loads(out.read_text()) == {"fourth": True}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_a_new_run_is_refused_a_folder_holding_an_earlier_runs_results(tmp_path, capsys):
    """An earlier run's results without its checkpoint (deleted to save space): a new run
    there would leave them describing another model. Refused before anything is trained."""
    out = tmp_path / "reuse"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    (out / "evaluate-ais-test.json").write_text("{}")
    argv = ["train", "--dataset", "embedded-mnist", "--out", str(out), "--num-samples", "100",
            "--latent-dim", "2", "--hidden", "8", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holds results of an earlier run (evaluate-ais-test.json, summary.json)" in err
    assert sorted(p.name for p in out.iterdir()) == ["evaluate-ais-test.json", "summary.json"]


def test_bdmc_refuses_a_split_it_would_not_use(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path), "--method", "bdmc", "--split", "train"]) == 2
    assert "--split does not apply to --method bdmc" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["embedded-mnist", "Embedded_MNIST"])
def test_a_data_dir_for_the_embedded_slice_is_refused_not_ignored(tmp_path, capsys, name):
    argv = ["train", "--dataset", name, "--data-dir", str(tmp_path / "none"),
            "--out", str(tmp_path / "run"), "--num-samples", "100"]  # fmt: skip
    assert main(argv) == 2
    assert "does not apply to the data set 'embedded-mnist'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
