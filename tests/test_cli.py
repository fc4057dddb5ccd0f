"""The command line as a user meets it: real photos, real models, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganfit.cli import main

FAST = ["--steps", "120", "--lighting-steps", "5", "--fit-steps", "3", "--texture-size", "64", "-q", "--no-exports"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ganfit", *args], capture_output=True, text=True, timeout=600)


def _one_line_error(stderr: str, *needles: str) -> None:
    lines = [l for l in stderr.strip().splitlines() if not l.startswith("WARNING")]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("ganfit: error: ")
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_reconstruct_writes_the_result_folder(grace_path: Path, tmp_path: Path):
    out = tmp_path / "grace"
    proc = _run(["reconstruct", str(grace_path), "-o", str(out), "--steps", "150", "--lighting-steps", "10", "--texture-size", "128"])
    assert proc.returncode == 0, proc.stderr
    assert "landmark error" in proc.stdout
    for name in ("result.json", "head.npz", "texture.png", "preview.png", "head.obj", "head.mtl", "head.glb"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "result.json").read_text())
    assert meta["format"] == "ganfit-result"
    assert Image.open(out / "preview.png").size == (512, 600)
    assert not [p for p in tmp_path.iterdir() if p.name != "grace"]  # no temp folders left


def test_clean_texture_option_reaches_the_fit(grace_path: Path, tmp_path: Path):
    out = tmp_path / "clean"
    proc = _run(["reconstruct", str(grace_path), "-o", str(out), *FAST, "--clean-texture"])
    assert proc.returncode == 0, proc.stderr
    settings = json.loads((out / "result.json").read_text())["settings"]
    assert settings["appearance"]["skin_only_outside_face"] is True


def _subcommands() -> list[str]:
    import argparse

    from ganfit.cli import _build_parser

    (sub,) = [a for a in _build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(sub.choices)


@pytest.mark.parametrize("command", [[], *([name] for name in _subcommands())])
def test_help_of_every_command(command: list[str], capsys):
    """``--help`` prints usage and exits 0 (a stray '%' in a help text made argparse raise)."""
    with pytest.raises(SystemExit) as stop:
        main([*command, "--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")


def test_info_lists_models_and_devices(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "devices: cpu" in text
    assert "shape_model" not in text and "anny" in text.lower()
    assert "shape_predictor_68_face_landmarks.dat" in text
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert Path(data["models"]["shape"]["path"]).is_file()


def test_missing_photo(tmp_path: Path, capsys):
    assert main(["reconstruct", str(tmp_path / "nope.jpg"), "-o", str(tmp_path / "out")]) == 2
    _one_line_error(capsys.readouterr().err, "nope.jpg", "not found")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [b"hello, not an image\n", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 40])
def test_not_an_image_or_corrupt(tmp_path: Path, capsys, content: bytes):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(content)
    assert main(["reconstruct", str(bad), "-o", str(tmp_path / "out"), *FAST]) == 2
    _one_line_error(capsys.readouterr().err, "bad.jpg")
    assert not (tmp_path / "out").exists()


def test_no_face(coffee_path: Path, tmp_path: Path, capsys):
    assert main(["reconstruct", str(coffee_path), "-o", str(tmp_path / "out"), *FAST]) == 2
    _one_line_error(capsys.readouterr().err, "coffee", "no face")
    assert not (tmp_path / "out").exists()


def test_tiny_face(grace_path: Path, tmp_path: Path, capsys):
    tiny = tmp_path / "tiny.png"
    Image.open(grace_path).resize((40, 47)).save(tiny)
    assert main(["reconstruct", str(tiny), "-o", str(tmp_path / "out"), *FAST]) == 2
    err = capsys.readouterr().err
    _one_line_error(err, "tiny.png")
    assert "no face" in err or "small" in err


def test_several_faces_uses_largest_and_face_option_chooses(two_faces_path: Path, tmp_path: Path):
    proc = _run(["reconstruct", str(two_faces_path), "-o", str(tmp_path / "a"), *FAST])
    assert proc.returncode == 0, proc.stderr
    assert "2 faces" in proc.stderr and "--face" in proc.stderr
    a = json.loads((tmp_path / "a" / "result.json").read_text())
    proc = _run(["reconstruct", str(two_faces_path), "-o", str(tmp_path / "b"), "--face", "1", *FAST])
    assert proc.returncode == 0, proc.stderr
    b = json.loads((tmp_path / "b" / "result.json").read_text())
    assert a["settings"]["face"] == 0 and b["settings"]["face"] == 1
    assert a["camera"]["position"] != b["camera"]["position"]
    proc = _run(["reconstruct", str(two_faces_path), "-o", str(tmp_path / "c"), "--face", "5", *FAST])
    assert proc.returncode == 2
    _one_line_error(proc.stderr, "two_faces")


def test_existing_output_refused_then_forced(grace_path: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert main(["reconstruct", str(grace_path), "-o", str(out), *FAST, "--seed", "1"]) == 0
    capsys.readouterr()
    assert main(["reconstruct", str(grace_path), "-o", str(out), *FAST]) == 2
    _one_line_error(capsys.readouterr().err, "out", "--force")
    assert json.loads((out / "result.json").read_text())["settings"]["seed"] == 1
    assert main(["reconstruct", str(grace_path), "-o", str(out), "--force", *FAST]) == 0
    assert json.loads((out / "result.json").read_text())["settings"]["seed"] == 0


def test_force_leaves_a_folder_that_only_holds_a_result_json(grace_path: Path, tmp_path: Path, capsys):
    """Issue 16's data loss: a folder with a result.json that is not a ganfit result (and the
    user's data.csv and runs/ beside it) was wiped by --force with exit 0."""
    out = tmp_path / "project"
    (out / "runs").mkdir(parents=True)
    (out / "result.json").write_text("{}")
    (out / "data.csv").write_text("a,b\n1,2\n")
    assert main(["reconstruct", str(grace_path), "-o", str(out), "--force", *FAST]) == 2
    _one_line_error(capsys.readouterr().err, "project")
    assert sorted(p.name for p in out.iterdir()) == ["data.csv", "result.json", "runs"]


