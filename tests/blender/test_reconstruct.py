"""Reconstruct Face in real Blender against the real engine (``python -m ganfit serve`` in a
child process, this test run's own interpreter): errors, a killed engine, then a Fast
reconstruction imported into the scene. torch never loads in this (Blender's) process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import BPY_MISSING

bpy = pytest.importorskip("bpy", reason=BPY_MISSING)

from .conftest import empty_scene  # noqa: E402

_state: dict[str, int] = {}


@pytest.fixture(scope="module")
def addon(installed_addon: str):
    """The installed add-on's reconstruct module, its engine set to this interpreter."""
    bpy.context.preferences.addons[installed_addon].preferences.python_path = sys.executable
    module = sys.modules[f"{installed_addon}.reconstruct_op"]
    yield module
    module.EVENT_HOOKS.clear()
    module.shutdown_engine()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from ganfit.io.samples import sample_photo  # numpy/matplotlib/skimage only

    cache = tmp_path_factory.mktemp("samples")
    out = {name: sample_photo(name, cache_dir=cache) for name in ("grace_hopper", "coffee")}
    assert "torch" not in sys.modules
    return out


def _reconstruct(photo: Path | str, preset: str = "FAST") -> set[str]:
    settings = bpy.context.scene.ganfit_reconstruct
    settings.photo, settings.preset = str(photo), preset
    return bpy.ops.ganfit.reconstruct()


def _objects() -> list[str]:
    return sorted(o.name for o in bpy.data.objects)


def test_missing_photo_is_reported(addon, tmp_path: Path) -> None:
    empty_scene()
    with pytest.raises(RuntimeError, match="Photo not found"):
        _reconstruct(tmp_path / "nope.jpg")
    assert _objects() == []


def test_bad_interpreter_is_reported(addon, installed_addon: str, photos: dict[str, Path], tmp_path: Path) -> None:
    empty_scene()
    prefs = bpy.context.preferences.addons[installed_addon].preferences
    prefs.python_path = str(tmp_path / "no-python")
    try:
        with pytest.raises(RuntimeError, match="interpreter not found"):
            _reconstruct(photos["grace_hopper"])
    finally:
        prefs.python_path = sys.executable
    assert _objects() == []


def test_interpreter_without_ganfit(addon, installed_addon: str) -> None:
    engine_client = sys.modules[f"{installed_addon}.engine_client"]
    python = "/usr/bin/python3"
    if not Path(python).is_file() or subprocess.run([python, "-c", "import ganfit"], capture_output=True).returncode == 0:
        pytest.skip(f"needs a Python without ganfit at {python}")
    with pytest.raises(engine_client.EngineError, match="No module named 'ganfit'"):
        engine_client.check_python(python)
    client = engine_client.EngineClient(python)
    with pytest.raises(engine_client.EngineError, match="did not start.*No module named '?ganfit"):
        client.send({"type": "status", "id": "x"})
    assert not client.alive()


def test_no_face_is_reported(addon, photos: dict[str, Path]) -> None:
    empty_scene()
    with pytest.raises(RuntimeError, match="(?i)no face"):
        _reconstruct(photos["coffee"])
    assert _objects() == [] and len(bpy.data.meshes) == 0


def test_engine_killed_mid_way(addon, photos: dict[str, Path]) -> None:
    empty_scene()

    def kill_on_first_progress(event: dict) -> None:
        if event["type"] == "progress" and "killed" not in _state:
            client = addon.engine_client()
            _state["killed"] = client.pid
            os.kill(client.pid, signal.SIGKILL)

    addon.EVENT_HOOKS.append(kill_on_first_progress)
    try:
        with pytest.raises(RuntimeError, match="engine stopped.*see .*engine.log"):
            _reconstruct(photos["grace_hopper"])
    finally:
        addon.EVENT_HOOKS.remove(kill_on_first_progress)
    assert "killed" in _state
    assert _objects() == [] and len(bpy.data.meshes) == 0 and len(bpy.data.collections) == 0
    assert not addon.engine_client().alive()


def test_fast_reconstruction_imports_head_camera_light(addon, photos: dict[str, Path]) -> None:
    """Runs after the kill test: the next reconstruction starts a fresh engine."""
    empty_scene()
    assert _reconstruct(photos["grace_hopper"]) == {"FINISHED"}
    client = addon.engine_client()
    assert client.alive()
    if "killed" in _state:
        assert client.pid != _state["killed"]
    collections = [c for c in bpy.data.collections if c.name.startswith("GANFit ")]
    assert len(collections) == 1
    by_type = {o.type: o for o in collections[0].objects}
    assert sorted(by_type) == ["CAMERA", "LIGHT", "MESH"]
    head = by_type["MESH"]
    assert len(head.data.shape_keys.key_blocks) == 1 + 52
    assert "jawOpen" in head.data.shape_keys.key_blocks
    assert bpy.context.scene.camera == by_type["CAMERA"]
    result = Path(head["ganfit_result"])
    assert (result / "result.json").is_file()
    assert "torch" not in sys.modules
