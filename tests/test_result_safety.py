"""Result folders under hostile conditions: what ``--force`` may delete, writers killed mid-write,
names and places the OS refuses, full disks, damaged files handed to the reader.

The kill test writes one real result (a real reconstruction of grace_hopper with tiny steps),
then kills writers of it at random moments, SIGKILL and SIGTERM mixed.
"""

from __future__ import annotations

import contextlib
import io
import dataclasses
import errno
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ganfit.errors import OutputError
from ganfit.io import atomic, result as result_module
from ganfit.io.result import (
    MAX_JSON_BYTES,
    PREVIEW_PNG,
    RESULT_JSON,
    TEXTURE_PNG,
    Reconstruction,
    ResultFileError,
    check_output_folder,
    is_result_folder,
    read_result,
    write_result,
)
from test_result_io import assert_same, siblings, synthetic_reconstruction

#: One thread per child: several torch processes spinning on two shared cores slow each other
#: down many times over.
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
LEFTOVER = re.compile(r"\..*\.(partial|old)(\..*)?$")


@pytest.fixture
def recon() -> Reconstruction:
    return synthetic_reconstruction()


def leftovers(folder: Path) -> list[str]:
    """Hidden temporaries (``.partial`` folders and files, ``.old`` asides) in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if LEFTOVER.match(p.name))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def dead_pid() -> int:
    """The PID of a process that has exited and been reaped (what a killed writer leaves)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``folder`` (``size=200k``, ``ro``, ...); skip where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    if sys.platform != "linux" or shutil.which("mount") is None:
        pytest.skip("needs Linux mount")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


# --- 1. --force deletes only a ganfit result, and nothing the user put in it -----------------


def test_force_never_replaces_a_folder_that_merely_holds_a_result_json(
    tmp_path: Path, recon: Reconstruction
) -> None:
    project = tmp_path / "project"
    (project / "runs").mkdir(parents=True)
    (project / RESULT_JSON).write_text('{"experiment": 3, "lr": 0.01}')
    (project / "data.csv").write_text("a,b\n1,2\n")
    (project / "runs" / "log.txt").write_text("epoch 1")
    before = sorted(p.relative_to(project).as_posix() for p in project.rglob("*"))
    assert not is_result_folder(project)
    for attempt in (lambda: check_output_folder(project, force=True),
                    lambda: write_result(recon, project, force=True)):
        with pytest.raises(OutputError, match="not a ganfit result folder") as info:
            attempt()
        assert "\n" not in str(info.value)
    assert sorted(p.relative_to(project).as_posix() for p in project.rglob("*")) == before
    assert siblings(tmp_path) == ["project"]


@pytest.mark.parametrize(
    "content",
    ['{"format": "something-else", "files": {}}', "[1, 2]", "{ not json", b"\xff\xfe",
     "[" * 100_000 + "]" * 100_000],
    ids=["other-format", "not-an-object", "broken", "not-utf8", "deep"],
)
def test_force_needs_the_ganfit_format_key(
    tmp_path: Path, recon: Reconstruction, content: str | bytes
) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    path = folder / RESULT_JSON
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert not is_result_folder(folder)
    with pytest.raises(OutputError, match="not a ganfit result folder"):
        write_result(recon, folder, force=True)
    assert siblings(folder) == [RESULT_JSON]


def test_force_never_reads_a_huge_result_json(tmp_path: Path, recon: Reconstruction) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    with open(folder / RESULT_JSON, "wb") as handle:  # valid ganfit JSON, padded past the limit
        handle.write(b'{"format": "ganfit-result", "pad": "')
        handle.truncate(MAX_JSON_BYTES + 10)
    assert not is_result_folder(folder)
    with pytest.raises(OutputError, match="not a ganfit result folder"):
        write_result(recon, folder, force=True)