def test_unwritable_output_location(grace_path: Path, tmp_path: Path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["reconstruct", str(grace_path), "-o", str(blocker / "out"), *FAST]) == 2
    _one_line_error(capsys.readouterr().err, "file")


@pytest.mark.parametrize("args,needle", [
    (["--steps", "0"], "--steps"), (["--face", "-1"], "--face"), (["--texture-size", "5"], "--texture-size"),
    (["--clean-texture", "--texture-model", "gan"], "--clean-texture"),
])
def test_bad_settings(grace_path: Path, tmp_path: Path, capsys, args, needle):
    assert main(["reconstruct", str(grace_path), "-o", str(tmp_path / "out"), *args]) == 2
    _one_line_error(capsys.readouterr().err, needle)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda(grace_path: Path, tmp_path: Path, capsys):
    assert main(["reconstruct", str(grace_path), "-o", str(tmp_path / "out"), "--device", "cuda", *FAST]) == 2
    _one_line_error(capsys.readouterr().err, "cuda", "--device cpu")


def test_batch_continues_after_a_bad_photo(grace_path: Path, coffee_path: Path, tmp_path: Path):
    proc = _run(["reconstruct", str(grace_path), str(coffee_path), "-o", str(tmp_path / "out"), "--each", *FAST])
    assert proc.returncode == 1
    assert "1 of 2 photos in " in proc.stdout and "photos/s)" in proc.stdout  # the batch's throughput
    assert (tmp_path / "out" / "grace_hopper" / "result.json").is_file()
    assert not (tmp_path / "out" / "coffee").exists()
    assert "1 of 2 photos failed" in proc.stderr


