"""Set up backend and engine detection, in real Blender with the installed extension.

What runs here, offline and fast: the operator against an unreachable package index (the
offline report, and no half-made environment left), the operator's full run with the engine
wheel the zip carries (installed with ``--no-index --no-deps``: downloading PyTorch is what
the set-up does for real and cannot be tested without the internet), and detection choosing
an interpreter that can import ganfit. pip never sees this machine's own pip configuration.
Failures name their cause, from real runs: a base Python without venv (Debian's message), a
package index whose certificate pip cannot verify (a self-signed local HTTPS server), a proxy
that refuses. The PyTorch build follows the NVIDIA GPU detection and its size is shown before
the click; long preference texts wrap; without numpy the add-on says what to install.
"""

from __future__ import annotations

import http.server
import importlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .conftest import BPY_MISSING, ROOT

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


def _run_set_up(prefs_module: ModuleType, monkeypatch: pytest.MonkeyPatch, **plan_changes: Any) -> str:
    """The operator's whole run with the plan changed; its one-line failure report."""
    real_plan = prefs_module.setup_plan
    monkeypatch.setattr(prefs_module, "setup_plan", lambda context: replace(real_plan(context), **plan_changes))
    with pytest.raises(RuntimeError) as raised:
        bpy.ops.ganfit.setup_backend()
    assert not prefs_module.venv_dir().exists(), "a half-made environment was left behind"
    return str(raised.value).strip().splitlines()[-1].removeprefix("Error: ")


