"""Real sample photos that install with registry packages, for the demo, tests and benchmarks.

Nothing is downloaded: the photos come from the optional ``samples`` extra
(``pip install ganfit[samples]``: matplotlib and scikit-image).

- ``grace_hopper``: matplotlib's ``sample_data/grace_hopper.jpg``, 512x600, one frontal face
  (public domain, US Navy).
- ``astronaut``: ``skimage.data.astronaut()`` (Eileen Collins, NASA, public domain), 512x512,
  one face, written to a PNG in the cache.
- ``coffee``: ``skimage.data.coffee()``, a cup of coffee: no face (public domain, CC0).
- ``two_faces``: grace_hopper and astronaut side by side (1024x600): two faces of different
  sizes, for the choice of face.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ganfit.errors import GanfitError

__all__ = ["SAMPLE_PHOTOS", "sample_cache_dir", "sample_photo"]

log = logging.getLogger(__name__)

#: Names accepted by ``sample_photo``.
SAMPLE_PHOTOS: tuple[str, ...] = ("grace_hopper", "astronaut", "coffee", "two_faces")


def sample_cache_dir() -> Path:
    """Where generated sample files go: ``$GANFIT_CACHE_DIR/samples`` or the user cache folder."""
    root = os.environ.get("GANFIT_CACHE_DIR")
    if root:
        return Path(root) / "samples"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "ganfit" / "samples"


def sample_photo(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of a sample photo file, generating it into ``cache_dir`` first when it is not a file.

    Raises ``GanfitError`` naming the missing package when matplotlib or scikit-image is not
    installed, and for an unknown name.
    """
    if name not in SAMPLE_PHOTOS:
        raise GanfitError(f"unknown sample photo {name!r}; choose one of {', '.join(SAMPLE_PHOTOS)}")
    if name == "grace_hopper":
        return _grace_hopper_path()
    folder = Path(cache_dir) if cache_dir is not None else sample_cache_dir()
    target = folder / f"{name}.png"
    if not target.is_file():
        makers: dict[str, Callable[[], np.ndarray]] = {
            "astronaut": lambda: _skimage_image("astronaut"),
            "coffee": lambda: _skimage_image("coffee"),
            "two_faces": _two_faces,
        }
        _write_png_atomically(makers[name](), target)
    return target


def _grace_hopper_path() -> Path:
    try:
        from matplotlib import cbook
    except ImportError:
        raise GanfitError(
            "sample photo grace_hopper needs matplotlib; install it with "
            "`pip install matplotlib` (or the ganfit[samples] extra)"
        ) from None
    path = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    if not path.is_file():
        raise GanfitError(f"matplotlib's sample photo is missing at {path}; reinstall matplotlib")
    return path


def _skimage_image(name: str) -> np.ndarray:
    try:
        from skimage import data
    except ImportError:
        raise GanfitError(
            f"sample photo {name} needs scikit-image; install it with "
            "`pip install scikit-image` (or the ganfit[samples] extra)"
        ) from None
    return np.ascontiguousarray(getattr(data, name)()[..., :3], dtype=np.uint8)


def _two_faces() -> np.ndarray:
    """grace_hopper (left, larger face) beside astronaut (right), on a grey canvas."""
    from PIL import Image

    grace = np.asarray(Image.open(_grace_hopper_path()).convert("RGB"))
    astronaut = _skimage_image("astronaut")
    height = max(grace.shape[0], astronaut.shape[0])
    canvas = np.full((height, grace.shape[1] + astronaut.shape[1], 3), 128, dtype=np.uint8)
    canvas[: grace.shape[0], : grace.shape[1]] = grace
    canvas[: astronaut.shape[0], grace.shape[1]:] = astronaut
    return canvas


def _write_png_atomically(pixels: np.ndarray, target: Path) -> None:
    """Write through a temporary sibling so a concurrent reader never sees half a PNG."""
    from PIL import Image

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            Image.fromarray(pixels).save(temporary, format="PNG")
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as exc:
        raise GanfitError(
            f"{target}: cannot write the sample photo ({exc.strerror or exc}); "
            "set GANFIT_CACHE_DIR to a writable folder"
        ) from None
    log.info("wrote sample photo %s", target)
