"""Build the GANFit Blender extension zip.

    python build.py [--output-dir dist] [--skip-wheel] [--no-validate]

1. builds the engine's wheel (``pip wheel --no-deps``) into ``wheels/``;
2. assembles ``dist/ganfit-<version>.zip``: the manifest and ``ganfit_blender/``'s files at the
   archive's root (the extension's package), plus ``wheels/``, the payload the backend set-up
   installs into its own Python environment;
3. validates the zip with Blender's own validator (``bl_pkg/cli/blender_ext.py validate``,
   found inside the ``bpy`` module) when ``bpy`` is installed;
4. prints the zip's path (the only line on stdout).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

log = logging.getLogger("build")

ROOT = Path(__file__).resolve().parent
MANIFEST = ROOT / "blender_manifest.toml"
ADDON_DIR = ROOT / "ganfit_blender"
WHEELS_DIR = ROOT / "wheels"
_SKIP_PARTS = {"__pycache__", ".mypy_cache", ".pytest_cache"}
#: The seam's definitions, written once in the engine and vendored into the add-on as
#: ``_seam/`` (ganfit_blender/seam.py reads them), so the two sides cannot drift (issue 18).
SEAM_FILES = {
    "protocol.py": ROOT / "backend" / "ganfit" / "protocol.py",
    "result_schema.py": ROOT / "backend" / "ganfit" / "io" / "result_schema.py",
}
_SKIP_SUFFIXES = {".pyc", ".pyo", ".blend1"}


class BuildError(RuntimeError):
    """The build cannot go on; the message says why and what to do."""


def build_wheel(wheels_dir: Path = WHEELS_DIR) -> Path:
    """Build the ganfit engine wheel (no dependencies) into ``wheels_dir``; return its path."""
    wheels_dir.mkdir(parents=True, exist_ok=True)
    for old in wheels_dir.glob("ganfit-*.whl"):
        old.unlink()
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
               "--quiet", "--wheel-dir", str(wheels_dir), str(ROOT)]
    log.info("building the engine wheel: %s", " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"pip wheel failed (exit {done.returncode}):\n{done.stderr.strip()}")
    wheels = sorted(wheels_dir.glob("ganfit-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one ganfit wheel in {wheels_dir}, found {len(wheels)}")
    return wheels[0]


def _addon_files() -> list[Path]:
    files = []
    for path in sorted(ADDON_DIR.rglob("*")):
        if path.is_file() and not (set(path.relative_to(ADDON_DIR).parts) & _SKIP_PARTS) \
                and path.suffix not in _SKIP_SUFFIXES:
            files.append(path)
    if not (ADDON_DIR / "__init__.py").is_file():
        raise BuildError(f"{ADDON_DIR / '__init__.py'} is missing")
    return files


def assemble_zip(output_dir: Path) -> Path:
    """Write the extension zip into ``output_dir`` and return its path."""
    manifest = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))
    zip_path = output_dir / f"{manifest['id']}-{manifest['version']}.zip"
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_suffix(".zip.partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(MANIFEST, MANIFEST.name)
        for path in _addon_files():
            archive.write(path, path.relative_to(ADDON_DIR).as_posix())
        archive.writestr("_seam/__init__.py", '"""Copied from backend/ganfit by build.py: edit those files, not these."""\n')
        for name, source in SEAM_FILES.items():
            archive.write(source, f"_seam/{name}")
        for wheel in sorted(WHEELS_DIR.glob("*.whl")):
            archive.write(wheel, f"wheels/{wheel.name}")
    tmp.replace(zip_path)
    log.info("assembled %s (%d bytes)", zip_path, zip_path.stat().st_size)
    return zip_path


def blender_validator() -> tuple[Path, Path | None] | None:
    """Paths of Blender's blender_ext.py and its tags list inside the bpy module, if installed."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        return None
    bpy_dir = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(bpy_dir.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        return None
    tags = found[-1].parents[3] / "modules" / "_bpy_internal" / "extensions" / "tags.py"
    return found[-1], tags if tags.is_file() else None


def validate_zip(zip_path: Path) -> bool:
    """Run Blender's validator on the zip; False if bpy is not installed, raise if it fails."""
    found = blender_validator()
    if found is None:
        log.warning("bpy is not installed: skipped Blender's validator (pip install bpy==5.0.1)")
        return False
    script, tags = found
    command = [sys.executable, str(script), "validate", str(zip_path)]
    if tags is not None:
        command.append(f"--valid-tags={tags}")
    done = subprocess.run(command, capture_output=True, text=True)
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0 or "error" in output.lower():
        raise BuildError(f"Blender's validator rejected {zip_path}:\n{output}")
    log.info("Blender's validator: %s", output)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", type=Path, default=ROOT / "dist", help="where the zip goes (default: dist/)")
    parser.add_argument("--skip-wheel", action="store_true", help="reuse the wheel already in wheels/")
    parser.add_argument("--no-validate", action="store_true", help="skip Blender's validator")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    try:
        if not args.skip_wheel:
            build_wheel()
        elif not any(WHEELS_DIR.glob("ganfit-*.whl")):
            raise BuildError(f"--skip-wheel: no ganfit wheel in {WHEELS_DIR}; build without it")
        zip_path = assemble_zip(args.output_dir.resolve())
        if not args.no_validate:
            validate_zip(zip_path)
    except BuildError as exc:
        log.error("%s", exc)
        return 1
    print(zip_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
