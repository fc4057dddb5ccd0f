"""Set up backend and engine detection, in real Blender with the installed extension.

What runs here, offline and fast: the operator against an unreachable package index (the
offline report, and no half-made environment left), the operator's full run with the engine
wheel the zip carries (installed with ``--no-index --no-deps``: downloading PyTorch is what
the set-up does for real and cannot be tested without the internet), and detection choosing
an interpreter that can import ganfit. pip never sees this machine's own pip configuration.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

from .conftest import BPY_MISSING

bpy = pytest.importorskip("bpy", reason=BPY_MISSING)

#: Nothing listens on the discard port: connections are refused at once.
UNREACHABLE_INDEX = "http://127.0.0.1:9/simple"


@pytest.fixture()
def prefs_module(installed_addon: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The installed add-on's preferences module, with online access allowed, pip isolated from
    this machine's configuration (its local wheel folder holds torch), and preferences restored."""
    module = importlib.import_module(f"{installed_addon}.preferences")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for name in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "GANFIT_PYTHON"):
        monkeypatch.delenv(name, raising=False)
    system = bpy.context.preferences.system
    prefs = bpy.context.preferences.addons[installed_addon].preferences
    saved = (system.use_online_access, prefs.python_path, prefs.pip_index_url)
    system.use_online_access = True
    yield module
    system.use_online_access, prefs.python_path, prefs.pip_index_url = saved
    shutil.rmtree(module.venv_dir(), ignore_errors=True)
    module.detected_python(refresh=True)


def test_the_zip_carries_the_engine_wheel(prefs_module: ModuleType) -> None:
    folder = prefs_module.bundled_wheels()
    assert folder.parent == Path(prefs_module.__file__).parent  # inside the installed extension
    assert len(list(folder.glob("ganfit-*.whl"))) == 1


def test_online_access_off_is_reported(prefs_module: ModuleType) -> None:
    bpy.context.preferences.system.use_online_access = False
    with pytest.raises(RuntimeError, match="online access is off"):
        bpy.ops.ganfit.setup_backend()
    assert not prefs_module.venv_dir().exists()


def test_offline_set_up_is_reported_and_leaves_no_environment(prefs_module: ModuleType, installed_addon: str) -> None:
    prefs = bpy.context.preferences.addons[installed_addon].preferences
    prefs.python_path, prefs.pip_index_url = "", UNREACHABLE_INDEX
    with pytest.raises(RuntimeError) as raised:
        bpy.ops.ganfit.setup_backend()
    message = str(raised.value).strip().splitlines()[-1]
    assert f"Offline: pip could not reach {UNREACHABLE_INDEX} (" in message
    assert "Connection refused" in message and "Set up backend again" in message
    assert not prefs_module.venv_dir().exists(), "a half-made environment was left behind"
    assert prefs.python_path == ""
    log = prefs_module.venv_dir().with_name(prefs_module.VENV_FOLDER + "-setup.log")
    assert "pip install" in log.read_text()  # pip's full output is kept for the curious


def test_set_up_installs_the_bundled_wheel_and_sets_the_interpreter(
    prefs_module: ModuleType, installed_addon: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's whole run with the bundled wheel alone (no dependencies: PyTorch would
    come from the internet), checking only that the new interpreter imports ganfit."""
    prefs = bpy.context.preferences.addons[installed_addon].preferences
    prefs.python_path, prefs.pip_index_url = "", UNREACHABLE_INDEX  # pip's self-update: best effort
    real_plan = prefs_module.setup_plan
    monkeypatch.setattr(prefs_module, "setup_plan", lambda context: replace(
        real_plan(context), extra_pip_args=("--no-index", "--no-deps"), check_imports=("ganfit",)))
    assert bpy.ops.ganfit.setup_backend() == {"FINISHED"}
    setup = importlib.import_module(f"{installed_addon}.backend_setup")
    python = setup.complete_venv_python(prefs_module.venv_dir())
    assert python is not None and prefs.python_path == str(python)
    engine_client = importlib.import_module(f"{installed_addon}.engine_client")
    engine_client.check_python(str(python))  # it imports ganfit
    # with no interpreter set, detection finds the environment the set-up made
    prefs.python_path = ""
    monkeypatch.setenv("PATH", "")
    found = prefs_module.detected_python(refresh=True)
    assert found is not None and (found.python, found.source) == (str(python), "backend set-up")
    assert prefs_module.engine_python(bpy.context) == str(python)


def test_detection_order(installed_addon: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$GANFIT_PYTHON first; then the set-up's environment, the Python of ``ganfit`` on PATH,
    python3 on PATH, each only if it can import ganfit."""
    engine_client = importlib.import_module(f"{installed_addon}.engine_client")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "ganfit"  # a console script as pip writes it, for this test's interpreter
    script.write_text(f"#!{sys.executable}\nfrom ganfit.cli import main\nmain()\n")
    script.chmod(0o755)
    no_ganfit = tmp_path / "venv" / "bin" / "python"  # an interpreter that cannot import ganfit
    no_ganfit.parent.mkdir(parents=True)
    no_ganfit.write_text("#!/bin/sh\nexit 1\n")
    no_ganfit.chmod(0o755)
    monkeypatch.delenv("GANFIT_PYTHON", raising=False)
    monkeypatch.setenv("PATH", str(bin_dir))

    found = engine_client.detect_python(no_ganfit)
    assert found is not None and (found.python, found.source) == (sys.executable, "ganfit on PATH")
    assert [c.source for c in engine_client.python_candidates(no_ganfit)] == ["backend set-up", "ganfit on PATH"]

    monkeypatch.setenv("GANFIT_PYTHON", "/somewhere/python")
    assert engine_client.detect_python(no_ganfit).python == "/somewhere/python"

    monkeypatch.delenv("GANFIT_PYTHON")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert engine_client.detect_python(no_ganfit) is None
