"""Face detection and 68 landmarks with the real dlib models on real photos."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganfit.errors import InputImageError, ModelDataError, NoFaceError
from ganfit.face.detection import (
    MIN_FACE_BOX_PX,
    DetectedFace,
    FaceBox,
    FaceDetector,
    find_face,
    interocular_distance,
)
from ganfit.io.images import load_photo, photo_from_array


def assert_plausible_face(face: DetectedFace) -> None:
    """68 float32 points inside the (slightly grown) box, eyes above nose above mouth, left/right."""
    points, box = face.landmarks, face.box
    assert points.shape == (68, 2) and points.dtype == np.float32
    margin = 0.15 * box.width  # dlib's jaw line and brows may leave its box a little
    assert (points[:, 0] > box.left - margin).all() and (points[:, 0] < box.right + margin).all()
    assert (points[:, 1] > box.top - margin).all() and (points[:, 1] < box.bottom + margin).all()
    eyes_y, nose_tip_y, mouth_y = points[36:48, 1].mean(), points[33, 1], points[48:68, 1].mean()
    assert eyes_y < nose_tip_y < mouth_y
    assert points[36:42, 0].mean() < points[42:48, 0].mean()  # image-left eye is 36-41
    assert points[8, 1] > mouth_y  # chin below the mouth


def test_grace_hopper(grace_path: Path, face_detector: FaceDetector) -> None:
    photo = load_photo(grace_path)
    face = find_face(photo, detector=face_detector)
    assert face.num_faces == 1 and face.index == 0
    assert_plausible_face(face)
    # The face is in the upper middle of the 512x600 portrait, ~216 px wide at dlib's scale.
    assert 150 < face.box.width < 260 and 220 < face.box.center[0] < 300
    assert 90 < face.interocular < 130
    assert face.box.score > 0.5


def test_astronaut(astronaut_path: Path, face_detector: FaceDetector) -> None:
    face = find_face(load_photo(astronaut_path), detector=face_detector)
    assert face.num_faces == 1 and face.index == 0
    assert_plausible_face(face)
    assert 170 < face.box.center[0] < 270 and 80 < face.box.center[1] < 180
    assert 40 < face.interocular < 80


def test_two_faces_largest_first_and_index_selects(
    two_faces_path: Path, face_detector: FaceDetector, caplog: pytest.LogCaptureFixture
) -> None:
    photo = load_photo(two_faces_path)
    with caplog.at_level(logging.WARNING, logger="ganfit.face.detection"):
        largest = find_face(photo, detector=face_detector)
    assert largest.num_faces == 2 and largest.index == 0
    assert largest.box.center[0] < 512  # grace, on the left, has the larger face
    assert_plausible_face(largest)
    warning = " ".join(record.getMessage() for record in caplog.records)
    assert "2 faces" in warning and "--face" in warning and str(two_faces_path) in warning

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ganfit.face.detection"):
        other = find_face(photo, face_index=1, detector=face_detector)
    assert not caplog.records  # an explicit choice needs no warning
    assert other.num_faces == 2 and other.index == 1
    assert other.box.center[0] > 512 and other.box.area < largest.box.area
    assert_plausible_face(other)

    assert find_face(photo, face_index=0, detector=face_detector).box == largest.box


def test_weak_false_positive_rejected_by_cnn(astronaut_path: Path, face_detector: FaceDetector) -> None:
    # Tilted 15 degrees, the astronaut's glove and flag score 0.32 with HOG, a box as big as her face.
    with Image.open(astronaut_path) as image:
        tilted = np.asarray(image.convert("RGB").rotate(-15, Image.Resampling.BILINEAR, fillcolor=(128, 128, 128)))
    unverified = FaceDetector(verify_below=None)
    unverified._predictor = face_detector.predictor  # share the loaded model
    assert len(unverified.detect(tilted)) == 2
    boxes = face_detector.detect(tilted)
    assert len(boxes) == 1 and boxes[0].center[1] < 200  # the face, not the glove at y ~350


def test_weak_real_face_kept(astronaut_path: Path, face_detector: FaceDetector) -> None:
    # Blurred, the astronaut's face scores below verify_below; the CNN confirms it.
    from PIL import ImageFilter

    with Image.open(astronaut_path) as image:
        blurred = np.asarray(image.convert("RGB").filter(ImageFilter.GaussianBlur(3)))
    boxes = face_detector.detect(blurred)
    assert len(boxes) == 1 and boxes[0].score < face_detector.verify_below


@pytest.mark.parametrize("index", [2, -1])
def test_face_index_out_of_range(two_faces_path: Path, face_detector: FaceDetector, index: int) -> None:
    with pytest.raises(InputImageError) as error:
        find_face(load_photo(two_faces_path), face_index=index, detector=face_detector)
    assert not isinstance(error.value, NoFaceError)
    message = str(error.value)
    assert str(two_faces_path) in message and "--face 0 to 1" in message and "\n" not in message


def test_no_face(coffee_path: Path, face_detector: FaceDetector) -> None:
    with pytest.raises(NoFaceError) as error:
        find_face(load_photo(coffee_path), detector=face_detector)
    assert str(error.value) == (
        f"{coffee_path}: no face found; use a photo with a clearly visible face, front or three-quarter view"
    )


def test_tiny_face_is_too_small(grace_pixels: np.ndarray, face_detector: FaceDetector) -> None:
    # Grace shrunk so her face is ~25 px: the upsampled second pass finds it, find_face refuses it.
    small = Image.fromarray(grace_pixels).resize((50, 59), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (300, 300), (128, 128, 128))
    canvas.paste(small, (120, 100))
    photo = photo_from_array(np.asarray(canvas), "tiny.png")
    boxes = face_detector.detect(photo.pixels)
    assert len(boxes) == 1 and boxes[0].width < MIN_FACE_BOX_PX
    with pytest.raises(InputImageError) as error:
        find_face(photo, detector=face_detector)
    assert not isinstance(error.value, NoFaceError)
    message = str(error.value)
    assert message.startswith("tiny.png: the face is too small") and "larger photo" in message


def test_small_but_usable_face_found_by_upsampling(grace_pixels: np.ndarray, face_detector: FaceDetector) -> None:
    # ~55 px face: below the HOG window (80 px), so only the upsampled pass finds it.
    small = Image.fromarray(grace_pixels).resize((130, 152), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (400, 400), (128, 128, 128))
    canvas.paste(small, (200, 150))
    face = find_face(photo_from_array(np.asarray(canvas), "small.png"), detector=face_detector)
    assert face.num_faces == 1
    assert MIN_FACE_BOX_PX <= face.box.width < 80
    assert_plausible_face(face)


def test_large_image_detects_on_downscaled_copy(grace_pixels: np.ndarray, face_detector: FaceDetector) -> None:
    # 3072x3600 (11 MP): the first pass runs at ~0.3x; boxes come back in full-size pixels.
    big = np.asarray(Image.fromarray(grace_pixels).resize((3072, 3600), Image.Resampling.BILINEAR))
    reference = face_detector.detect(grace_pixels)[0]
    boxes = face_detector.detect(big)
    assert len(boxes) == 1
    box = boxes[0]
    for ours, expected in zip(
        (box.left, box.top, box.right, box.bottom),
        (reference.left * 6, reference.top * 6, reference.right * 6, reference.bottom * 6),
    ):
        assert abs(ours - expected) < 0.12 * box.width
    # dlib's landmarks depend a little on the box (HOG boxes snap to pyramid levels): a few % of
    # the inter-ocular distance, as between any two detection scales.
    points = face_detector.landmarks(big, box) / 6
    reference_points = face_detector.landmarks(grace_pixels, reference)
    error = np.linalg.norm(points - reference_points, axis=1).mean()
    assert error < 0.08 * interocular_distance(reference_points)


def test_landmarks_are_dlib_plus_half_pixel(grace_pixels: np.ndarray, face_detector: FaceDetector) -> None:
    import dlib

    box = face_detector.detect(grace_pixels)[0]
    ours = face_detector.landmarks(grace_pixels, box)
    shape = face_detector.predictor(grace_pixels, box.to_dlib())
    raw = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
    np.testing.assert_array_equal(ours, raw + 0.5)
    # FaceBox <-> dlib.rectangle round trip (dlib's right/bottom are inclusive).
    rect = dlib.rectangle(10, 20, 109, 119)
    assert FaceBox.from_dlib(rect).width == 100
    assert FaceBox.from_dlib(rect).to_dlib() == rect


def test_greyscale_pixels(grace_pixels: np.ndarray, face_detector: FaceDetector) -> None:
    grey = np.asarray(Image.fromarray(grace_pixels).convert("L"))
    boxes = face_detector.detect(grey)
    assert len(boxes) == 1
    assert face_detector.landmarks(grey, boxes[0]).shape == (68, 2)


def test_rejects_float_pixels(face_detector: FaceDetector, grace_pixels: np.ndarray) -> None:
    with pytest.raises(ValueError):
        face_detector.detect(grace_pixels.astype(np.float32) / 255)


def test_interocular_distance() -> None:
    points = np.zeros((68, 2), dtype=np.float32)
    points[36] = (10, 20)
    points[45] = (13, 24)
    assert interocular_distance(points) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        interocular_distance(np.zeros((5, 2)))


def test_missing_landmark_model(tmp_path: Path, grace_pixels: np.ndarray) -> None:
    detector = FaceDetector(landmark_model=tmp_path / "shape_predictor_68_face_landmarks.dat")
    box = detector.detect(grace_pixels)[0]  # detection needs no file
    with pytest.raises(ModelDataError, match="missing; reinstall"):
        detector.landmarks(grace_pixels, box)


def test_corrupt_landmark_model(tmp_path: Path, grace_pixels: np.ndarray) -> None:
    path = tmp_path / "shape_predictor_68_face_landmarks.dat"
    path.write_bytes(b"not a dlib model" * 100)
    detector = FaceDetector(landmark_model=path)
    with pytest.raises(ModelDataError, match="cannot read the landmark model"):
        detector.landmarks(grace_pixels, FaceBox(161, 137, 377, 353))
