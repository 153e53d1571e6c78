"""Fault injection on checkpoints: bit flips, truncation, hostile pickles, malformed payloads,
full disks and unreadable files never load silently and never reach the user as a raw
traceback; the previous checkpoint is kept and the message says how to continue from it."""

from __future__ import annotations

import io
import os
import resource
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import FIT_KW, assert_same_state, binary_data, state_of, tiny_vae

from pyro_aevb import fit, load_run
from pyro_aevb.cli import main
from pyro_aevb.train.checkpoint import (
    CorruptCheckpointError,
    load_checkpoint,
    previous_checkpoint_path,
    save_checkpoint,
    seal_checkpoint_file,
)
from pyro_aevb.train.integrity import seal
from pyro_aevb.train.payload import MalformedCheckpointError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished tiny run with two checkpoints (evaluations at 160 and 320 samples)."""
    out = tmp_path_factory.mktemp("run")
    fit(tiny_vae(), binary_data(), num_samples=320, out_dir=out, **FIT_KW)
    return out


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_every_bit_flip_is_refused_and_names_the_file(run_dir: Path, tmp_path: Path) -> None:
    original = (run_dir / "checkpoint.pt").read_bytes()
    target = tmp_path / "checkpoint.pt"
    rng = np.random.default_rng(1)
    n_bits = len(original) * 8
    # random bits anywhere, plus every bit of the seal line's last bytes and of the zip's end
    bits = list(rng.choice(n_bits, size=120, replace=False))
    bits += list(range(n_bits - 8 * 90, n_bits, 7))
    for bit in bits:
        target.write_bytes(flip(original, int(bit)))
        with pytest.raises(CorruptCheckpointError) as info:
            load_checkpoint(target)
        assert str(target) in str(info.value) and info.value.path == target


def test_truncations_are_refused(run_dir: Path, tmp_path: Path) -> None:
    original = (run_dir / "checkpoint.pt").read_bytes()
    target = tmp_path / "checkpoint.pt"
    for length in [0, 1, 100, len(original) // 2, len(original) - 83, len(original) - 1]:
        target.write_bytes(original[:length])
        with pytest.raises(CorruptCheckpointError, match="so it was not loaded"):
            load_checkpoint(target)
    target.write_bytes(original + b"\0")  # extended
    with pytest.raises(CorruptCheckpointError):
        load_checkpoint(target)


def test_damaged_checkpoint_points_at_the_intact_previous_one(
    run_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint.pt", "checkpoint.prev.pt", "config.json", "history.json"):
        (out / name).write_bytes((run_dir / name).read_bytes())
    damaged = flip((out / "checkpoint.pt").read_bytes(), 8 * 3000 + 5)
    (out / "checkpoint.pt").write_bytes(damaged)
    for attempt in (
        lambda: load_run(out),
        lambda: fit(tiny_vae(), binary_data(), num_samples=480, out_dir=out, resume=True, **FIT_KW),
    ):
        with pytest.raises(CorruptCheckpointError) as info:
            attempt()
        message = str(info.value)
        assert f"checkpoint {out / 'checkpoint.pt'} is damaged" in message
        assert "is intact" in message and "(at 160 samples)" in message
        assert f"mv {out / 'checkpoint.prev.pt'} {out / 'checkpoint.pt'}" in message
    # following the advice continues the run from 160 samples, exactly as it went on first
    os.replace(out / "checkpoint.prev.pt", out / "checkpoint.pt")
    fit(tiny_vae(9), binary_data(), num_samples=320, out_dir=out, resume=True, **FIT_KW)
    assert_same_state(state_of(out), state_of(run_dir))
    # and with both damaged, the message says so
    (out / "checkpoint.prev.pt").write_bytes(damaged)
    (out / "checkpoint.pt").write_bytes(damaged)
    with pytest.raises(CorruptCheckpointError, match="is damaged too"):
        load_checkpoint(out / "checkpoint.pt")


def test_the_last_two_checkpoints_are_kept(run_dir: Path) -> None:
    assert load_checkpoint(run_dir / "checkpoint.pt")["progress"]["samples"] == 320
    previous = previous_checkpoint_path(run_dir / "checkpoint.pt")
    assert previous.name == "checkpoint.prev.pt"
    assert load_checkpoint(previous)["progress"]["samples"] == 160


def test_a_sealed_checkpoint_still_opens_with_plain_torch_load(run_dir: Path) -> None:
    plain = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert plain["progress"]["samples"] == 320


def test_unsealed_legacy_file_is_refused_until_sealed(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"format": "pyro-aevb-checkpoint", "version": 1, "t": torch.ones(3)}, buffer)
    legacy = tmp_path / "old.pt"
    legacy.write_bytes(buffer.getvalue())
    with pytest.raises(CorruptCheckpointError, match="does not end with a pyro-aevb SHA-256"):
        load_checkpoint(legacy)
    seal_checkpoint_file(legacy)
    assert torch.equal(load_checkpoint(legacy)["t"], torch.ones(3))
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(2)}, other)
    with pytest.raises(ValueError, match="not a pyro-aevb checkpoint"):
        seal_checkpoint_file(other)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/pyro-aevb-pwned",))


def hostile(path: Path, payload) -> None:
    """A sealed file (anyone can compute the seal) holding a code-executing pickle."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(seal(buffer.getvalue()))