def test_a_python_without_venv_is_named_and_leaves_no_environment(
    prefs_module: ModuleType, installed_addon: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian's Python without python3-venv: ``-m venv`` makes the folder and its interpreter,
    then fails at ensurepip with this message."""
    base = tmp_path / "python3.11"
    base.write_text(
        "#!/bin/sh\n"
        f'mkdir -p "$3/bin" && ln -s {sys.executable} "$3/bin/python3.11" && ln -s python3.11 "$3/bin/python"\n'
        "cat <<'END'\n"
        "The virtual environment was not created successfully because ensurepip is not\n"
        "available.  On Debian/Ubuntu systems, you need to install the python3-venv\n"
        "package using the following command.\n"
        "\n"
        "    apt install python3.11-venv\n"
        "\n"
        "You may need to use sudo with that command.  After installing the python3-venv\n"
        "package, recreate your virtual environment.\n"
        "\n"
        "Failing command: $3/bin/python3.11\n"
        "END\n"
        "exit 1\n"
    )
    base.chmod(0o755)
    bpy.context.preferences.addons[installed_addon].preferences.python_path = ""
    message = _run_set_up(prefs_module, monkeypatch, base_python=str(base))
    assert message == (
        f"Blender's Python ({base}) has no venv module: install python3.11-venv (Debian/Ubuntu: sudo apt "
        "install python3.11-venv) and click Set up backend again, or set Engine Python to an interpreter "
        "that has ganfit")


@pytest.fixture()
def self_signed_index(tmp_path: Path) -> Iterator[str]:
    """An HTTPS package index on localhost whose certificate no one vouches for, as a network
    whose proxy inspects HTTPS presents; its URL."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test's certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/simple"
    server.shutdown()
    server.server_close()


def test_an_unverifiable_certificate_is_named_not_offline(
    prefs_module: ModuleType, installed_addon: str, self_signed_index: str
) -> None:
    prefs = bpy.context.preferences.addons[installed_addon].preferences
    prefs.python_path, prefs.pip_index_url = "", self_signed_index
    with pytest.raises(RuntimeError) as raised:
        bpy.ops.ganfit.setup_backend()
    message = str(raised.value).strip().splitlines()[-1]
    assert "pip could not verify the certificate of 127.0.0.1 (certificate verify failed: self" in message
    assert "PIP_CERT or REQUESTS_CA_BUNDLE" in message and "Offline" not in message
    assert not prefs_module.venv_dir().exists(), "a half-made environment was left behind"


def test_a_refusing_proxy_is_named(
    prefs_module: ModuleType, installed_addon: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://me:secret@127.0.0.1:9")  # nothing listens there
    prefs = bpy.context.preferences.addons[installed_addon].preferences
    prefs.python_path, prefs.pip_index_url = "", "https://pypi.org/simple"
    with pytest.raises(RuntimeError) as raised:
        bpy.ops.ganfit.setup_backend()
    message = str(raised.value).strip().splitlines()[-1]
    assert "pip could not get through the proxy (" in message and "HTTPS_PROXY" in message
    assert "secret" not in message and "Offline" not in message
    assert not prefs_module.venv_dir().exists()


def test_the_pytorch_build_follows_the_gpu_and_its_size_shows_before_set_up(
    prefs_module: ModuleType, installed_addon: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = importlib.import_module(f"{installed_addon}.backend_setup")
    prefs = bpy.context.preferences.addons[installed_addon].preferences
    assert prefs.torch_build == "AUTO"  # the default
    prefs.pip_index_url = ""
    expected = {  # (option, GPU found) -> the build on this platform
        (option, gpu): setup.choose_torch(option, gpu)
        for option in ("AUTO", "CUDA", "CPU") for gpu in (None, "NVIDIA H200")
    }
    try:
        for (option, gpu), build in expected.items():
            monkeypatch.setattr(prefs_module, "nvidia_gpu", lambda refresh=False, gpu=gpu: gpu)
            prefs.torch_build = option
            plan = prefs_module.setup_plan(bpy.context)
            assert plan.extra_index_urls == build.extra_index_urls and plan.download_note == build.summary()
            labels = [text for kind, text in _draw_preferences(prefs_module, prefs) if kind == "label"]
            assert f"Installs {build.summary()}" in " ".join(labels)
            if sys.platform != "darwin":
                assert (f"NVIDIA GPU found: {gpu}" if gpu else "No NVIDIA GPU found") in labels
    finally:
        prefs.torch_build = "AUTO"
    if sys.platform.startswith("linux"):  # the issue: no GPU, Automatic -> the CPU-only build, not 3 GB of CUDA
        assert expected["AUTO", None].extra_index_urls == (setup.TORCH_CPU_INDEX,)
        assert expected["AUTO", None].summary() == "CPU-only PyTorch: about 350 MB to download, about 1 GB on disk"
        assert expected["AUTO", "NVIDIA H200"].summary().startswith("PyTorch with CUDA (NVIDIA GPU): about 3.1 GB")


class _Recording:
    """Stands in for Blender's UILayout (which only exists while a window draws)."""

    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.log = log

    def _child(self, **kw: Any) -> "_Recording":
        return _Recording(self.log)

    box = row = column = _child

    def prop(self, data: Any, name: str, **kw: Any) -> None:
        assert name in data.bl_rna.properties, name
        self.log.append(("prop", name))

    def operator(self, idname: str, **kw: Any) -> None:
        module, _, name = idname.partition(".")
        assert hasattr(getattr(bpy.ops, module), name), idname
        self.log.append(("operator", idname))

    def label(self, text: str = "", **kw: Any) -> None:
        self.log.append(("label", text))

    def progress(self, **kw: Any) -> None:
        self.log.append(("progress", kw.get("text", "")))


def _draw_preferences(prefs_module: ModuleType, prefs: Any) -> list[tuple[str, str]]:
    """What the preferences' draw puts on screen, in order."""
    log: list[tuple[str, str]] = []

    class Proxy:  # the real preferences drawing into a recording (theirs is read-only)
        layout = _Recording(log)

        def __getattr__(self, name: str) -> Any:
            return getattr(prefs, name)

    prefs_module.GANFIT_AP_preferences.draw(Proxy(), bpy.context)
    return log


def test_long_preference_texts_wrap_instead_of_being_cut(
    prefs_module: ModuleType, installed_addon: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup_module = importlib.import_module(f"{installed_addon}.backend_setup")
    prefs = bpy.context.preferences.addons[installed_addon].preferences
    prefs.python_path = ""
    monkeypatch.setattr(prefs_module, "detected_python", lambda refresh=False: None)
    failed = setup_module.BackendSetup(prefs_module.setup_plan(bpy.context))
    report = ("Blender's Python (/usr/bin/python3.11) has no venv module: install python3.11-venv (Debian/Ubuntu: "
              "sudo apt install python3.11-venv) and click Set up backend again, or set Engine Python to an "
              "interpreter that has ganfit")
    failed._set(finished=True, ok=False, message=report)
    monkeypatch.setattr(prefs_module, "_setup", failed)
    monkeypatch.setattr(prefs_module, "label_width", lambda context, margin_px=0: 40)  # a narrow window
    labels = [text for kind, text in _draw_preferences(prefs_module, prefs) if kind == "label"]
    assert all(len(text) <= 40 for text in labels), [t for t in labels if len(t) > 40]
    joined = " ".join(labels)
    assert "No engine found: click Set up backend" in joined  # one label before, cut off: "...Set up backe..."
    assert report in joined  # every word of the report, over several lines
    assert f"Full output: {failed.log_path}".replace(" ", "") in "".join(labels).replace(" ", "")  # long path: cut


def test_without_numpy_the_addon_says_what_to_install(tmp_path: Path) -> None:
    """Debian's Blender has no numpy: enabling the add-on fails with one line saying what to
    install (the line Blender shows), not with ``No module named 'numpy'`` from deep inside."""
    script = tmp_path / "enable_without_numpy.py"
    script.write_text(f"""
import json, sys

class NoNumpy:  # as if Blender's Python had no numpy
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" or name.startswith("numpy."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NoNumpy())
import bpy  # first: addon_utils is one of its modules
import addon_utils
sys.path.insert(0, {str(ROOT)!r})
errors = []
addon_utils.enable("ganfit_blender", handle_error=errors.append)
print(json.dumps({{"errors": [str(e) for e in errors], "types": [type(e).__name__ for e in errors],
                   "registered": hasattr(bpy.types, "GANFIT_AP_preferences")}}))
""")
    environ = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "user")}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=environ)
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert outcome == {
        "errors": [f"GANFit needs numpy in Blender's Python {version}, which this Blender build lacks: install your "
                   "distribution's numpy for it (Debian/Ubuntu: sudo apt install python3-numpy) or use Blender "
                   "from blender.org, which bundles numpy"],
        "types": ["ImportError"],
        "registered": False,
    }, done.stderr[-2000:]


def test_the_cpu_build_comes_from_its_own_index_or_not_at_all(
    prefs_module: ModuleType, installed_addon: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With PyPI beside PyTorch's CPU index, pip took PyPI's 3 GB CUDA build whenever the CPU
    index could not serve: now PyTorch is installed from that index alone first, and if it
    cannot be reached the report says so (and what to choose) instead of downloading CUDA."""
    setup = importlib.import_module(f"{installed_addon}.backend_setup")
    prefs = bpy.context.preferences.addons[installed_addon].preferences
    chosen_build = prefs.torch_build
    prefs.python_path, prefs.pip_index_url, prefs.torch_build = "", "", "CPU"
    try:
        plan = prefs_module.setup_plan(bpy.context)
        if sys.platform.startswith("linux"):
            assert plan.torch_index_url == setup.TORCH_CPU_INDEX  # PyPI's default Linux torch is CUDA's
        prefs.pip_index_url = "https://mirror.example/simple"
        assert prefs_module.setup_plan(bpy.context).torch_index_url == ""  # a mirror is the user's to manage
        prefs.pip_index_url = ""
        # The CPU index out of reach (nothing listens on the discard port), PyPI reachable:
        monkeypatch.setattr(prefs_module, "setup_plan",
                            lambda context: replace(plan, torch_index_url=UNREACHABLE_INDEX))
        with pytest.raises(RuntimeError) as raised:
            bpy.ops.ganfit.setup_backend()
    finally:
        prefs.torch_build = chosen_build
    message = str(raised.value).strip().splitlines()[-1]
    assert UNREACHABLE_INDEX in message and "choose PyTorch: CUDA" in message, message
    assert not prefs_module.venv_dir().exists()
    log = prefs_module.venv_dir().with_name(prefs_module.VENV_FOLDER + "-setup.log").read_text()
    assert f"--index-url {UNREACHABLE_INDEX} torch" in log
    assert plan.wheel.name not in log, "the engine (and PyPI's torch with it) was installed after all"
