"""Set up backend's decisions that need no Blender: which PyTorch build (and its size), whether
this machine has an NVIDIA GPU, and the one-line cause of a failed step.

``ganfit_blender/backend_setup.py`` is standard library only, but its package imports bpy, so
the module is loaded from its file. The pip and venv lines below are real output: pip 26.3 run
against a refusing proxy, an unresolvable proxy and a self-signed HTTPS index, the wording of
older pips (urllib3 1.x), and Debian's venv without python3-venv.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ganfit_backend_setup", ROOT / "ganfit_blender" / "backend_setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


setup = _load()

DEBIAN_NO_VENV = """\
The virtual environment was not created successfully because ensurepip is not
available.  On Debian/Ubuntu systems, you need to install the python3-venv
package using the following command.

    apt install python3.11-venv

You may need to use sudo with that command.  After installing the python3-venv
package, recreate your virtual environment.

Failing command: /home/me/.config/blender/5.0/extensions/.user/user_default/ganfit/backend-venv/bin/python3.11
""".splitlines()

SELF_SIGNED = [
    "Looking in indexes: https://127.0.0.1:35259/simple",
    "WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection "
    "broken by 'SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
    "self-signed certificate (_ssl.c:1006)'))': /simple/six/",
    "Could not fetch URL https://127.0.0.1:35259/simple/six/: There was a problem confirming the ssl certificate: "
    "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1006) - skipping",
    "ERROR: Could not find a version that satisfies the requirement six (from versions: none)",
    "ERROR: No matching distribution found for six",
]

CORPORATE_CA = [  # older pip, HTTPS inspected by a corporate proxy whose CA is not in the bundle
    "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection "
    "broken by 'SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
    "unable to get local issuer certificate (_ssl.c:1006)'))': /simple/torch/",
    "Could not fetch URL https://pypi.org/simple/torch/: There was a problem confirming the ssl certificate: "
    "HTTPSConnectionPool(host='pypi.org', port=443): Max retries exceeded with url: /simple/torch/ (Caused by "
    "SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to "
    "get local issuer certificate (_ssl.c:1006)'))) - skipping",
    "ERROR: Could not find a version that satisfies the requirement torch>=2.2 (from ganfit) (from versions: none)",
]

PROXY_UNRESOLVED = [  # pip 26.3: the proxy is only named by its host
    "WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection "
    "broken by 'NameResolutionError(\"HTTPSConnection(host='proxy.invalid', port=3128): Failed to resolve "
    "'proxy.invalid' ([Errno -2] Name or service not known)\")': /simple/six/",
    "ERROR: Could not find a version that satisfies the requirement six (from versions: none)",
    "ERROR: No matching distribution found for six",
]

PROXY_REFUSED_OLD_PIP = [
    "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection "
    "broken by 'ProxyError('Cannot connect to proxy.', NewConnectionError('<pip._vendor.urllib3.connection."
    "HTTPSConnection object at 0x7f0c2d1e8d90>: Failed to establish a new connection: [Errno 111] Connection "
    "refused'))': /simple/pip/",
    "ERROR: No matching distribution found for torch>=2.2",
]

PROXY_407 = [
    "WARNING: Retrying (Retry(total=1, connect=None, read=None, redirect=None, status=None)) after connection "
    "broken by 'ProxyError('Unable to connect to proxy', OSError('Tunnel connection failed: 407 Proxy "
    "Authentication Required'))': /simple/torch/",
]

NO_NETWORK = [
    "WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection "
    "broken by 'NewConnectionError(\"HTTPSConnection(host='pypi.org', port=443): Failed to establish a new "
    "connection: [Errno -3] Temporary failure in name resolution\")': /simple/torch/",
    "ERROR: No matching distribution found for torch>=2.2",
]


def test_no_venv_module_names_the_package_to_install() -> None:
    message = setup.failure_cause(DEBIAN_NO_VENV, base_python="/usr/bin/python3.11")
    assert message == (
        "Blender's Python (/usr/bin/python3.11) has no venv module: install python3.11-venv "
        "(Debian/Ubuntu: sudo apt install python3.11-venv) and click Set up backend again, "
        "or set Engine Python to an interpreter that has ganfit")
    plain = setup.failure_cause(["/usr/bin/python3: No module named venv"], base_python="/usr/bin/python3")
    assert plain is not None and "has no venv module: install python3-venv" in plain
    assert "has no venv module" in setup.failure_cause(["/usr/bin/python3.12: No module named ensurepip"])


@pytest.mark.parametrize(("lines", "host", "reason"), [
    (SELF_SIGNED, "127.0.0.1", "self-signed certificate"),
    (CORPORATE_CA, "pypi.org", "unable to get local issuer certificate"),
])
def test_certificate_errors_are_not_called_offline(lines: list[str], host: str, reason: str) -> None:
    assert setup.is_offline("\n".join(lines)) or lines is SELF_SIGNED  # what made them "Offline" before
    message = setup.failure_cause(lines, environ={})
    assert message == (
        f"pip could not verify the certificate of {host} (certificate verify failed: {reason}): on a network "
        "whose proxy or firewall inspects HTTPS, give pip its CA bundle (set PIP_CERT or REQUESTS_CA_BUNDLE to "
        "the .pem file) and click Set up backend again")


def test_proxy_errors_name_the_proxy_without_its_password() -> None:
    environ = {"HTTPS_PROXY": "http://me:secret@proxy.invalid:3128"}
    message = setup.failure_cause(PROXY_UNRESOLVED, environ=environ)
    assert message is not None and message.startswith(
        "pip could not get through the proxy (http://proxy.invalid:3128; Failed to resolve 'proxy.invalid'): "
        "check its address and password (HTTPS_PROXY, HTTP_PROXY or pip's proxy setting)")
    assert "secret" not in message and message.endswith("click Set up backend again")
    # the same lines with no proxy configured: the index's own host cannot be resolved
    assert setup.failure_cause(PROXY_UNRESOLVED, environ={}).startswith("Offline: pip could not reach")

    refused = setup.failure_cause(PROXY_REFUSED_OLD_PIP, environ={})
    assert refused is not None and refused.startswith("pip could not get through the proxy (Connection refused)")
    auth = setup.failure_cause(PROXY_407, environ={"https_proxy": "proxy.corp:8080"})
    assert auth is not None and auth.startswith(
        "pip could not get through the proxy (http://proxy.corp:8080; Tunnel connection failed: 407 Proxy "
        "Authentication Required)")


OLD_PIP_TWO_INDEXES = [  # pip 23.2, the index refusing and PyTorch's CPU index unresolvable
    "Looking in indexes: http://127.0.0.1:9/simple, https://download.pytorch.org/whl/cpu",
    "WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection "
    "broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPConnection object at 0x7fea7b438250>: "
    "Failed to establish a new connection: [Errno 111] Connection refused')': /simple/six/",
    "WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection "
    "broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at 0x7fea7b43ab50>: "
    "Failed to establish a new connection: [Errno -2] Name or service not known')': /whl/cpu/six/",
    "ERROR: Could not find a version that satisfies the requirement six (from versions: none)",
    "ERROR: No matching distribution found for six",
]


def test_offline_names_the_error_of_the_index_it_names() -> None:
    message = setup.failure_cause(OLD_PIP_TWO_INDEXES, index="http://127.0.0.1:9/simple", environ={})
    assert message == ("Offline: pip could not reach http://127.0.0.1:9/simple (Failed to establish a new "
                       "connection: [Errno 111] Connection refused); connect to the internet and click Set up "
                       "backend again")


def test_offline_and_unknown_failures() -> None:
    message = setup.failure_cause(NO_NETWORK, index="", environ={})
    assert message == ("Offline: pip could not reach https://pypi.org/simple (Failed to establish a new connection: "
                       "[Errno -3] Temporary failure in name resolution); connect to the internet and click Set up "
                       "backend again")
    resolver = ["ERROR: Could not find a version that satisfies the requirement dlib-bin (from versions: 19.24.2)",
                "ERROR: No matching distribution found for dlib-bin"]
    assert setup.failure_cause(resolver, environ={}) is None  # then pip's last error line is reported
    assert setup.pip_error_line(resolver) == "ERROR: No matching distribution found for dlib-bin"


@pytest.mark.parametrize(("option", "gpu", "platform", "name", "index", "summary"), [
    ("AUTO", None, "linux", "CPU-only PyTorch", setup.TORCH_CPU_INDEX, "about 350 MB to download, about 1 GB on disk"),
    ("AUTO", "NVIDIA GeForce RTX 3080", "linux", "PyTorch with CUDA (NVIDIA GPU)", None,
     "about 3.1 GB to download, about 5.6 GB on disk"),
    ("CUDA", None, "linux", "PyTorch with CUDA (NVIDIA GPU)", None, "about 3.1 GB to download"),
    ("CPU", "NVIDIA H200", "linux", "CPU-only PyTorch", setup.TORCH_CPU_INDEX, "about 350 MB to download"),
    ("AUTO", None, "win32", "CPU-only PyTorch", None, "about 400 MB to download"),
    ("AUTO", "NVIDIA GeForce RTX 4070", "win32", "PyTorch with CUDA (NVIDIA GPU)", setup.TORCH_CUDA_INDEX,
     "about 3.1 GB to download, about 6 GB on disk"),
    ("CUDA", None, "darwin", "PyTorch for CPU and the Apple GPU", None, "about 230 MB to download"),
])
def test_torch_build_and_its_size(option: str, gpu: str | None, platform: str, name: str, index: str | None,
                                  summary: str) -> None:
    build = setup.choose_torch(option, gpu, platform)
    assert build.name == name
    assert build.extra_index_urls == ((index,) if index else ())
    assert build.summary().startswith(f"{name}: {summary}")


def _fake_smi(folder: Path, output: str, status: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho '{output}'\nexit {status}\n")  # echo: a builtin, PATH is bare
    smi.chmod(0o755)


@pytest.mark.skipif(sys.platform == "win32", reason="fake nvidia-smi is a shell script")
def test_nvidia_gpu_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_proc = tmp_path / "no-proc"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert setup.detect_nvidia_gpu("linux", no_proc) is None

    proc = tmp_path / "proc" / "0000:01:00.0"  # the NVIDIA driver's /proc/driver/nvidia/gpus/<bus id>
    proc.mkdir(parents=True)
    (proc / "information").write_text("Model: \t\t NVIDIA GeForce RTX 3080\nIRQ:   \t\t 155\nBus Type: \t PCIe\n")
    assert setup.detect_nvidia_gpu("linux", proc.parent) == "NVIDIA GeForce RTX 3080"
    assert setup.detect_nvidia_gpu("darwin", proc.parent) is None  # no CUDA on macOS

    bin_dir = tmp_path / "bin"
    _fake_smi(bin_dir, "GPU 0: NVIDIA H200 (UUID: GPU-6b5a1c3e-0f4a-2b7d-9e8c-1a2b3c4d5e6f)")
    monkeypatch.setenv("PATH", str(bin_dir))
    assert setup.detect_nvidia_gpu("linux", no_proc) == "NVIDIA H200"
    _fake_smi(bin_dir, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", status=9)
    assert setup.detect_nvidia_gpu("linux", no_proc) is None