def test_photos_of_one_person_fail_together(grace_path: Path, coffee_path: Path, tmp_path: Path):
    """Without --each, several photos are one person: a photo without a face stops the fit with
    one line naming it, and nothing is written."""
    proc = _run(["reconstruct", str(grace_path), str(coffee_path), "-o", str(tmp_path / "out"), *FAST])
    assert proc.returncode == 2
    _one_line_error(proc.stderr, "coffee")
    assert not (tmp_path / "out").exists()


# --- hardening (issue 16) ----------------------------------------------------------------------


@pytest.mark.parametrize("args,needle", [
    (["--seed", str(2**70)], "--seed"), (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"),
    (["--lr", "1e10"], "--lr"), (["--loss-weight", "identity=1e300"], "--loss-weight identity"),
    (["--fit-lr", "-1"], "--fit-lr"), (["--device", "gpu"], "--device"),
    (["--mode", "fast", "--fit-steps", "3"], "--fit-steps: not used by mode fast"), (["--mode", "turbo"], "--mode turbo"),
])
def test_bad_values_are_refused_before_any_work(grace_path: Path, tmp_path: Path, capsys, args, needle):
    """These were accepted and failed only after the whole fit, or with a traceback."""
    assert main(["reconstruct", str(grace_path), "-o", str(tmp_path / "out"), *args]) == 2
    _one_line_error(capsys.readouterr().err, needle)
    assert not (tmp_path / "out").exists()


def test_a_diverging_fit_stops_and_names_the_setting(grace_path: Path, tmp_path: Path):
    """--lr 1 sent the head 53% of the eye distance off the photo and wrote it as a result; the
    landmark stage now sees its loss rise 3x and stops with the setting to lower."""
    proc = _run(["reconstruct", str(grace_path), "-o", str(tmp_path / "out"), *FAST, "--lr", "1"])
    assert proc.returncode == 2
    _one_line_error(proc.stderr, "diverged", "--lr", "now 1")
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_a_non_finite_loss_stops_the_stage():
    from ganfit.errors import FitDivergedError
    from ganfit.fit.optim import check_finite_loss, check_loss_fell

    check_finite_loss("landmark stage", 3, 0.5, "lower --lr")
    with pytest.raises(FitDivergedError, match="step 4 .*nan.*lower --lr"):
        check_finite_loss("landmark stage", 3, float("nan"), "lower --lr")
    check_loss_fell("landmark stage", [1.0, 0.5, 2.9], "lower --lr")
    check_loss_fell("landmark stage", [0.0057, 0.05, 0.03], "lower --lr")  # a short fit's overshoot
    with pytest.raises(FitDivergedError, match="rose from 1 to 3.5"):
        check_loss_fell("landmark stage", [1.0, 0.5, 3.5], "lower --lr")
    with pytest.raises(FitDivergedError, match="rose from 0.0057 to 0.334"):
        check_loss_fell("landmark stage", [0.0057, 144.0, 0.334], "lower --lr")


def test_each_keeps_every_result_inside_out(tmp_path: Path):
    """A photo named '...jpg' mapped to OUT/.. (outside OUT); '.hidden.jpg' to a hidden folder."""
    from ganfit.cli import _outputs

    out = tmp_path / "out"
    photos = [Path("...jpg"), Path(".hidden.jpg"), Path("a.jpg"), Path("a.png"), Path(".jpg")]
    outputs = _outputs(photos, out)
    assert len(set(outputs)) == len(photos)
    for folder in outputs:
        assert folder.parent == out and not folder.name.startswith(".") and folder.name not in ("", "..")


def test_sigterm_stops_like_ctrl_c(grace_path: Path, tmp_path: Path):
    """SIGTERM used to kill the process mid-fit with no message; now it stops like Ctrl-C."""
    import signal
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "ganfit", "reconstruct", str(grace_path), "-o", str(out),
                             "--steps", "5000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    seen = ""
    while "landmarks" not in seen and time.monotonic() < deadline:  # the bar reached the fit
        seen += proc.stderr.read(1)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, stderr
    assert "interrupted; no partial result was written" in stderr and "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.iterdir())
