"""The UV texture set builder (``ganfit.texture.dataset``) on real photos with tiny settings.

Photos: matplotlib's grace_hopper and scikit-image's astronaut (one face each), coffee (no face)
and a corrupt JPEG. One in-process build is the reference; the other tests resume it, rebuild it
with two worker processes, interrupt builds (an injected KeyboardInterrupt, a real SIGINT to the
process group, a killed worker) and compare bytes with it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganfit.texture import dataset as ds
from ganfit.texture.dataset import BuildConfig, BuildInterrupted, build_texture_dataset

TINY = BuildConfig(texture_size=64, landmark_steps=30, lighting_steps=10, render_size=64)
TINY_ARGS = ["--texture-size", "64", "--steps", "30", "--lighting-steps", "10", "--render-size", "64", "-q"]
FACES = ("grace_hopper", "astronaut")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory, grace_path: Path, astronaut_path: Path, coffee_path: Path) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    shutil.copy(grace_path, folder / "grace_hopper.jpg")
    shutil.copy(astronaut_path, folder / "astronaut.png")
    shutil.copy(coffee_path, folder / "coffee.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg " * 20)
    (folder / "notes.txt").write_text("not a photo: ignored")
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory, photo_dir: Path) -> tuple[Path, ds.Summary]:
    """One in-process build (workers=1): the outputs every other test compares with."""
    out = tmp_path_factory.mktemp("uvset") / "set"
    return out, build_texture_dataset(photo_dir, out, TINY, workers=1, progress=False)


@pytest.fixture(scope="module")
def many_dir(tmp_path_factory, photo_dir: Path, grace_path: Path, astronaut_path: Path) -> Path:
    """Eight face photos (copies), enough work to interrupt a two-worker build in the middle,
    plus the two that fail."""
    folder = tmp_path_factory.mktemp("many")
    for i in range(4):
        shutil.copy(grace_path, folder / f"g{i}.jpg")
        shutil.copy(astronaut_path, folder / f"a{i}.png")
    for name in ("coffee.png", "corrupt.jpg"):
        shutil.copy(photo_dir / name, folder / f"x_{name}")
    return folder


def _partials(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if ".partial" in p.name]


def _record(out: Path, key: str) -> dict:
    return json.loads((out / "records" / f"{key}.json").read_text())


def test_outputs_records_and_manifest(reference) -> None:
    out, summary = reference
    assert (summary.ok, summary.failed, summary.new_ok, summary.new_failed) == (2, 2, 2, 2)
    assert summary.line() == "2 ok, 2 failed: 1 no face found, 1 unreadable image"
    for key in FACES:
        albedo = np.asarray(Image.open(out / f"{key}.png"))
        with Image.open(out / f"{key}_conf.png") as image:
            assert image.mode == "L"
            conf = np.asarray(image)
        assert albedo.shape == (64, 64, 3) and albedo.dtype == np.uint8
        assert conf.shape == (64, 64) and conf.dtype == np.uint8
        record = _record(out, key)
        assert record["status"] == "ok" and record["landmark_error_iod"] < 0.1 and record["seconds"] > 0
        assert set(record["light"]) == {"position", "colour", "ambient"}
        # Confidence is high where the face was seen and 0 on the filled rest of the map.
        assert conf.max() == 255 and (conf == 0).mean() > 0.3
        assert record["observed_fraction"] > 0.1, record
        # Albedo where seen is a real photo texture, not the flat fill.
        assert albedo[conf > 128].std() > 5
    coffee, corrupt = _record(out, "coffee"), _record(out, "corrupt")
    assert coffee["status"] == "failed" and coffee["reason"] == "no face found" and "no face" in coffee["message"]
    assert corrupt["status"] == "failed" and corrupt["reason"] == "unreadable image"
    assert not (out / "coffee.png").exists() and not (out / "notes.png").exists()
    assert not _partials(out)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["engine_version"]
    assert "non-commercial" in manifest["licence"]
    assert manifest["counts"]["ok"] == 2 and manifest["counts"]["failure_reasons"] == {
        "no face found": 1, "unreadable image": 1}
    assert {f["photo"] for f in manifest["failures"]} == {"coffee.png", "corrupt.jpg"}
    split = json.loads((out / "split.json").read_text())
    assert sorted(split["train"] + split["test"]) == sorted(FACES)


def test_the_texture_model_reader_opens_the_set(reference) -> None:
    from ganfit.texture.model import UvTextureSet

    out, _ = reference
    textures = UvTextureSet.open(out, "all")
    assert sorted(textures.names) == sorted(FACES)
    assert textures.load().shape == (2, 64, 64, 3)
    assert textures.load_confidence().shape == (2, 64, 64)


def test_second_run_resumes_without_fitting(reference, photo_dir: Path) -> None:
    out, _ = reference
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}
    seen: list[dict] = []
    summary = build_texture_dataset(photo_dir, out, TINY, workers=1, progress=False, on_record=seen.append)
    assert seen == [] and summary.processed == 0 and summary.skipped == 4
    assert (summary.ok, summary.failed) == (2, 2)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.png")} == stamps
    # Asking again for the failures fits only those.
    summary = build_texture_dataset(photo_dir, out, TINY, workers=1, progress=False, retry_failed=True,
                                    on_record=seen.append)
    assert sorted(r["photo"] for r in seen) == ["coffee.png", "corrupt.jpg"] and summary.skipped == 2


def test_resume_refuses_other_settings(reference, photo_dir: Path, capsys) -> None:
    out, _ = reference
    code = ds.main(["--images", str(photo_dir), "--out", str(out), "--texture-size", "32", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith("ganfit: error:") and "texture_size" in err


def test_interrupt_in_process_leaves_no_partial_files(reference, photo_dir: Path, tmp_path: Path,
                                                      monkeypatch) -> None:
    out, _ = reference
    target = tmp_path / "set"
    original = ds.PhotoFitter._write_png

    def write_then_stop(pixels: np.ndarray, path: Path) -> None:
        if path.name == "grace_hopper_conf.png":  # between a photo's two PNGs
            raise KeyboardInterrupt
        original(pixels, path)

    monkeypatch.setattr(ds.PhotoFitter, "_write_png", staticmethod(write_then_stop))
    with pytest.raises(BuildInterrupted) as stop:
        build_texture_dataset(photo_dir, target, TINY, workers=1, progress=False)
    assert stop.value.summary.interrupted and stop.value.summary.ok == 1  # astronaut was done
    assert not _partials(target)
    assert not (target / "records" / "grace_hopper.json").exists()  # so a resume redoes it
    assert json.loads((target / "manifest.json").read_text())["status"] == "interrupted"

    monkeypatch.setattr(ds.PhotoFitter, "_write_png", staticmethod(original))
    summary = build_texture_dataset(photo_dir, target, TINY, workers=1, progress=False)
    # Work order astronaut, grace_hopper, coffee, corrupt: only astronaut was done.
    assert summary.skipped == 1 and summary.processed == 3 and summary.ok == 2
    for key in FACES:
        for suffix in (".png", "_conf.png"):
            assert (target / f"{key}{suffix}").read_bytes() == (out / f"{key}{suffix}").read_bytes()


def _default_sigint() -> None:
    """In the child before it runs Python: Ctrl-C's default disposition, as under a terminal.
    A test run started in the background by a non-interactive shell (``make test &``, nohup)
    inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler: the build
    ran to the end (exit 0) and the Ctrl-C test failed only there."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(photos: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "backend")}
    return subprocess.Popen(
        [sys.executable, "-m", "ganfit.texture.dataset", "--images", str(photos), "--out", str(out),
         "--workers", "2", *TINY_ARGS, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
        preexec_fn=_default_sigint if sys.platform != "win32" else None,
    )


def _wait_for_records(out: Path, count: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if len(list((out / "records").glob("*.json"))) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"no {count} records within {timeout} s (exit {process.poll()})")


def _same_as_reference(out: Path, reference_out: Path, names: list[str]) -> None:
    for name in names:
        source = "grace_hopper" if name.startswith("g") else "astronaut"
        for suffix in (".png", "_conf.png"):
            assert (out / f"{name}{suffix}").read_bytes() == (reference_out / f"{source}{suffix}").read_bytes()


@pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGINT are POSIX")
def test_ctrl_c_stops_cleanly_and_resumes(reference, many_dir: Path, tmp_path: Path) -> None:
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it."""
    out = tmp_path / "set"
    process = _cli(many_dir, out)
    _wait_for_records(out, 1, process)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not _partials(out)
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    done = [p.stem for p in (out / "records").glob("*.json")]
    assert 1 <= len(done) < 10
    for key in done:  # every recorded success is complete
        if _record(out, key)["status"] == "ok":
            assert (out / f"{key}.png").is_file() and (out / f"{key}_conf.png").is_file()

    summary = build_texture_dataset(many_dir, out, TINY, workers=1, progress=False)
    assert summary.skipped == len(done)
    assert summary.line() == "8 ok, 2 failed: 1 no face found, 1 unreadable image"
    _same_as_reference(out, reference[0], [f"{c}{i}" for c in "ga" for i in range(4)])


@pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGTERM are POSIX")
def test_sigterm_stops_cleanly_and_leaves_no_workers(many_dir: Path, tmp_path: Path) -> None:
    """SIGTERM to the parent alone (kill PID, a scheduler): it stops like Ctrl-C, and its worker
    processes go with it instead of running on."""
    out = tmp_path / "set"
    process = _cli(many_dir, out)
    _wait_for_records(out, 1, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not _partials(out)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)  # anything left in the build's process group?
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("worker processes outlived the SIGTERM-ed build")


def _worker_pids(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return [c for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the workers through Linux /proc")
def test_two_workers_survive_a_killed_worker_and_match_one_worker(reference, many_dir: Path,
                                                                   tmp_path: Path) -> None:
    """`--workers 2` writes the same bytes as the in-process reference, even when a worker is
    killed mid-build (it is replaced and its photos retried)."""
    out = tmp_path / "set"
    process = _cli(many_dir, out)
    _wait_for_records(out, 1, process)
    os.kill(_worker_pids(process.pid)[0], signal.SIGKILL)
    output, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "a worker process died" in err
    assert "8 ok, 2 failed: 1 no face found, 1 unreadable image" in output
    assert not _partials(out)
    _same_as_reference(out, reference[0], [f"{c}{i}" for c in "ga" for i in range(4)])


@pytest.mark.parametrize("case", ["missing", "empty", "out_is_file", "workers", "limit", "size", "same"])
def test_bad_arguments_exit_2_with_one_line(case: str, photo_dir: Path, tmp_path: Path, capsys) -> None:
    images, out, extra = photo_dir, tmp_path / "out", []
    if case == "missing":
        images = tmp_path / "nowhere"
    elif case == "empty":
        images = tmp_path / "empty"
        images.mkdir()
        (images / "readme.txt").write_text("no photos here")
    elif case == "out_is_file":
        out.write_text("a file")
    elif case == "workers":
        extra = ["--workers", "0"]
    elif case == "limit":
        extra = ["--limit", "0"]
    elif case == "size":
        extra = ["--texture-size", "8"]
    elif case == "same":
        out = photo_dir
    code = ds.main(["--images", str(images), "--out", str(out), "-q", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("ganfit: error:") and "\n" not in err, err
    if case != "out_is_file":
        assert not out.is_dir() or case == "same"


def test_limit_takes_the_first_photos_in_name_order(photo_dir: Path, tmp_path: Path) -> None:
    summary = build_texture_dataset(photo_dir, tmp_path / "set", TINY, workers=1, limit=2, progress=False)
    assert summary.total == 2  # astronaut.png, coffee.png
    assert summary.line() == "1 ok, 1 failed: 1 no face found"


def test_photos_are_fitted_in_hash_order_so_a_partial_set_is_a_fair_sample(photo_dir: Path, tmp_path: Path) -> None:
    seen: list[str] = []
    build_texture_dataset(photo_dir, tmp_path / "set", TINY, workers=1, progress=False,
                          on_record=lambda record: seen.append(record["key"]))
    assert seen == ["astronaut", "grace_hopper", "coffee", "corrupt"]  # not name order
    assert seen == sorted(seen, key=ds.processing_order)
    # UTKFace-style names (age first): the first tenth of the work has the folder's mean age,
    # where name order would give ages 1-17 only.
    names = [f"{age}_0_0_2017{i:05d}.jpg.chip" for age in range(1, 91) for i in range(40)]
    first = sorted(names, key=ds.processing_order)[: len(names) // 10]
    assert abs(np.mean([int(n.split("_")[0]) for n in first]) - 45.5) < 3
    assert max(int(n.split("_")[0]) for n in sorted(names)[: len(names) // 10]) < 20


def test_keys_split_and_held_out_photos() -> None:
    keys = ds.photo_keys([Path("a.jpg"), Path("a.png"), Path("b_conf.jpg"), Path("c.jpg.chip.jpg")])
    assert keys == ["a-jpg", "a-png", "b_conf-jpg", "c.jpg.chip"]
    names = [f"{i}_0_0_2017010{i % 10}.jpg.chip.jpg" for i in range(20000)]
    share = np.mean([ds.held_out(n, 0.05) for n in names])
    assert 0.04 < share < 0.06
    assert [ds.held_out(n, 0.05) for n in names[:500]] == [ds.held_out(n, 0.05) for n in names[:500]]
    # The objective benchmark's fitting photos are always held out.
    assert len(set(ds.OBJECTIVE_TEST_PHOTOS)) == 20
    assert all(ds.held_out(n, 0.0) for n in ds.OBJECTIVE_TEST_PHOTOS)


def test_failure_reasons() -> None:
    from ganfit.errors import InputImageError, NoFaceError

    assert ds._failure_reason(NoFaceError("x: no face found; ...")) == "no face found"
    assert ds._failure_reason(InputImageError("x: the face is too small (40 px wide ...)")) == "face too small"
    assert ds._failure_reason(InputImageError("x: not an image file")) == "unreadable image"
    assert ds._failure_reason(ds.PoorFitError("x: misses")) == "poor landmark fit"
    assert ds._failure_reason(RuntimeError("boom")) == "internal error (RuntimeError)"


def test_exit_1_when_no_photo_succeeds(photo_dir: Path, tmp_path: Path, capsys) -> None:
    images = tmp_path / "faceless"
    images.mkdir()
    for name in ("coffee.png", "corrupt.jpg"):
        shutil.copy(photo_dir / name, images / name)
    code = ds.main(["--images", str(images), "--out", str(tmp_path / "set"), "--workers", "1", *TINY_ARGS])
    captured = capsys.readouterr()
    assert code == 1
    assert "0 ok, 2 failed: 1 no face found, 1 unreadable image" in captured.out
    assert "manifest.json" in captured.err
