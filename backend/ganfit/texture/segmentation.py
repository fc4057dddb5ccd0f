"""Photo segmentation into face skin, hair, headwear or glasses, and other (issue 17, item 1).

Why: the texture should keep the photo's colour only where the photo shows the person's skin;
hair, a hat, glasses, sky or a collar seen where the head model is must come from the texture
model instead. This module says which pixels are which; it does not touch the texture.

Classes (``Segmentation.labels``):

- ``SKIN``: the face up to the hairline and down to the jaw, the ears, and what lies on the face's
  skin: brows, eyes, lips, facial hair. The texture keeps this (the eye and mouth charts decide
  for themselves what to take from it).
- ``HAIR``: scalp hair around the face.
- ``HEADWEAR_OR_GLASSES``: hats, caps, glasses frames and lenses.
- ``OTHER``: background, clothes, and the neck. The neck counts as other because where it ends
  (collar, shadow under the jaw) is not defined by anything the fit sees, and the jaw line from
  the landmarks is a clean border; the texture model fills the neck.

Method (OpenCV, no trained network; measured in docs/texture-segmentation.md):

1. The 68 landmarks give a face frame (up = chin to brows) and three regions: a seed that is
   surely skin (the cheeks, nose, eyes and mouth inside the jaw), the face region where skin may
   be (the jaw, the brows raised to a forehead), and a head ellipse outside which is surely not
   head.
2. GrabCut (colour mixtures plus a graph cut) separates skin from the rest, seeded with those
   regions. Skin is then cut at the jaw line (the neck is other) and kept to the component
   connected to the seed.
3. A colour test (chromaticity and brightness against the skin seed's samples, as
   ``--clean-texture``'s skin likeness) removes pixels that GrabCut kept but that look nothing
   like skin: a hat band, a fringe of dark hair on the forehead.
4. A second GrabCut separates the head (skin, hair, hat) from the background inside the ellipse.
   Head pixels that are not skin and lie above the jaw are hair, unless their colour is unlike
   the hair seen beside the temples and they sit above the brows (a hat) or they cross the nose
   bridge between the eyes (glasses): those are headwear or glasses.

The work is done on a crop around the face scaled to at most ``WORK_SIZE`` pixels a side, so a
call costs about the same on any photo (0.1-0.3 s on one core), and the label map is scaled
back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ganfit.errors import InputImageError

__all__ = [
    "CLASS_NAMES",
    "HAIR",
    "HEADWEAR_OR_GLASSES",
    "OTHER",
    "SKIN",
    "Segmentation",
    "SegmentationSettings",
    "segment_photo",
]

log = logging.getLogger(__name__)

OTHER = 0
SKIN = 1
HAIR = 2
HEADWEAR_OR_GLASSES = 3
#: Names of the classes, indexed by their label value.
CLASS_NAMES: tuple[str, ...] = ("other", "skin", "hair", "headwear_or_glasses")

#: Longest side of the crop the segmentation works on (UTKFace's 200 px crops are used as they are).
WORK_SIZE = 256


@dataclass(frozen=True)
class SegmentationSettings:
    """Tuning of ``segment_photo``; the defaults were chosen on the tuning half of the labelled
    photos (benchmarks/segmentation_iou.py says which)."""

    #: GrabCut iterations for the skin and the head cut.
    iterations: int = 4
    #: How far the forehead reaches above the brows, in brow-to-chin heights (where skin may be).
    forehead: float = 0.45
    #: Skin never reaches higher than this above the brows, in brow-to-chin heights: the top of
    #: the head is hair, a hat or scalp (a forehead is rarely higher than 0.6).
    skin_top: float = 0.7
    #: How far the sure-skin seed is pulled from the jaw toward the nose (fraction).
    seed_pull: float = 0.25
    #: The jaw line is moved down by this fraction of the brow-to-chin height before the neck is
    #: cut off (dlib's jaw points sit on or just inside the jaw's edge).
    jaw_margin: float = 0.04
    #: Half-width and half-height of the head ellipse in face widths and brow-to-chin heights.
    head_width: float = 0.85
    head_height: float = 1.05
    #: Colour test: a pixel counts as unlike skin beyond this many robust standard deviations of
    #: the seed's chromaticity, or beyond this factor of its brightness.
    chroma_limit: float = 3.0
    brightness_limit: float = 2.2
    #: ``_bridge_edges`` above this means glasses (between the tuning photos' 0.08 and 0.14).
    glasses_edges: float = 0.11


@dataclass(frozen=True, eq=False)
class Segmentation:
    """A photo's class map: ``labels`` (H, W) uint8 holding ``OTHER``, ``SKIN``, ``HAIR`` or
    ``HEADWEAR_OR_GLASSES``."""

    labels: np.ndarray

    @property
    def skin(self) -> np.ndarray:
        """(H, W) bool: face skin."""
        return self.labels == SKIN

    @property
    def hair(self) -> np.ndarray:
        """(H, W) bool: hair."""
        return self.labels == HAIR

    @property
    def headwear_or_glasses(self) -> np.ndarray:
        """(H, W) bool: hats, caps, glasses."""
        return self.labels == HEADWEAR_OR_GLASSES

    @property
    def other(self) -> np.ndarray:
        """(H, W) bool: background, clothes, neck."""
        return self.labels == OTHER

    def mask(self, label: int) -> np.ndarray:
        """(H, W) bool mask of one class."""
        if label not in range(len(CLASS_NAMES)):
            raise ValueError(f"unknown class {label}; use one of 0..{len(CLASS_NAMES) - 1}")
        return self.labels == label

    def fractions(self) -> dict[str, float]:
        """Share of the photo's pixels in each class, by name."""
        counts = np.bincount(self.labels.ravel(), minlength=len(CLASS_NAMES))
        return {name: float(c) / self.labels.size for name, c in zip(CLASS_NAMES, counts)}


