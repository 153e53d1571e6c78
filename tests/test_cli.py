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
