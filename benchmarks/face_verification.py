"""Which CNN verification crops keep weak real faces and reject false positives, and at what cost.

    python benchmarks/face_verification.py [--photos 2400] [--crops 2.0:144,2.0:208 ...]

``FaceDetector`` keeps a HOG detection scoring below ``verify_below`` only if dlib's CNN face
detector confirms it on a crop around it (``ganfit.face.detection``, ``_VERIFY_CROPS``). This
measures each single crop (grown ``g`` times the box, resized to ``S`` px) on

- weak real faces: HOG detections scoring below ``verify_below`` on UTKFace photos (every
  ``len/--photos``-th of crop_part1 by name, both of ``detect``'s passes), centred in the photo
  (UTKFace photos are face crops; an off-centre weak detection is counted apart);
- false positives: weak HOG detections on scikit-image's photos without faces, each rotated from
  -20 to 20 degrees at full size and at 0.7x, and on the astronaut rotated likewise away from her face (the test's glove
  and flag at 15 degrees among them),

then scores cascades of crops (tried in turn until one confirms) from those measurements: faces
kept, false positives rejected, and mean CNN milliseconds per weak detection. dlib's CNN has no
BLAS here, so its time grows with the crop's pixels (~104 ms at 144 px, ~230 ms at 208 px).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ganfit.face.detection import _VERIFY_CROPS, FaceBox, FaceDetector

UTKFACE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "utkface" / "crop_part1"
#: scikit-image photos with no face in them (false-positive material).
NON_FACE_IMAGES = (
    "brick", "cell", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass", "gravel", "horse",
    "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina",
    "rocket", "text",
)
ROTATIONS_DEG = (-20, -15, -10, -5, 0, 5, 10, 15, 20)
#: ... and each of those also shrunk (the astronaut only rotated: her face must stay where it is).
SCALES = (1.0, 0.7)
#: Single crops measured on every sample: (grow, side px); the face is then side/grow px.
MEASURED_CROPS = (
    (2.0, 144), (2.0, 208),
    (1.5, 132), (1.5, 156),
    (1.25, 110), (1.25, 115), (1.25, 120), (1.25, 130),
    (1.1, 106), (1.1, 114),
)
#: The crops used until 2025-06 (box grown 2x, 144 then 208 px).
PREVIOUS_CROPS = ((2.0, 144), (2.0, 208))
#: Cascades scored from the single-crop measurements (the first is ``_VERIFY_CROPS``, in use).
CASCADES = (
    _VERIFY_CROPS,
    PREVIOUS_CROPS,
    ((2.0, 208),),
    ((1.5, 156),),
    ((1.25, 120),),
    ((1.25, 130),),
    ((1.1, 114),),
    ((1.5, 132), (2.0, 208)),
    ((1.25, 110), (2.0, 208)),
    ((1.25, 115), (2.0, 208)),
    ((1.25, 120), (2.0, 208)),
    ((1.25, 120), (1.25, 130)),
    ((1.1, 114), (2.0, 208)),
)


@dataclass
class Sample:
    """One weak HOG detection and what each measured crop made of it."""

    name: str
    kind: str  # "face", "off-centre" or "false"
    score: float
    box: FaceBox
    confirmed: dict[tuple[float, int], bool]
    seconds: dict[tuple[float, int], float]


def _weak(detector: FaceDetector, image: np.ndarray) -> list[FaceBox]:
    """The weak detections ``detect`` would verify: pass 1, and pass 2 when pass 1 finds nothing
    (a pass-1 candidate the CNN rejects may also send ``detect`` to pass 2; those are included)."""
    height, width = image.shape[:2]
    count = float(width * height)
    first = min(1.0, math.sqrt(detector.first_pass_pixels / count))
    boxes = detector._detect_at(image, first)
    second = min(detector.max_upscale, math.sqrt(detector.second_pass_pixels / count))
    if all(b.score < detector.verify_below for b in boxes) and second > first * 1.25:
        boxes = boxes + detector._detect_at(image, second)
    return [b for b in boxes if b.score < detector.verify_below]


def _measure(detector: FaceDetector, image: np.ndarray, box: FaceBox) -> tuple[dict, dict]:
    confirmed, seconds = {}, {}
    for crop in MEASURED_CROPS:
        started = time.perf_counter()
        confirmed[crop] = detector._cnn_sees_face(image, box, *crop)
        seconds[crop] = time.perf_counter() - started
    return confirmed, seconds


def real_samples(detector: FaceDetector, photos: int) -> list[Sample]:
    paths = sorted(UTKFACE.glob("*.jpg"))
    step = max(1, len(paths) // photos)
    samples = []
    for path in paths[::step][:photos]:
        image = np.asarray(Image.open(path).convert("RGB"))
        height, width = image.shape[:2]
        for box in _weak(detector, image):
            cx, cy = box.center
            centred = abs(cx - width / 2) < 0.2 * width and abs(cy - height / 2) < 0.2 * height
            samples.append(Sample(path.name, "face" if centred else "off-centre", box.score, box,
                                  *_measure(detector, image, box)))
    return samples


def false_samples(detector: FaceDetector) -> list[Sample]:
    from skimage import data

    samples = []
    for name in ("astronaut", *NON_FACE_IMAGES):
        pixels = np.asarray(getattr(data, name)())
        if pixels.dtype != np.uint8:  # e.g. a boolean mask
            pixels = (pixels > 0).astype(np.uint8) * 255
        if pixels.ndim == 2:
            pixels = np.stack([pixels] * 3, axis=-1)
        full = Image.fromarray(np.ascontiguousarray(pixels[..., :3], dtype=np.uint8))
        for (angle, scale) in itertools.product(ROTATIONS_DEG, SCALES):
            base = full if scale == 1.0 or name == "astronaut" else full.resize(
                (round(full.width * scale), round(full.height * scale)), Image.Resampling.BILINEAR)
            if name == "astronaut" and scale != 1.0:
                continue
            image = np.asarray(base.rotate(-angle, Image.Resampling.BILINEAR, fillcolor=(128, 128, 128)))
            faces = detector.detect(image) if name == "astronaut" else []
            for box in _weak(detector, image):
                # The astronaut's own face (found strongly, or weakly when tilted) is no false positive.
                if any(abs(box.center[0] - f.center[0]) < f.width and abs(box.center[1] - f.center[1]) < f.height
                       for f in faces) or (name == "astronaut" and box.center[1] < 200):
                    continue
                samples.append(Sample(f"{name}@{angle}x{scale}", "false", box.score, box, *_measure(detector, image, box)))
    return samples


def score(cascade: tuple[tuple[float, int], ...], samples: list[Sample]) -> tuple[int, float]:
    """(how many of ``samples`` the cascade confirms, its mean CNN seconds per sample)."""
    kept, seconds = 0, 0.0
    for sample in samples:
        for crop in cascade:
            seconds += sample.seconds[crop]
            if sample.confirmed[crop]:
                kept += 1
                break
    return kept, seconds / max(1, len(samples))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=2400, help="UTKFace photos scanned for weak faces")
    args = parser.parse_args()
    if not UTKFACE.is_dir():
        print(f"{UTKFACE} is not here", file=sys.stderr)
        return 1
    detector = FaceDetector()
    started = time.perf_counter()
    falses = false_samples(detector)
    reals = real_samples(detector, args.photos)
    faces = [s for s in reals if s.kind == "face"]
    others = [s for s in reals if s.kind == "off-centre"]
    print(f"{len(faces)} weak real faces (+{len(others)} off-centre weak detections) in {args.photos} UTKFace "
          f"photos; {len(falses)} weak false positives; measured in {time.perf_counter() - started:.0f} s")
    for crop in MEASURED_CROPS:
        lost = [s.name for s in faces if not s.confirmed[crop]]
        print(f"  crop {crop[0]:.2f}x -> {crop[1]} px (face {crop[1] / crop[0]:.0f} px): "
              f"faces kept {len(faces) - len(lost)}/{len(faces)}, "
              f"false positives confirmed {sum(s.confirmed[crop] for s in falses)}/{len(falses)}, "
              f"{1000 * np.mean([s.seconds[crop] for s in faces + falses]):.0f} ms per CNN run")
    print("cascades (crops tried in turn): faces kept, false positives rejected, mean CNN ms per weak face")
    for cascade in CASCADES:
        kept, seconds = score(cascade, faces)
        confirmed, _ = score(cascade, falses)
        off, _ = score(cascade, others)
        label = " then ".join(f"{g:.2f}x->{s}" for g, s in cascade)
        print(f"  {label:28s} faces {kept}/{len(faces)}, false positives rejected {len(falses) - confirmed}/"
              f"{len(falses)}, off-centre kept {off}/{len(others)}, {1000 * seconds:.0f} ms"
              + ("  (in use)" if cascade == _VERIFY_CROPS else "  (previous)" if cascade == PREVIOUS_CROPS else ""))
    for cascade in CASCADES:
        lost = [f"{s.name} ({s.score:.2f}, {s.box.width:.0f} px)" for s in faces
                if not any(s.confirmed[c] for c in cascade)]
        if lost:
            print(f"  {' then '.join(f'{g:.2f}x->{s}' for g, s in cascade)} loses: {', '.join(lost)}")
    for sample in falses:
        hits = [f"{g:.2f}x->{s}" for (g, s), ok in sample.confirmed.items() if ok]
        print(f"  false positive {sample.name} score {sample.score:.2f} box {sample.box.width:.0f} px: "
              f"confirmed by {', '.join(hits) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
