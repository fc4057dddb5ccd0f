"""Shared pytest fixtures: real sample photos and one real dlib face detector per session.

The photos come from ``ganfit.io.samples`` (matplotlib's grace_hopper.jpg, scikit-image's
astronaut and coffee, and a two-face composite of the first two); generated ones are written
to a per-session temporary folder so tests never touch the user's cache.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

try:
    import ganfit  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

from ganfit.io.samples import sample_photo


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding the generated sample photos of this test session."""
    return tmp_path_factory.mktemp("samples")


@pytest.fixture(scope="session")
def grace_path() -> Path:
    """grace_hopper.jpg: 512x600 RGB JPEG, one frontal face."""
    return sample_photo("grace_hopper")


@pytest.fixture(scope="session")
def astronaut_path(sample_dir: Path) -> Path:
    """astronaut.png: 512x512 RGB PNG, one face."""
    return sample_photo("astronaut", cache_dir=sample_dir)


@pytest.fixture(scope="session")
def coffee_path(sample_dir: Path) -> Path:
    """coffee.png: 600x400 RGB PNG, a cup of coffee, no face."""
    return sample_photo("coffee", cache_dir=sample_dir)


@pytest.fixture(scope="session")
def two_faces_path(sample_dir: Path) -> Path:
    """two_faces.png: grace_hopper (left, larger face) beside astronaut (right), 1024x600."""
    return sample_photo("two_faces", cache_dir=sample_dir)


@pytest.fixture(scope="session")
def grace_pixels(grace_path: Path) -> np.ndarray:
    """grace_hopper as (600, 512, 3) uint8 RGB."""
    from PIL import Image

    with Image.open(grace_path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="session")
def face_detector():
    """One real dlib detector + 68-point predictor for the session (the model loads once)."""
    from ganfit.face.detection import FaceDetector

    return FaceDetector()