def test_force_refuses_files_the_user_added_to_a_result(
    tmp_path: Path, recon: Reconstruction
) -> None:
    out = write_result(recon, tmp_path / "out")
    (out / "notes.txt").write_text("looks good at 0.4 jawOpen")
    (out / "scene.blend").write_bytes(b"BLENDER")
    before = snapshot(out)
    expected = (
        f"{out}: holds files ganfit did not write (notes.txt, scene.blend); "
        "move them out or choose another output folder"
    )
    with pytest.raises(OutputError) as info:
        check_output_folder(out, force=True)
    assert str(info.value) == expected
    with pytest.raises(OutputError) as info:
        write_result(synthetic_reconstruction(seed=1), out, force=True)
    assert str(info.value) == expected
    assert snapshot(out) == before and siblings(tmp_path) == ["out"]
    # a folder counts too, and the list stays one short line
    (out / "renders").mkdir()
    for i in range(6):
        (out / f"v{i}.png").write_bytes(b"x")
    with pytest.raises(OutputError, match=r"\(notes.txt, renders, scene.blend, v0.png, v1.png "
                                          r"and 4 more\)"):
        write_result(recon, out, force=True)


def test_force_ignores_what_the_os_drops_into_folders(tmp_path: Path, recon: Reconstruction) -> None:
    out = write_result(recon, tmp_path / "out", exports=False)
    (out / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    newer = synthetic_reconstruction(seed=1)
    write_result(newer, out, force=True, exports=False)
    assert_same(newer, read_result(out), skip=("created",))


def test_a_file_added_during_the_write_is_not_deleted(
    tmp_path: Path, recon: Reconstruction, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard is asked again just before the swap: the user may save into the folder while
    the new result is being written."""
    out = write_result(recon, tmp_path / "out", exports=False)
    real = result_module.write_png

    def write_png_while_the_user_saves(image, path):  # type: ignore[no-untyped-def]
        (out / "scene.blend").write_bytes(b"BLENDER")
        real(image, path)

    monkeypatch.setattr(result_module, "write_png", write_png_while_the_user_saves)
    with pytest.raises(OutputError, match=r"holds files ganfit did not write \(scene.blend\)"):
        write_result(synthetic_reconstruction(seed=1), out, force=True, exports=False)
    assert (out / "scene.blend").read_bytes() == b"BLENDER"
    assert_same(recon, read_result(out), skip=("created",))
    assert siblings(tmp_path) == ["out"]


# --- 4. what a killed writer leaves is cleaned by the next write ------------------------------


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_write(
    tmp_path: Path, recon: Reconstruction
) -> None:
    out = write_result(recon, tmp_path / "out", exports=False)
    pid = dead_pid()
    partial = tmp_path / f".out.{pid}-0123456789ab.partial"
    partial.mkdir()
    (partial / "head.npz").write_bytes(b"PK\x03\x04 half written")
    legacy = tmp_path / ".out.0123456789ab.partial"  # an earlier ganfit's name, no PID
    legacy.mkdir()
    stale = tmp_path / f".out.{pid}-00112233aabb.old"  # killed after publishing the new result
    shutil.copytree(out, stale)
    old = time.time() - 3600
    os.utime(legacy, (old, old))
    unrelated = tmp_path / ".outer.1-0123456789ab.partial"  # another target's: not ours to touch
    unrelated.mkdir()
    newer = synthetic_reconstruction(seed=1)
    write_result(newer, out, force=True, exports=False)
    assert siblings(tmp_path) == [".outer.1-0123456789ab.partial", "out"]
    assert_same(newer, read_result(out), skip=("created",))


def test_the_old_result_of_a_writer_killed_mid_swap_is_put_back(
    tmp_path: Path, recon: Reconstruction
) -> None:
    """Killed between moving the old result aside and renaming the new one in: the target is
    missing, the old result sits in a ``.old`` folder. The next run restores it, not deletes."""
    out = write_result(recon, tmp_path / "out", exports=False)
    pid = dead_pid()
    os.rename(out, tmp_path / f".out.{pid}-0123456789ab.old")
    shutil.copytree(tmp_path / f".out.{pid}-0123456789ab.old", tmp_path / f".out.{pid}-ba9876543210.partial")
    with pytest.raises(OutputError, match="already exists"):  # it is back, so --force is needed
        check_output_folder(out)
    assert siblings(tmp_path) == ["out"]
    assert_same(recon, read_result(out), skip=("created",))


def test_a_live_writers_temporary_is_never_touched(tmp_path: Path, recon: Reconstruction) -> None:
    """A temporary locked by a live process, or unlocked but just created by a live process
    (before it could lock it), stays."""
    if atomic.fcntl is None:
        pytest.skip("no flock on this platform: leftovers are left alone")
    locked = tmp_path / ".out.1-0123456789ab.partial"  # PID 1 is alive; the lock decides
    locked.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import fcntl, os, sys, time
            fd = os.open({str(locked)!r}, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
            print("locked", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        old = time.time() - 3600
        os.utime(locked, (old, old))  # old, and its PID is dead: only the lock protects it
        os.rename(locked, locked := tmp_path / f".out.{dead_pid()}-0123456789ab.partial")
        fresh = tmp_path / f".out.{os.getpid()}-ba9876543210.partial"  # unlocked, live, young
        fresh.mkdir()
        write_result(recon, tmp_path / "out", exports=False)
        assert siblings(tmp_path) == sorted([locked.name, fresh.name, "out"])
    finally:
        holder.kill()
        holder.wait()
    write_result(recon, tmp_path / "out", force=True, exports=False)
    assert siblings(tmp_path) == sorted([fresh.name, "out"])  # the lock is gone with its holder


def test_leftover_files_of_atomic_file_are_removed(tmp_path: Path) -> None:
    stray = tmp_path / f".head.{dead_pid()}-0123456789ab.partial.glb"
    stray.write_bytes(b"glTF half")
    other = tmp_path / f".head.{dead_pid()}-0123456789ab.partial.obj"  # another file's
    other.write_bytes(b"v 0 0 0")
    with atomic.atomic_file(tmp_path / "head.glb") as tmp:
        tmp.write_bytes(b"glTF")
    assert siblings(tmp_path) == sorted(["head.glb", other.name])


KILL_LOOP = """
import dataclasses, signal, sys
from ganfit.io.result import read_result, write_result

def terminate(signum, frame):  # what the CLI does with SIGTERM: unwind like Ctrl-C
    raise KeyboardInterrupt
if sys.argv[4] == "term-handler":
    signal.signal(signal.SIGTERM, terminate)
base = read_result(sys.argv[1])
for i in range(1000):
    created = f"{sys.argv[3]}-{i}"
    print("start", created, flush=True)
    write_result(dataclasses.replace(base, created=created), sys.argv[2], force=True)
    print("done", created, flush=True)
"""


@pytest.fixture(scope="module")
def real_result(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real result folder: ``ganfit reconstruct`` of grace_hopper with tiny steps."""
    from ganfit.io.samples import sample_photo

    out = tmp_path_factory.mktemp("real") / "grace"
    done = subprocess.run(
        [sys.executable, "-m", "ganfit", "reconstruct", str(sample_photo("grace_hopper")), "-o",
         str(out), "--steps", "20", "--lighting-steps", "2", "--fit-steps", "1", "-q"],
        capture_output=True, text=True, timeout=600, env=ENV,
    )
    assert done.returncode == 0, done.stderr
    return out


def test_writers_killed_at_random_moments_leave_a_whole_result(
    real_result: Path, tmp_path: Path
) -> None:
    """Kill writers at random moments (SIGKILL, SIGTERM with and without the CLI's handler):
    once the next run has cleaned up, no temporary is left and the folder holds the old result
    or the new one, whole. Then the same for real ``ganfit reconstruct`` processes."""
    rng = random.Random(16)
    out = tmp_path / "out"
    shutil.copytree(real_result, out)
    script = tmp_path / "kill_loop.py"
    script.write_text(KILL_LOOP)
    current = read_result(out).created
    kills = {"SIGKILL": 0, "SIGTERM": 0, "left temporaries": 0, "left no result": 0}
    start = time.monotonic()
    for run in range(24):
        how = ["SIGKILL", "SIGTERM", "term-handler"][run % 3]
        proc = subprocess.Popen([sys.executable, str(script), str(real_result), str(out),
                                 f"run{run}", how], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=ENV)
        time.sleep(rng.uniform(0.2, 1.6))
        proc.send_signal(signal.SIGKILL if how == "SIGKILL" else signal.SIGTERM)
        assert proc.stdout is not None
        lines = proc.stdout.read().split("\n")
        proc.wait()
        kills["SIGKILL" if how == "SIGKILL" else "SIGTERM"] += 1
        started = [line.split()[1] for line in lines if line.startswith("start")]
        finished = [line.split()[1] for line in lines if line.startswith("done")]
        allowed = {finished[-1] if finished else current} | set(started[-1:])
        kills["left temporaries"] += bool(leftovers(tmp_path))
        kills["left no result"] += not out.exists()  # killed between the swap's two renames
        check_output_folder(out, force=True)  # what the next run does first
        assert leftovers(tmp_path) == [], f"run {run} ({how})"
        current = read_result(out).created
        assert current in allowed, f"run {run} ({how}): {current} not in {allowed}"

    # real CLI processes, each killed at a random moment; one is killed while it writes
    photo = json.loads((real_result / RESULT_JSON).read_text())["photos"][0]
    old_created = current
    for run, when in enumerate(["writing", "any", "writing"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "ganfit", "reconstruct", photo, "-o", str(out), "--force",
             "--steps", "20", "--lighting-steps", "2", "--fit-steps", "1", "--seed", "7", "-q"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
        )
        deadline = time.monotonic() + (60 if when == "writing" else rng.uniform(1.0, 12.0))
        while time.monotonic() < deadline and proc.poll() is None:
            if when == "writing" and any(n.endswith(".partial") for n in os.listdir(tmp_path)):
                time.sleep(rng.uniform(0.0, 0.3))
                break
            time.sleep(0.005)
        sig = signal.SIGKILL if run % 2 == 0 else signal.SIGTERM
        proc.send_signal(sig)
        proc.wait()
        kills[sig.name] += 1
        kills["left temporaries"] += bool(leftovers(tmp_path))
        check_output_folder(out, force=True)
        assert leftovers(tmp_path) == [], f"CLI run {run}"
        back = read_result(out)
        assert back.created == old_created or back.settings["seed"] == 7
        old_created = back.created
    print(f"kills: {kills} in {time.monotonic() - start:.0f} s")


# --- 5. one line, not a traceback, when the OS refuses the write ------------------------------


@pytest.mark.parametrize("length", [300, 240])
def test_a_name_too_long_is_one_line(tmp_path: Path, recon: Reconstruction, length: int) -> None:
    """300: the OS refuses the name itself; 240: it takes the name but not the temporary's."""
    out = tmp_path / ("x" * length)
    for attempt in (lambda: check_output_folder(out, force=True),
                    lambda: write_result(recon, out, force=True, exports=False)):
        with pytest.raises(OutputError, match="name is too long.*choose a shorter name") as info:
            attempt()
        assert "\n" not in str(info.value)
    assert siblings(tmp_path) == []


def test_a_path_too_long_is_one_line(tmp_path: Path, recon: Reconstruction) -> None:
    out = tmp_path.joinpath(*["d" * 200] * 25, "out")
    with pytest.raises(OutputError, match="too long"):
        check_output_folder(out)
    with pytest.raises(OutputError, match="too long"):
        write_result(recon, out, exports=False)


def test_force_from_inside_the_output_folder_is_refused(
    tmp_path: Path, recon: Reconstruction, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = write_result(recon, tmp_path / "out", exports=False)
    before = snapshot(out)
    monkeypatch.chdir(out)
    for target in (".", out, "../out"):
        for attempt in (lambda: check_output_folder(target, force=True),
                        lambda: write_result(recon, target, force=True, exports=False)):
            with pytest.raises(OutputError, match="is the folder ganfit runs in.*run ganfit from "
                                                  "another folder or choose another output"):
                attempt()
    monkeypatch.chdir(tmp_path)
    assert snapshot(out) == before and siblings(tmp_path) == ["out"]


FULL_DISK = """
import logging, sys
from ganfit.errors import GanfitError
from ganfit.io.result import read_result, write_result
result = read_result(sys.argv[1])
try:
    write_result(result, sys.argv[2])
except GanfitError as exc:
    print("ganfit: error:", exc, file=sys.stderr)
    sys.exit(2)
"""


def test_a_full_disk_is_one_line_naming_the_output(real_result: Path, tmp_path: Path) -> None:
    """A real full disk (a 200 kB tmpfs; head.npz alone is larger): one line naming the output
    folder (not the hidden temporary), no second traceback from a zip file left open, and
    nothing left on the disk."""
    with tmpfs(tmp_path / "disk", "size=200k") as disk:
        script = tmp_path / "full_disk.py"
        script.write_text(FULL_DISK)
        done = subprocess.run([sys.executable, str(script), str(real_result), str(disk / "out")],
                              capture_output=True, text=True, timeout=120, env=ENV)
        assert done.returncode == 2, done.stderr
        assert done.stderr == (
            f"ganfit: error: {disk / 'out'}: no space left on the device; "
            "free some space or write elsewhere\n"
        )
        assert siblings(disk) == []


def test_a_full_disk_in_an_export_names_the_output(
    tmp_path: Path, recon: Reconstruction, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exports are written by nested atomic writes inside the hidden temporary: their
    error names the output folder all the same."""
    real_write = Path.write_bytes

    def write_bytes_on_a_full_disk(self: Path, data: bytes) -> int:
        if ".partial.glb" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes_on_a_full_disk)
    with pytest.raises(OutputError) as info:
        write_result(recon, tmp_path / "out")
    assert str(info.value).startswith(f"{tmp_path / 'out'}: no space left")
    assert ".partial" not in str(info.value)
    assert siblings(tmp_path) == []


# --- 7. the reader raises its documented error, whatever the files hold -----------------------


def _png(width: int, height: int, data: bytes = b"") -> bytes:
    """A PNG declaring ``width`` x ``height`` with the given compressed data (a bomb when the
    declared size is huge)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data or zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


DAMAGED_PNGS = {
    "empty": lambda good: b"",
    "truncated": lambda good: good[: len(good) // 2],
    "not-an-image": lambda good: b"these are my notes, not a picture\n",
    "bomb": lambda good: _png(100_000, 100_000),
    "huge-within-pillow-limit": lambda good: _png(13_000, 13_000),
}


@pytest.mark.parametrize("damage", sorted(DAMAGED_PNGS))
@pytest.mark.parametrize("name", [TEXTURE_PNG, PREVIEW_PNG])
def test_a_damaged_png_is_a_result_file_error(
    tmp_path: Path, recon: Reconstruction, name: str, damage: str
) -> None:
    out = write_result(recon, tmp_path / "out", exports=False)
    path = out / name
    path.write_bytes(DAMAGED_PNGS[damage](path.read_bytes()))
    with pytest.raises(ResultFileError, match=f"{name}: damaged.*reconstruct again") as info:
        read_result(out)
    assert "\n" not in str(info.value)


def test_deeply_nested_result_json_is_a_result_file_error(tmp_path: Path, recon: Reconstruction) -> None:
    out = write_result(recon, tmp_path / "out", exports=False)
    (out / RESULT_JSON).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ResultFileError, match="nested too deeply"):
        read_result(out)
    # deep inside an otherwise valid document
    (out / RESULT_JSON).write_text(
        json.dumps({"format": "ganfit-result", "version": 1})[:-1] + ', "settings": '
        + '{"x": ' * 100_000 + "{}" + "}" * 100_000 + "}")
    with pytest.raises(ResultFileError, match="nested too deeply"):
        read_result(out)


def test_a_huge_result_json_is_refused_unread(tmp_path: Path, recon: Reconstruction) -> None:
    out = write_result(recon, tmp_path / "out", exports=False)
    with open(out / RESULT_JSON, "r+b") as handle:
        handle.seek(MAX_JSON_BYTES + 1)
        handle.write(b" ")
    with pytest.raises(ResultFileError, match="too large"):
        read_result(out)


def _paths(value: object, prefix: tuple = ()) -> Iterator[tuple]:
    """Every key path in a JSON document, down to two levels inside lists."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:2]):
            yield from _paths(item, (*prefix, index))


def wrong_values(original: dict) -> Iterator[tuple[tuple, object, dict]]:
    """(path, value, document) for each value of ``original`` replaced by each JSON type; shared
    with the add-on reader's test (tests/blender/test_result_reader.py)."""
    for path in list(_paths(original))[1:]:
        for value in (None, True, -1, 1e308, "x", [], {}, [[1e308]] * 3):
            doc = json.loads(json.dumps(original))
            node = doc
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            yield path, value, doc


def test_any_wrong_value_in_result_json_is_a_result_file_error(
    tmp_path: Path, recon: Reconstruction
) -> None:
    """Each value of result.json replaced by each JSON type: read_result returns or raises
    ResultFileError, never a raw TypeError, KeyError, OverflowError, ..."""
    out = write_result(recon, tmp_path / "out", exports=False)
    original = json.loads((out / RESULT_JSON).read_text())
    raw: list[str] = []
    for path, value, doc in wrong_values(original):
        (out / RESULT_JSON).write_text(json.dumps(doc))
        try:
            read_result(out)
        except ResultFileError:
            pass
        except Exception as exc:  # noqa: BLE001 - collected to report them all at once
            raw.append(f"{path} = {value!r}: {type(exc).__name__}: {exc}")
    assert raw == []


def test_damaged_head_npz_is_a_result_file_error(tmp_path: Path, recon: Reconstruction) -> None:
    out = write_result(recon, tmp_path / "out", exports=False)
    good = (out / "head.npz").read_bytes()
    # flip bytes inside the first member's deflate stream (CRC and zlib both disagree)
    for position in (60, 200, len(good) // 2):
        bad = bytearray(good)
        bad[position : position + 8] = b"\xff" * 8
        (out / "head.npz").write_bytes(bytes(bad))
        with pytest.raises(ResultFileError, match="damaged"):
            read_result(out)


def test_a_head_npz_declaring_a_huge_array_is_refused_unread(tmp_path: Path, recon: Reconstruction) -> None:
    """A 1 KB head.npz whose vertices declare 4e10 floats: refused from its header, before
    numpy allocates 160 GB (the memory this process gains stays small)."""
    import resource
    import zipfile

    out = write_result(recon, tmp_path / "out", exports=False)
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**10, 4)})
    with zipfile.ZipFile(out / "head.npz", "w") as archive:
        archive.writestr("vertices.npy", header.getvalue() + b"\0" * 64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ResultFileError, match="damaged.*vertices"):
        read_result(out)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


# --- 8. the output location is checked before any fitting -------------------------------------


def _cli_refuses(out: Path, *extra: str, cwd: Path | None = None) -> str:
    """Run ``ganfit reconstruct`` with a fit that would take hours: it must refuse within
    seconds (before fitting), exit 2, and say so in one line."""
    from ganfit.io.samples import sample_photo

    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ganfit", "reconstruct", str(sample_photo("grace_hopper")), "-o",
         str(out), "--steps", "100000", "--fit-steps", "100000", "-q", *extra],
        capture_output=True, text=True, timeout=120, env=ENV, cwd=cwd,
    )
    elapsed = time.monotonic() - start
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if not line.startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith("ganfit: error: "), done.stderr
    assert elapsed < 30, f"refused only after {elapsed:.0f} s"
    return lines[0]


def test_parent_is_a_file_is_refused_before_fitting(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="blocker: is a file, not a folder"):
        check_output_folder(blocker / "deeper" / "out")
    assert "blocker: is a file, not a folder" in _cli_refuses(blocker / "out")
    assert siblings(tmp_path) == ["blocker"]


def test_read_only_file_system_is_refused_before_fitting(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "ro,size=100k") as ro:
        with pytest.raises(OutputError, match="read-only file system.*choose a folder you can"):
            check_output_folder(ro / "a" / "out")
        assert "read-only" in _cli_refuses(ro / "out")


def test_folder_without_write_permission_is_refused_before_fitting(tmp_path: Path) -> None:
    if os.name != "posix" or os.geteuid() == 0:
        pytest.skip("root ignores folder permissions (the read-only mount test covers root)")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="permission denied"):
            check_output_folder(locked / "new" / "out")
        assert "permission denied" in _cli_refuses(locked / "out")
    finally:
        locked.chmod(0o755)


def test_cli_refusals_come_before_fitting(tmp_path: Path, recon: Reconstruction) -> None:
    """The other refusals of this file, through the CLI: each before any fitting."""
    project = tmp_path / "project"
    project.mkdir()
    (project / RESULT_JSON).write_text("{}")
    assert "not a ganfit result folder" in _cli_refuses(project, "--force")
    out = write_result(recon, tmp_path / "out", exports=False)
    (out / "notes.txt").write_text("mine")
    assert "holds files ganfit did not write (notes.txt)" in _cli_refuses(out, "--force")
    (out / "notes.txt").unlink()
    assert "run ganfit from another folder" in _cli_refuses(Path("."), "--force", cwd=out)
    assert "name is too long" in _cli_refuses(tmp_path / ("n" * 300))
    assert sorted(siblings(tmp_path)) == ["out", "project"]
