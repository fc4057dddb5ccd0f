"""Fixtures for the add-on tests, which run in real Blender (the PyPI ``bpy`` module).

Tests that need Blender are skipped, with the reason, when ``bpy`` is not importable. Blender's user folders (config,
extensions) are redirected to a temporary folder before ``bpy`` loads, so the tests never touch
the user's own Blender set-up. The engine runs in a child process: torch never loads beside bpy.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RENDER_SIZE = (64, 75)  # the grace_hopper photo (512x600) at 1/8

#: Why the Blender tests are skipped where ``bpy`` is missing (each module that needs bpy calls
#: ``pytest.importorskip("bpy", reason=BPY_MISSING)``; the reader test needs only numpy).
BPY_MISSING = "bpy is not installed: the Blender add-on tests need it (pip install bpy==5.0.1, Python 3.11)"
HAVE_BPY = importlib.util.find_spec("bpy") is not None

if HAVE_BPY:
    # before bpy loads: Blender's user config and extensions go to a throwaway folder
    os.environ["BLENDER_USER_RESOURCES"] = tempfile.mkdtemp(prefix="ganfit-blender-user-")
    import bpy


@pytest.fixture(scope="session")
def engine_result(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real result folder from the engine (grace_hopper, fastest settings), plus
    ``engine_render.npz`` (the engine's own render at RENDER_SIZE) beside it."""
    out = tmp_path_factory.mktemp("engine") / "grace_hopper"
    script = Path(__file__).with_name("make_engine_result.py")
    done = subprocess.run(
        [sys.executable, str(script), str(out), *map(str, RENDER_SIZE)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, f"the engine failed:\n{done.stderr[-4000:]}"
    return out


@pytest.fixture(scope="session")
def extension_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The extension zip as ``python build.py`` makes it (validated by Blender's validator)."""
    out_dir = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, str(ROOT / "build.py"), "--output-dir", str(out_dir)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, f"build.py failed:\n{done.stderr}"
    assert "Blender's validator: Success" in done.stderr, done.stderr
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def installed_addon(extension_zip: Path) -> str:
    """Install the zip into Blender's user_default repository and enable it; return the module."""
    import addon_utils

    addon_utils.enable("cycles", default_set=True)
    result = bpy.ops.extensions.package_install_files(
        filepath=str(extension_zip), repo="user_default", enable_on_install=True, overwrite=True
    )
    assert result == {"FINISHED"}, result
    module = "bl_ext.user_default.ganfit"
    assert module in bpy.context.preferences.addons, sorted(bpy.context.preferences.addons.keys())
    return module


def empty_scene() -> None:
    """Start from an empty file (preferences and enabled add-ons stay)."""
    bpy.ops.wm.read_homefile(use_empty=True)
