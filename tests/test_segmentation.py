"""Photo segmentation (ganfit.texture.segmentation) on real photos with real dlib landmarks."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from ganfit.errors import GanfitError, InputImageError
from ganfit.face.detection import find_face
from ganfit.io.images import load_photo
from ganfit.texture.segmentation import HAIR, HEADWEAR_OR_GLASSES, OTHER, SKIN, Segmentation, segment_photo

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "segmentation_iou.py"
#: Skin IoU against the committed polygons as measured when the test was written (grace_hopper
#: 0.705, astronaut 0.712), less a margin for other OpenCV builds.
MIN_SKIN_IOU = {"grace_hopper": 0.65, "astronaut": 0.66}


def _benchmark():
    spec = importlib.util.spec_from_file_location("segmentation_iou", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    import sys

    sys.path.insert(0, str(BENCHMARK.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARK.parent))
    return module


@pytest.fixture(scope="module")
def grace(grace_path, face_detector):
    photo = load_photo(grace_path)
    face = find_face(photo, detector=face_detector)
    return photo.pixels, face.landmarks, segment_photo(photo.pixels, face.landmarks)


@pytest.fixture(scope="module")
def astronaut(astronaut_path, face_detector):
    photo = load_photo(astronaut_path)
    face = find_face(photo, detector=face_detector)
    return photo.pixels, face.landmarks, segment_photo(photo.pixels, face.landmarks)


def test_grace_hopper_regions(grace) -> None:
    pixels, points, seg = grace
    assert isinstance(seg, Segmentation)
    assert seg.labels.shape == pixels.shape[:2] and seg.labels.dtype == np.uint8
    assert set(np.unique(seg.labels)) <= {OTHER, SKIN, HAIR, HEADWEAR_OR_GLASSES}
    # Cheeks (between the jaw and the nose, below the eyes) are skin.
    for jaw, nose in ((3, 31), (13, 35)):
        x, y = np.round(0.5 * (points[jaw] + points[nose])).astype(int)
        assert seg.skin[y - 3:y + 4, x - 3:x + 4].mean() > 0.9
    # The cap, well above the brows, is not skin.
    brow = points[17:27].mean(0)
    height = points[8, 1] - brow[1]
    x, y = int(brow[0]), int(brow[1] - 0.6 * height)
    assert not seg.skin[y - 5:y + 6, x - 20:x + 21].any()
    assert (seg.labels[y - 5:y + 6, x - 20:x + 21] != OTHER).mean() > 0.9
    # The blue sky at the top right and the uniform below the chin are other.
    assert seg.other[:80, -80:].all()
    assert seg.other[int(points[8, 1]) + 60:, :].mean() > 0.99
    # Nothing below the jaw is skin (the neck counts as other).
    assert not seg.skin[int(points[8, 1]) + 15:, :].any()


@pytest.mark.parametrize("name", ["grace_hopper", "astronaut"])
def test_agreement_with_labelled_polygons(name, grace, astronaut) -> None:
    bench = _benchmark()
    labels = json.loads(bench.LABELS.read_text())["samples"][name]
    pixels, _, seg = grace if name == "grace_hopper" else astronaut
    truth, _ = bench.label_map(labels, pixels.shape[:2])
    assert bench.iou(seg.skin, truth == SKIN) > MIN_SKIN_IOU[name]
    assert bench.iou(~seg.skin, truth != SKIN) > 0.9


def test_masks_and_fractions(astronaut) -> None:
    _, _, seg = astronaut
    fractions = seg.fractions()
    assert abs(sum(fractions.values()) - 1) < 1e-9
    assert 0.03 < fractions["skin"] < 0.15  # the face is a small part of the astronaut photo
    assert (seg.mask(SKIN) == seg.skin).all() and (seg.mask(HAIR) == seg.hair).all()
    with pytest.raises(ValueError):
        seg.mask(7)


def test_bad_inputs(grace) -> None:
    pixels, points, _ = grace
    cases = [
        (pixels[..., 0], points),  # grey
        (pixels.astype(np.float32), points),  # not uint8
        (pixels, points[:5]),  # not 68 points
        (pixels, np.full((68, 2), np.nan)),
        (pixels, points + [2000, 0]),  # landmarks of another photo
        (pixels[:8, :8], points),
    ]
    for image, landmarks in cases:
        with pytest.raises(InputImageError) as info:
            segment_photo(image, landmarks)
        assert isinstance(info.value, GanfitError)
        assert "\n" not in str(info.value)


def test_face_at_the_edge_is_accepted(grace) -> None:
    """A crop that cuts off the chin (as UTKFace's do) keeps landmarks a little outside it."""
    pixels, points, _ = grace
    bottom = int(points[8, 1]) - 5
    seg = segment_photo(np.ascontiguousarray(pixels[:bottom]), points)
    assert seg.labels.shape == (bottom, pixels.shape[1]) and seg.skin.any()