def test_hostile_pickles_with_a_valid_seal_run_no_code(
    run_dir: Path, tmp_path: Path, capsys
) -> None:
    canary = Path("/tmp/pyro-aevb-pwned")
    canary.unlink(missing_ok=True)
    out = tmp_path / "run"
    out.mkdir()
    payload = {"format": "pyro-aevb-checkpoint", "version": 1, "config": Evil()}
    hostile(out / "checkpoint.pt", payload)
    data = binary_data()
    attempts = [
        lambda: load_checkpoint(out / "checkpoint.pt"),
        lambda: load_run(out),
        lambda: fit(tiny_vae(), data, num_samples=480, out_dir=out, resume=True, **FIT_KW),
    ]
    for attempt in attempts:
        with pytest.raises(ValueError, match="could not be read safely"):
            attempt()
    for argv in (["evaluate", str(out)], ["figures", str(out)]):
        assert main(argv) == 2
        assert "could not be read safely" in capsys.readouterr().err
    assert not canary.exists()


def craft(run_dir: Path, out: Path, edit) -> Path:
    """Copy the run to ``out`` with its checkpoint payload edited and sealed again."""
    out.mkdir()
    payload = load_checkpoint(run_dir / "checkpoint.pt")
    edit(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    (out / "checkpoint.pt").write_bytes(seal(buffer.getvalue()))
    return out


def _set(path: tuple, value):
    def edit(payload):
        target = payload
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return edit


MALFORMED = {
    "no config": (_set(("config",), KeyError), "'config' must be a dict"),
    "history of strings": (_set(("history",), ["x"]), "history record 0"),
    "modules not a list": (_set(("program_state", "modules"), {"a": 1}), "list of state dicts"),
    "buffers not tensors": (
        _set(("program_state", "buffers"), {"0.running_mean": 1.0}),
        r"\['buffers'\] must map buffer names to tensors",
    ),
    "a NaN buffer": (
        _set(("program_state", "buffers"), {"0.running_mean": torch.tensor([float("nan")])}),
        "buffer '0.running_mean' holds non-finite values",
    ),
    "a weight missing": (
        lambda p: p["program_state"]["modules"][0].pop("decoder.out.bias"),
        "lacks \\['decoder.out.bias'\\]",
    ),
    "a weight of the wrong shape": (
        lambda p: p["program_state"]["modules"][0].__setitem__(
            "decoder.out.weight", torch.zeros(3, 3)
        ),
        r"decoder.out.weight has shape \(3, 3\)",
    ),
    "a NaN weight": (
        lambda p: p["program_state"]["modules"][0]["encoder.out.bias"].fill_(float("nan")),
        "holds non-finite values",
    ),
    "absurd hidden size": (
        lambda p: p["config"]["model"].__setitem__("hidden_dims", [10**9]),
        r"encoder.hidden.0.weight has shape \(8, 12\) .*\(1000000000, 12\)",
    ),
    "unknown preset": (
        lambda p: p["config"]["model"].__setitem__("preset", "nope"),
        "names no preset",
    ),
    "negative latent size": (
        lambda p: p["config"]["model"].__setitem__("latent_dim", -3),
        "latent_dim must be an int >= 1",
    ),
    "no progress": (lambda p: p.pop("progress"), "'progress' must be a dict"),
    "progress a string": (_set(("progress",), "x"), "'progress' must be a dict"),
    "negative samples": (
        lambda p: p["progress"].__setitem__("samples", -5),
        r"progress\['samples'\] must be an int >= 0, got -5",
    ),
    "no training settings": (
        lambda p: p["config"].pop("training"),
        r"config\['training'\] must be a dict",
    ),
    "training settings a list": (
        lambda p: p["config"].__setitem__("training", []),
        r"config\['training'\] must be a dict",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_checkpoints_are_clear_errors_for_load_run(
    run_dir: Path, tmp_path: Path, case: str, capsys
) -> None:
    edit, match = MALFORMED[case]
    out = craft(run_dir, tmp_path / "run", edit)
    start = time.perf_counter()
    with pytest.raises(MalformedCheckpointError, match=match) as info:
        load_run(out)
    assert time.perf_counter() - start < 5  # nothing of 10**9 was allocated
    assert str(out / "checkpoint.pt") in str(info.value)
    assert main(["figures", str(out)]) == 2
    assert "Traceback" not in capsys.readouterr().err


RESUME_MALFORMED = {
    "pos past the end": (_set(("progress", "pos"), 10**6), "past the permutation's end"),
    "pos a string": (_set(("progress", "pos"), "3"), r"progress\['pos'\] must be an int"),
    "not a permutation": (
        lambda p: p["progress"].__setitem__("perm", torch.zeros(320, dtype=torch.long)),
        "not a permutation of the 320 rows",
    ),
    "short rng state": (
        _set(("rng", "torch"), torch.zeros(7, dtype=torch.uint8)),
        r"rng\['torch'\] holds 7 bytes",
    ),
    "optimizer state of the wrong shape": (
        lambda p: p["optimizer_state"]["state"][0].__setitem__("sum", torch.zeros(2)),
        r"optimizer's 'sum' for parameter 0 has shape \(2,\)",
    ),
    "optimizer for other parameters": (
        lambda p: p["optimizer_state"]["param_groups"][0].__setitem__("params", [0]),
        "optimizer state is for 1 parameters",
    ),
    "no progress": (_set(("progress",), KeyError), "'progress' must be a dict"),
    "lr missing": (lambda p: p["config"]["training"].pop("lr"), r"training.lr is None"),
    "a record past the progress": (
        lambda p: p["history"][-1].__setitem__("samples", 10**9),
        "past the 320 the checkpoint has trained",
    ),
    "data_parallel shards 0": (
        lambda p: p["config"].__setitem__("data_parallel", {"shards": 0}),
        r"config\['data_parallel'\] must hold an int shards >= 1",
    ),
    "no config": (_set(("config",), KeyError), "'config' must be a dict"),
}


@pytest.mark.parametrize("case", sorted(RESUME_MALFORMED))
def test_malformed_checkpoints_are_clear_errors_on_resume(
    run_dir: Path, tmp_path: Path, case: str
) -> None:
    edit, match = RESUME_MALFORMED[case]
    out = craft(run_dir, tmp_path / "run", edit)
    vae = tiny_vae(5)
    before = [p.detach().clone() for p in vae.parameters()]
    with pytest.raises(MalformedCheckpointError, match=match):
        fit(vae, binary_data(), num_samples=480, out_dir=out, resume=True, **FIT_KW)
    # refused before anything was loaded: the module is as it was
    assert all(torch.equal(p, q) for p, q in zip(vae.parameters(), before))


def test_full_disk_keeps_the_files_in_place_and_says_so(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint.pt", "checkpoint.prev.pt", "config.json", "history.json"):
        (out / name).write_bytes((run_dir / name).read_bytes())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    payload = load_checkpoint(out / "checkpoint.pt")
    payload.pop("format"), payload.pop("version")
    # writes past 4 KiB fail with a real EFBIG (Python ignores SIGXFSZ), as on a full disk
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(OSError) as info:
            save_checkpoint(out / "checkpoint.pt", payload)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = str(info.value)
    assert message.startswith(f"Cannot write {out / 'checkpoint.pt'}: File too large.")
    assert "is unchanged" in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary left


def test_full_disk_during_training_is_one_line_from_the_cli(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["train", "--dataset", "embedded-mnist", "--out", str(out), "--latent-dim", "2"]
    args += ["--hidden", "16", "--num-samples", "300", "--no-progress", "--no-figures"]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))  # the checkpoint is ~ 120 KB
    try:
        code = main(args)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"pyro-aevb: error: Cannot write {out / 'checkpoint.pt'}: File too large." in err
    assert not (out / "history.json").exists()  # never ahead of the checkpoint


def test_unreadable_checkpoint_is_named(run_dir: Path, tmp_path: Path, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes((run_dir / "checkpoint.pt").read_bytes())
    real = Path.read_bytes

    def denied(self):
        if self.name == "checkpoint.pt":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(PermissionError) as info:
        load_run(out)
    assert str(info.value).startswith(
        f"Cannot read checkpoint {out / 'checkpoint.pt'}: Permission denied."
    )
    assert "chmod u+r" in str(info.value)
    assert main(["evaluate", str(out)]) == 2
    assert "Cannot read checkpoint" in capsys.readouterr().err
    monkeypatch.undo()
    (out / "checkpoint.pt").rename(out / "moved.pt")
    (out / "checkpoint.pt").mkdir()  # a directory in its place
    assert main(["evaluate", str(out)]) == 2
    assert "checkpoint.pt is not a file (a directory?)" in capsys.readouterr().err
    (out / "checkpoint.pt").rmdir()
    (out / "moved.pt").rename(out / "checkpoint.prev.pt")  # only the previous one survived
    for argv in (["evaluate", str(out)], ["train", "--out", str(out), "--resume"]):
        assert main(argv) == 2
        assert "rename it to checkpoint.pt to continue" in capsys.readouterr().err


def test_stale_temporaries_are_cleaned_and_fresh_ones_kept(run_dir: Path, tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint.pt", "config.json", "history.json"):
        (out / name).write_bytes((run_dir / name).read_bytes())
    stale = [out / ".checkpoint.pt.k2j_9x0a.tmp", out / ".history.json.abc123.tmp"]
    others = [out / ".evaluate-iwae-test.json.abc123.tmp", out / "checkpoint.pt.tmp"]
    for path in stale + others:
        path.write_bytes(b"partial")
        os.utime(path, (0, 0))  # left by a process killed long ago
    fit(tiny_vae(), binary_data(), num_samples=480, out_dir=out, resume=True, **FIT_KW)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in others)


def test_a_checkpoint_with_the_optimizer_state_of_the_unfrozen_parameters_only_resumes(
    tmp_path: Path,
) -> None:
    """Earlier versions kept only the parameters with requires_grad in the optimizer: such a
    checkpoint of a run with a frozen parameter resumes, the same as one written now."""

    def frozen_vae():
        vae = tiny_vae()
        vae.decoder.out.bias.requires_grad_(False)
        return vae

    data = binary_data()
    now = tmp_path / "now"
    fit(frozen_vae(), data, num_samples=320, out_dir=now, **FIT_KW)
    frozen_index = [p.requires_grad for p in frozen_vae().parameters()].index(False)

    def as_before(payload):
        opt = payload["optimizer_state"]
        kept = [i for i in opt["param_groups"][0]["params"] if i != frozen_index]
        opt["state"] = {new: opt["state"][old] for new, old in enumerate(kept)}
        opt["param_groups"][0]["params"] = list(range(len(kept)))

    before = craft(now, tmp_path / "before", as_before)
    for name in ("config.json", "history.json"):
        (before / name).write_bytes((now / name).read_bytes())
    results = [
        fit(frozen_vae(), data, num_samples=480, out_dir=out, resume=True, **FIT_KW)
        for out in (now, before)
    ]
    a, b = (dict(r.module.named_parameters()) for r in results)
    for name, value in a.items():
        assert torch.equal(value, b[name]), name