def segment_photo(
    pixels: np.ndarray, landmarks68: np.ndarray, settings: SegmentationSettings | None = None
) -> Segmentation:
    """Segment ``pixels`` (H, W, 3) uint8 RGB around the face given by ``landmarks68`` (68, 2)
    (iBUG order, image pixels with the origin at the top-left corner, as ``find_face`` gives).

    Raises ``InputImageError`` for a photo that is not (H, W, 3) uint8 and for landmarks that
    are not (68, 2) finite numbers lying on the photo.
    """
    import cv2

    settings = settings or SegmentationSettings()
    image, points = _checked(pixels, landmarks68)
    height, width = image.shape[:2]

    frame = _FaceFrame(points)
    x0, y0, x1, y1 = frame.crop(width, height)
    scale = min(1.0, WORK_SIZE / max(x1 - x0, y1 - y0))
    crop = image[y0:y1, x0:x1]
    if scale < 1.0:
        crop = cv2.resize(crop, (round((x1 - x0) * scale), round((y1 - y0) * scale)), interpolation=cv2.INTER_AREA)
    local = _FaceFrame((points - [x0, y0]) * scale)
    labels = _segment_crop(np.ascontiguousarray(crop), local, settings)

    full = np.zeros((height, width), np.uint8)
    if scale < 1.0:
        labels = cv2.resize(labels, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    full[y0:y1, x0:x1] = labels
    segmentation = Segmentation(full)
    log.debug("segmentation: %s", {k: round(v, 3) for k, v in segmentation.fractions().items()})
    return segmentation


# --------------------------------------------------------------------------------------------
# Input checks


def _checked(pixels: np.ndarray, landmarks68: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(pixels)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputImageError(
            f"segmentation needs an (H, W, 3) uint8 RGB photo, got shape {image.shape} dtype {image.dtype}"
        )
    if min(image.shape[:2]) < 16:
        raise InputImageError(f"segmentation needs a photo of at least 16x16 pixels, got {image.shape[1]}x{image.shape[0]}")
    points = np.asarray(landmarks68, dtype=np.float64)
    if points.shape != (68, 2) or not np.isfinite(points).all():
        raise InputImageError(f"segmentation needs (68, 2) finite landmarks (dlib's 68 points), got shape {points.shape}")
    height, width = image.shape[:2]
    # A face cropped at the photo's edge may have its jaw points a little outside it (UTKFace's
    # chins); landmarks beyond a tenth of the face's size, or a face centre off the photo, mean
    # the landmarks belong to another photo or another scale.
    size = float(np.ptp(points, axis=0).max())
    outside = np.maximum(np.maximum(-points, points - [width, height]), 0).max()
    centre = points.mean(0)
    if outside > 0.1 * size + 2 or not (0 <= centre[0] < width and 0 <= centre[1] < height):
        raise InputImageError(
            f"landmarks lie outside the {width}x{height} photo (by up to {outside:.0f} px); "
            "pass the landmarks found on this photo, in its pixel coordinates"
        )
    return image, points


# --------------------------------------------------------------------------------------------
# Geometry from the landmarks


class _FaceFrame:
    """The face's axes and regions from dlib's 68 points: ``up`` (chin to brows, unit), ``right``,
    ``height`` (brows to chin) and ``width`` (jaw point 0 to 16)."""

    def __init__(self, points: np.ndarray) -> None:
        self.points = points
        brow = points[17:27].mean(0)
        chin = points[8]
        axis = brow - chin
        self.height = float(np.linalg.norm(axis)) + 1e-6
        self.up = axis / self.height
        self.right = np.array([-self.up[1], self.up[0]])
        if np.dot(points[16] - points[0], self.right) < 0:
            self.right = -self.right
        self.width = float(np.linalg.norm(points[16] - points[0])) + 1e-6
        self.brow = brow
        self.centre = brow - self.up * 0.05 * self.height

    def crop(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Pixel box around the head ellipse grown by half, clipped to the photo."""
        corners = self.ellipse(1.6, 1.6, 1.0, 1.0, 16)
        lo = np.floor(corners.min(0)).astype(int)
        hi = np.ceil(corners.max(0)).astype(int)
        return max(lo[0], 0), max(lo[1], 0), min(hi[0], width), min(hi[1], height)

    def ellipse(self, grow_x: float, grow_y: float, head_width: float, head_height: float, n: int = 48) -> np.ndarray:
        """(n, 2) polygon of the head ellipse (half-axes ``head_width`` face widths and
        ``head_height`` face heights) grown by the given factors."""
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        a = head_width * self.width * grow_x
        b = head_height * self.height * grow_y
        return self.centre + np.outer(a * np.cos(t), self.right) + np.outer(b * np.sin(t), self.up)

    def face_region(self, forehead: float, temples: float = 0.8) -> np.ndarray:
        """Polygon of where skin may be: the jaw, then the brows raised by ``forehead`` heights,
        the outer brow points widened to the jaw's top points so the temples are included."""
        jaw = self.points[0:17]
        brows = self.points[26:16:-1] + self.up * forehead * self.height
        brows[0] = self.points[16] + self.up * forehead * self.height * temples
        brows[-1] = self.points[0] + self.up * forehead * self.height * temples
        return np.concatenate([jaw, brows])

    def seed(self, pull: float) -> np.ndarray:
        """Polygon that is surely skin: the jaw (points 2-14) pulled toward the nose tip, closed
        along the brows' lower edge."""
        nose = self.points[30]
        jaw = nose + (self.points[2:15] - nose) * (1 - pull)
        brows = self.points[26:16:-1] - self.up * 0.04 * self.height
        brows = nose + (brows - nose) * (1 - pull * 0.5)
        return np.concatenate([jaw, brows])

    def below_jaw(self, margin: float, width: int, height: int) -> np.ndarray:
        """Polygon of everything below the jaw line (moved down by ``margin`` heights): the neck
        and the clothes, reaching far beyond the crop."""
        jaw = self.points[0:17] - self.up * margin * self.height
        far = 4 * (width + height)
        left = jaw[0] - self.right * far
        right = jaw[-1] + self.right * far
        return np.concatenate([[left], jaw, [right, right - self.up * far, left - self.up * far]])


def _fill(shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose centres lie inside ``polygon`` (corner-origin coordinates)."""
    import cv2

    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round((polygon - 0.5) * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


# --------------------------------------------------------------------------------------------
# The segmentation


def _segment_crop(image: np.ndarray, frame: _FaceFrame, settings: SegmentationSettings) -> np.ndarray:
    import cv2

    shape = image.shape[:2]
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    seed = _fill(shape, frame.seed(settings.seed_pull))
    face = _fill(shape, frame.face_region(settings.forehead))
    head = _fill(shape, frame.ellipse(1.0, 1.0, settings.head_width, settings.head_height))
    far = ~_fill(shape, frame.ellipse(1.35, 1.25, settings.head_width, settings.head_height))
    below = _fill(shape, frame.below_jaw(settings.jaw_margin, shape[1], shape[0]))
    eyes = _eye_mask(shape, frame)

    # 1. Skin: GrabCut from the seed, the face region and the far background.
    mask = np.full(shape, cv2.GC_PR_BGD, np.uint8)
    mask[face] = cv2.GC_PR_FGD
    mask[far] = cv2.GC_BGD
    mask[seed] = cv2.GC_FGD
    skin = _grabcut(bgr, mask, settings.iterations)
    # 2. The neck is other; skin is what connects to the seed.
    skin &= ~below & head & ~_fill(shape, _half_plane(frame, settings.skin_top))
    # 3. Pixels that look nothing like the seed's skin (eyes and brows aside) are not skin.
    unlike = ~_skin_like(image, seed & ~eyes, settings)
    skin &= ~(unlike & ~seed & ~eyes)
    skin = _component_touching(skin, seed)
    skin = _close_small_holes(skin, seed)

    # 4. Head against background; the head's non-skin above the jaw is hair, hat or glasses.
    mask = np.full(shape, cv2.GC_PR_BGD, np.uint8)
    mask[head] = cv2.GC_PR_FGD
    mask[far] = cv2.GC_BGD
    mask[skin] = cv2.GC_FGD
    person = _grabcut(bgr, mask, settings.iterations)
    rest = person & head & ~skin & ~below
    rest = _component_touching(rest | skin, skin) & rest

    labels = np.zeros(shape, np.uint8)
    labels[skin] = SKIN
    labels[rest] = HAIR
    worn = _headwear_or_glasses(image, frame, rest, skin, settings)
    labels[worn] = HEADWEAR_OR_GLASSES
    return labels


def _grabcut(bgr: np.ndarray, mask: np.ndarray, iterations: int) -> np.ndarray:
    """Foreground of OpenCV's GrabCut started from ``mask`` (GC_* values). A mask without both
    foreground and background samples is returned as it is (GrabCut cannot fit its mixtures)."""
    import cv2

    fg = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))
    if fg.sum() < 20 or (~fg).sum() < 20:
        return fg
    work = mask.copy()
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    cv2.grabCut(bgr, work, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    return np.isin(work, (cv2.GC_FGD, cv2.GC_PR_FGD))


def _eye_mask(shape: tuple[int, int], frame: _FaceFrame) -> np.ndarray:
    """The two eyes' outlines (points 36-41, 42-47) grown by half around their centres, and the
    mouth (48-59): dark or bright parts of the face that the colour test must not judge."""
    mask = np.zeros(shape, bool)
    for lo, hi, grow in ((36, 42, 1.6), (42, 48, 1.6), (48, 60, 1.2)):
        part = frame.points[lo:hi]
        centre = part.mean(0)
        mask |= _fill(shape, centre + (part - centre) * grow)
    return mask


def _chroma(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float64) + 1.0
    return rgb[..., :2] / rgb.sum(-1, keepdims=True)


def _log_lum(rgb: np.ndarray) -> np.ndarray:
    return np.log(rgb.astype(np.float64).mean(-1) + 1.0)


def _skin_like(image: np.ndarray, reference: np.ndarray, settings: SegmentationSettings) -> np.ndarray:
    """(H, W) bool: pixels whose chromaticity and brightness are within the limits of the skin
    samples under ``reference`` (robust centre and spread, as ``skin_likeness`` does for
    ``--clean-texture``)."""
    samples = image[reference]
    if len(samples) < 30:
        return np.ones(image.shape[:2], bool)
    chroma = _chroma(samples)
    centre = np.median(chroma, 0)
    spread = 1.4826 * np.median(np.abs(chroma - centre), 0) + 0.004
    distance = np.linalg.norm((_chroma(image) - centre) / spread, axis=-1)
    lum = _log_lum(image)
    lum_centre = float(np.median(_log_lum(samples)))
    bright = np.abs(lum - lum_centre) < np.log(settings.brightness_limit)
    return (distance < settings.chroma_limit) & bright


def _component_touching(mask: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """The connected parts of ``mask`` that overlap ``anchor``."""
    import cv2

    count, parts = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
    if count <= 1:
        return mask
    keep = np.unique(parts[anchor & mask])
    keep = keep[keep > 0]
    return np.isin(parts, keep)


def _close_small_holes(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Fill holes of ``mask`` that touch no border and are smaller than a twentieth of the seed
    (specular spots, moles, speckle), and smooth its edge by a small closing."""
    import cv2

    radius = max(1, round(np.sqrt(seed.sum()) / 60))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    closed = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, kernel).astype(bool)
    holes = ~closed
    count, parts, stats, _ = cv2.connectedComponentsWithStats(holes.astype(np.uint8), connectivity=4)
    h, w = mask.shape
    limit = seed.sum() / 20
    for i in range(1, count):
        x, y, bw, bh, area = stats[i]
        if area < limit and x > 0 and y > 0 and x + bw < w and y + bh < h:
            closed[parts == i] = True
    return closed


def _headwear_or_glasses(
    image: np.ndarray, frame: _FaceFrame, rest: np.ndarray, skin: np.ndarray, settings: SegmentationSettings
) -> np.ndarray:
    """Of the head's non-skin pixels ``rest``, those that are a hat or glasses rather than hair.

    Glasses: edges across the nose bridge (``_bridge_edges``); their lenses are then the
    template ``_lenses`` around the eyes (rims are thin and lenses clear, so colour alone does
    not find them).
    Headwear: non-skin above the brows whose colour differs from the hair beside the temples
    (a cap over grey hair), or, when no hair is seen beside the face, differs from nothing seen
    there and forms a wide band across the top of the head."""
    shape = image.shape[:2]
    worn = np.zeros(shape, bool)

    # Glasses: a frame crossing the nose bridge makes strong horizontal edges there, which skin,
    # brows and hair do not; then the lenses are drawn around the eyes.
    if _bridge_edges(image, frame) > settings.glasses_edges:
        worn |= _lenses(shape, frame)

    # Headwear: compare the colour above the brows with the hair beside the temples.
    above = _fill(shape, _half_plane(frame, 0.15)) & rest
    sides = rest & ~above & _fill(shape, frame.ellipse(1.0, 1.0, settings.head_width, 0.6))
    if above.sum() < 30:
        return worn
    lab = _lab(image)
    if sides.sum() >= 30:
        centre = np.median(lab[sides], 0)
        spread = 1.4826 * np.median(np.abs(lab[sides] - centre), 0) + np.array([6.0, 4.0, 4.0])
        unlike = np.linalg.norm((lab - centre) / spread, axis=-1) > 3.5
        worn |= above & unlike
    return worn


def _bridge_edges(image: np.ndarray, frame: _FaceFrame) -> float:
    """Strength of horizontal edges between the inner eye corners, from the brows down to the
    nose's upper third: the largest row mean of the vertical brightness step, relative to the
    region's median, on the region resampled to 16x24 so that it does not depend on the face's
    size in pixels. Measured on the tuning photos: 0.03-0.08 without glasses, 0.14-0.18 with."""
    import cv2

    points = frame.points
    gap = float(np.linalg.norm(points[42] - points[39]))
    corners = np.array([
        points[39] + frame.right * 0.2 * gap, points[42] - frame.right * 0.2 * gap,
    ])
    top = min(float(np.dot(points[19] - points[39], frame.up)), float(np.dot(points[24] - points[42], frame.up)))
    top += 0.05 * frame.height
    bottom = float(np.dot(points[29] - points[39], frame.up))
    src = np.float32([corners[0] + frame.up * top, corners[1] + frame.up * top, corners[0] + frame.up * bottom])
    dst = np.float32([[0, 0], [16, 0], [0, 24]])
    grey = image.astype(np.float32).mean(-1)
    region = cv2.warpAffine(grey, cv2.getAffineTransform(src, dst), (16, 24), flags=cv2.INTER_AREA)
    steps = np.abs(np.diff(region, axis=0)) / (float(np.median(region)) + 1.0)
    return float(steps.mean(1).max())


def _lenses(shape: tuple[int, int], frame: _FaceFrame) -> np.ndarray:
    """(H, W) bool: a pair of glasses drawn around the eyes: ellipses 2.6 eye widths wide and 1.7
    high, a little below each eye's centre, joined by a bridge (proportions from the labelled
    photos' glasses)."""
    points = frame.points
    mask = np.zeros(shape, bool)
    t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    for lo, hi in ((36, 42), (42, 48)):
        eye = points[lo:hi]
        width = float(np.linalg.norm(eye[3] - eye[0]))
        centre = eye.mean(0) - frame.up * 0.1 * width
        ring = centre + np.outer(1.3 * width * np.cos(t), frame.right) + np.outer(0.85 * width * np.sin(t), frame.up)
        mask |= _fill(shape, ring)
    width = float(np.linalg.norm(points[39] - points[36]))
    bridge = np.array([
        points[39] + frame.up * 0.6 * width, points[42] + frame.up * 0.6 * width,
        points[42] + frame.up * 0.3 * width, points[39] + frame.up * 0.3 * width,
    ])
    return mask | _fill(shape, bridge)


def _half_plane(frame: _FaceFrame, offset: float) -> np.ndarray:
    """Polygon of everything above the line through the brows raised by ``offset`` heights."""
    far = 20 * (frame.width + frame.height)
    base = frame.brow + frame.up * offset * frame.height
    return np.array([
        base - frame.right * far, base + frame.right * far,
        base + frame.right * far + frame.up * far, base - frame.right * far + frame.up * far,
    ])


def _lab(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float64)
