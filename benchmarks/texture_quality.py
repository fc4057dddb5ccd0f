"""Texture quality for artists (issue 17's "Done when"): foreign colour, sharpness, seams, identity.

For each texture configuration (a named set of reconstruct options, ``CONFIGS``) and photo, a
GANFit++ fit (the default mode) and five figures:

1. foreign colour: the share of head-skin texels (UV charts face, scalp/neck, ears; brows, eyes
   and lips left out) farther than ``FOREIGN_SIGMAS`` robust standard deviations (CIELAB median
   and MAD of the cheeks and nose) from the face's skin colour (``metrics.foreign_colour``);
2. sharpness: ``metrics.sharpness`` (mean squared Laplacian of the luminance) on the face chart,
   on the face inside the landmarks, and on that face where the photo shows skin seen squarely
   (hair painted onto a forehead is detail to the Laplacian, but not the detail the issue asks for);
3. seam: ``metrics.seam_ratio``, the gradient energy across the photo/model boundary over that
   inside each side, for the configurations that combine the photo with something else. The
   boundary is the 0.5 contour of the texture's photo weight when the result exposes one, else
   of the projection's confidence times the photo's skin segmentation carried into UV. The photo
   and GAN textures are measured on that contour too: they have no photo/model boundary, so
   theirs is the reference (on the photo texture the contour runs along the photo's own edges:
   the hairline, nostrils, lid rims, the crop's border);
4. identity: dlib's distance from the photo to the head turned 25 degrees, as table1 measures
   it, and on the face alone: hair and headwear (``segment_photo``'s HAIR and
   HEADWEAR_OR_GLASSES) set to grey in the photo, and in the render the texels onto which the
   same photo pixels project (the mask carried into UV the way the texture is, then rendered
   from the turned view);
5. likeness to other photos of the same person (the public photos of one person: obama,
   obama2, obama3): dlib's distance from each fit's head turned ``CROSS_DEGREES`` to the
   person's *other* photos, the closest we can come here to a held-out likeness test (no
   render is compared with the photo it was fitted to);
6. a contact sheet of the public photos (never UTKFace): photo, overlay, turned 35 degrees,
   from behind, UV texture, one row per photo and configuration (today's default and the
   candidate).

Photos: the 20 UTKFace photos of ``OBJECTIVE_TEST_PHOTOS`` and the public photos (the sample
photos grace_hopper and astronaut plus docs/images/public_photos/*.jpg); means per group.

    GANFIT_THREADS=1 python benchmarks/texture_quality.py [--configs photo,clean,gan,blend]
        [--photos-limit N] [--markdown docs/texture-quality.md] [--no-cache]
        [--sheet docs/images/texture_blend_contact_sheet.png | --no-sheet]

Fits are cached under benchmarks/results/texture-quality-cache/, keyed like table1's (photo,
settings, regressor weights); the measures are recomputed on every run (seconds). Prints the
table and writes benchmarks/results/texture_quality.txt and .json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from identity_distance import TURN_DEGREES, UTKFACE, DlibJudge, fit_and_judge
from report import RESULTS, publish, replace_block
from table1 import COMMIT, cache_key, weights_hash

from ganfit.errors import GanfitError, InputImageError
from ganfit.fit.joint_stage import random_view
from ganfit.fit.reconstruct import Reconstructor
from ganfit.fit.settings import FitSettings
from ganfit.fit.texture_projection import mirror_vertex_index, project_photo_to_uv
from ganfit.io.images import load_photo
from ganfit.io.result import CameraParams, LightParams, Reconstruction
from ganfit.io.samples import sample_photo
from ganfit.models.shape_model import load_default_shape_model
from ganfit.render import Camera, MeshRenderer, PointLight
from ganfit.settings import build_settings
from ganfit.texture.dataset import OBJECTIVE_TEST_PHOTOS
from ganfit.texture.metrics import FOREIGN_SIGMAS, foreign_colour, seam_ratio, sharpness, skin_uv_masks
from ganfit.texture.segmentation import HAIR, HEADWEAR_OR_GLASSES, SKIN, segment_photo

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = ROOT / "docs" / "images" / "public_photos"
CACHE = RESULTS / "texture-quality-cache"
SHEET = ROOT / "docs" / "images" / "texture_blend_contact_sheet.png"
MODE = "ganfit++"


@dataclass(frozen=True)
class Config:
    """One texture configuration: reconstruct options as the CLI takes them."""

    name: str
    options: dict[str, Any]  # as the protocol/settings take them
    about: str
    seam: bool  # combines the photo with something else, so a seam can exist
    needs: str = ""  # a FitSettings path that must exist for the option to mean anything


CONFIGS: tuple[Config, ...] = (
    Config("photo", {}, "today's default: the photo projected into UV", seam=False),
    Config("clean", {"clean_texture": True}, "--clean-texture: skin only outside the face outline, the rest filled", seam=True),
    Config("gan", {"texture_model": "gan"}, "--texture-model gan: the GAN's fit", seam=False),
    Config("blend", {"texture_source": "blend"}, "--texture-source blend: seen skin from the photo, the model elsewhere",
           seam=True, needs="appearance.texture_source"),
)
BASELINE = "photo"
GAN = "gan"
#: The candidate new default shown beside today's on the contact sheet (the first one available).
CANDIDATES = ("blend", "clean")
TURN_SHEET = 35.0
#: The turn of the cross-photo likeness test (``cross_photo_likeness``).
CROSS_DEGREES = 30.0
CELL = 150
SHEET_LIMIT = 1_500_000


# ---------------------------------------------------------------------------------------------
# Configurations and photos


def settings_of(config: Config, device: str) -> FitSettings | None:
    """The config's GANFit++ settings, or None when this engine lacks the option (``needs``)."""
    settings = build_settings({"mode": MODE, "device": device, **config.options}, "cli")
    if config.needs:
        obj: Any = settings
        for part in config.needs.split("."):
            if not hasattr(obj, part):
                return None
            obj = getattr(obj, part)
        if obj != next(iter(config.options.values())):
            return None
    return settings


def engine_hash() -> str:
    """SHA-256 of the engine's Python sources as they are on disk: a texture option is often
    being built in the working tree, and a cached fit must come from the code that runs now.
    The measures' own module (texture/metrics.py) is left out: fits never use it."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "backend" / "ganfit").rglob("*.py")):
        if path.name == "metrics.py" and path.parent.name == "texture":
            continue
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


ENGINE = engine_hash()


def public_photos() -> list[Path]:
    """The public photos: the two sample photos and the public-domain crops in the docs."""
    return [sample_photo("grace_hopper"), sample_photo("astronaut")] + sorted(PUBLIC.glob("*.jpg"))


def utkface_photos() -> list[Path]:
    return [UTKFACE / name for name in OBJECTIVE_TEST_PHOTOS]


# ---------------------------------------------------------------------------------------------
# Fits, cached


@dataclass
class Fit:
    """What the measures need from one reconstruction."""

    texture: np.ndarray  # (S, S, 3) uint8
    preview: np.ndarray  # (H, W, 3) uint8
    vertices: np.ndarray  # (V, 3) float32
    landmarks_2d: np.ndarray  # (68, 2)
    landmark_indices: np.ndarray
    camera: CameraParams
    light: LightParams
    record: dict[str, Any] = field(default_factory=dict)  # overlay, turned, seconds, commit
    photo_weight: np.ndarray | None = None  # (S, S) in [0, 1] if the result exposes one


#: Result attributes that, when an engine exposes one, hold the texture's photo weight per texel.
WEIGHT_FIELDS = ("texture_weight", "texture_confidence", "photo_weight", "blend_weight")


def exposed_weight(result: Reconstruction) -> np.ndarray | None:
    for name in WEIGHT_FIELDS:
        value = getattr(result, name, None)
        if isinstance(value, np.ndarray) and value.ndim >= 2:
            w = value.astype(np.float32)
            return w[..., 0] if w.ndim == 3 else w
    return None


class Fitter:
    """GANFit++ fits of (config, photo) through the cache, with one loaded reconstructor."""

    def __init__(self, use_cache: bool) -> None:
        self.use_cache = use_cache
        self._reconstructor: Reconstructor | None = None
        self._judge: DlibJudge | None = None
        self.fresh = 0

    @property
    def judge(self) -> DlibJudge:
        if self._judge is None:
            self._judge = DlibJudge()
        return self._judge

    def fit(self, config: str, settings: FitSettings, photo: Path) -> Fit | str:
        """The fit, or the reason the photo has no usable face."""
        weights = weights_hash(settings)
        # No dots in the name: with_suffix() below replaces what follows the last one (UTKFace's
        # names hold three), which once dropped the key and served stale fits.
        name = photo.stem.replace(".", "_")[:40]
        stem = CACHE / config / f"{name}-{cache_key(settings, photo, f'{weights}/{ENGINE}')}"
        if self.use_cache and stem.with_suffix(".json").is_file():
            record = json.loads(stem.with_suffix(".json").read_text())
            if "skipped" in record:
                return str(record["skipped"])
            with np.load(stem.with_suffix(".npz")) as data:
                arrays = {k: data[k] for k in data.files}
            return Fit(arrays["texture"], arrays["preview"], arrays["vertices"], arrays["landmarks_2d"],
                       arrays["landmark_indices"], CameraParams.from_json(record["camera"]),
                       LightParams.from_json(record["light"]), record, arrays.get("photo_weight"))
        if self._reconstructor is None:
            self._reconstructor = Reconstructor(settings)
        self._reconstructor.settings = settings
        stem.parent.mkdir(parents=True, exist_ok=True)
        try:
            loaded = load_photo(photo, max_side=settings.max_photo_side)
            result, seconds, overlay, turned = fit_and_judge(self._reconstructor, self.judge, loaded,
                                                             np.array(loaded.pixels))
        except InputImageError as exc:
            stem.with_suffix(".json").write_text(json.dumps({"photo": photo.name, "skipped": str(exc)}))
            return str(exc)
        self.fresh += 1
        weight = exposed_weight(result)
        record = {"photo": photo.name, "config": config, "overlay": overlay, "turned": turned, "seconds": seconds,
                  "camera": result.camera.to_json(), "light": result.light.to_json(), "commit": COMMIT, "engine": ENGINE,
                  "measured": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        arrays = {"texture": result.texture, "preview": result.preview, "vertices": result.vertices,
                  "landmarks_2d": result.landmarks_2d, "landmark_indices": result.landmark_indices}
        if weight is not None:
            arrays["photo_weight"] = weight
        np.savez_compressed(stem.with_suffix(".npz"), **arrays)
        stem.with_suffix(".json").write_text(json.dumps(record, indent=1))
        return Fit(result.texture, result.preview, result.vertices, result.landmarks_2d, result.landmark_indices,
                   result.camera, result.light, record, weight)


# ---------------------------------------------------------------------------------------------
# Rendering a fit from other views


class Views:
    """Renders of fitted heads from turned cameras, and photo masks carried into UV."""

    def __init__(self) -> None:
        self.model = load_default_shape_model()
        self.renderer = MeshRenderer(self.model.faces, self.model.uvs, self.model.uv_faces)
        self.mirror = mirror_vertex_index(self.model.mean.float())

    @staticmethod
    def camera(fit: Fit) -> Camera:
        c = fit.camera
        return Camera(*(torch.tensor(np.asarray(v, dtype=np.float32)[None]) for v in (c.position, c.look_at, c.up)),
                      focal=torch.tensor([c.focal], dtype=torch.float32))

    @staticmethod
    def light(fit: Fit) -> PointLight:
        lt = fit.light
        return PointLight(*(torch.tensor(np.asarray(v, dtype=np.float32)[None]) for v in (lt.position, lt.colour, lt.ambient)))

    @torch.no_grad()
    def render(self, fit: Fit, texture: np.ndarray, degrees: float, flat: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The head turned by ``degrees`` (yaw) over grey at the photo's size: image (H, W, 3) in
        [0, 1], mask (H, W), projected 68 landmarks. ``flat``: unlit (the texture's own values)."""
        vertices = torch.from_numpy(fit.vertices)[None]
        view = random_view(self.camera(fit), vertices.mean(1), math.radians(degrees), 0.0)
        light = self.light(fit)
        if flat:
            light = PointLight(light.position, torch.zeros_like(light.colour), torch.ones_like(light.ambient))
        tex = torch.from_numpy(np.ascontiguousarray(texture)).permute(2, 0, 1)[None].float()
        tex = tex / 255 if texture.dtype == np.uint8 else tex
        out = self.renderer(vertices, tex, view, light, fit.camera.height, fit.camera.width, background=0.5)
        marks = view.project(vertices[:, torch.from_numpy(fit.landmark_indices).long()], fit.camera.width,
                             fit.camera.height)[0, :, :2]
        return out.image[0].clamp(0, 1).permute(1, 2, 0).numpy(), out.mask[0, 0].numpy(), marks.numpy()

    @torch.no_grad()
    def to_uv(self, fit: Fit, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Photo-space masks (H, W, 3) in [0, 1] carried into UV as the texture is (own view, else
        the mirror point, else filled from around): (S, S, 3) and the confidence (S, S)."""
        photo = torch.from_numpy(masks.astype(np.float32)).permute(2, 0, 1)
        uv = project_photo_to_uv(photo, torch.from_numpy(fit.vertices), self.model.faces, self.model.uvs,
                                 self.model.uv_faces, self.camera(fit), self.mirror, size)
        return uv.image.permute(1, 2, 0).numpy(), uv.confidence[0].numpy()


def person_of(photo: str) -> str:
    """The person a public photo shows, from its file name: obama2.jpg and obama.jpg are one."""
    return Path(photo).stem.rstrip("0123456789")


def cross_photo_likeness(fits: dict[tuple[str, str], "Fit"], photos: list[Path], views: "Views",
                         judge: DlibJudge) -> tuple[dict[str, float], int]:
    """Per configuration, dlib's mean distance from each fit's head turned ``CROSS_DEGREES`` to
    every *other* photo of the same person (people with two or more photos), and the number of
    pairs. The photos' descriptors use their baseline fits' landmarks."""
    by_person: dict[str, list[Path]] = {}
    for photo in photos:
        if (BASELINE, photo.name) in fits:
            by_person.setdefault(person_of(photo.name), []).append(photo)
    groups = [ps for ps in by_person.values() if len(ps) > 1]
    reference = {}
    for photo in (p for ps in groups for p in ps):
        fit = fits[(BASELINE, photo.name)]
        pixels = np.array(load_photo(photo, max_side=max(fit.camera.width, fit.camera.height)).pixels)
        reference[photo.name] = judge.descriptor(pixels, fit.landmarks_2d)
    distances: dict[str, list[float]] = {}
    for (config, name), fit in fits.items():
        group = next((ps for ps in groups if any(p.name == name for p in ps)), None)
        if group is None:
            continue
        image, _, marks = views.render(fit, fit.texture, CROSS_DEGREES)
        mine = judge.descriptor(to_uint8(image), marks)
        distances.setdefault(config, []).extend(
            float(np.linalg.norm(mine - reference[p.name])) for p in group if p.name != name)
    pairs = max((len(d) for d in distances.values()), default=0)
    return {config: float(np.mean(d)) for config, d in distances.items()}, pairs


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Measures of one fit


def measure(fit: Fit, photo: Path, config: Config, views: Views, judge: DlibJudge) -> dict[str, Any]:
    """The figures of one fit (see the module docstring)."""
    size = fit.texture.shape[0]
    masks = skin_uv_masks(size)
    pixels = np.array(load_photo(photo, max_side=max(fit.camera.width, fit.camera.height)).pixels)
    if pixels.shape[:2] != (fit.camera.height, fit.camera.width):
        raise GanfitError(f"{photo.name}: photo is {pixels.shape[1]}x{pixels.shape[0]} but the fit's camera "
                          f"{fit.camera.width}x{fit.camera.height}; run with --no-cache")
    seg = segment_photo(pixels, fit.landmarks_2d)
    covered = (seg.labels == HAIR) | (seg.labels == HEADWEAR_OR_GLASSES)
    carried, confidence = views.to_uv(fit, np.stack([seg.labels == SKIN, covered, np.zeros_like(covered)], -1), size)
    texture_t = torch.from_numpy(fit.texture).permute(2, 0, 1)[None].float() / 255
    figures: dict[str, Any] = {
        "foreign": foreign_colour(fit.texture, masks).share,
        "sharpness": float(sharpness(texture_t, torch.tensor(masks.face).float())[0]),
        "sharpness_face": float(sharpness(texture_t, torch.tensor(masks.face_outline).float())[0]),
        # The intent ("where skin is seen squarely, the texture keeps the photo's detail"):
        # the same face region, only where the photo shows skin seen squarely, so that hair
        # painted onto the forehead does not count as detail.
        "sharpness_skin": float(sharpness(texture_t, torch.from_numpy(
            masks.face_outline * ((confidence > 0.9) & (carried[..., 0] > 0.9))).float())[0]),
        "seam": None,
        "seam_boundary": None,
    }
    # Every configuration is measured on the contour, also those with no photo/model boundary
    # (photo, gan): on the photo texture it is the photo's own edges there (hairline, nostrils,
    # lids, the crop's border), the reference that a blend's figure is read against.
    if config.seam and fit.photo_weight is not None:
        weight, figures["seam_boundary"] = fit.photo_weight, "the result's photo weight"
    else:
        weight, figures["seam_boundary"] = confidence * carried[..., 0], "projection confidence x skin"
    figures["seam"] = seam_ratio(fit.texture, weight, masks.head_skin)
    # Identity on the face alone: hair and headwear grey in the photo and in the turned render.
    grey = np.uint8(128)
    photo_masked = np.where(covered[..., None], grey, pixels)
    reference = judge.descriptor(photo_masked, fit.landmarks_2d)
    image, head, marks = views.render(fit, fit.texture, TURN_DEGREES)
    hair_uv = np.repeat(carried[..., 1:2], 3, -1)
    hair_view, _, _ = views.render(fit, hair_uv, TURN_DEGREES, flat=True)
    render_masked = np.where(((hair_view[..., 1] > 0.5) & (head > 0.5))[..., None], grey, to_uint8(image))
    figures["turned_masked"] = float(np.linalg.norm(judge.descriptor(render_masked, marks) - reference))
    figures["turned_recomputed"] = float(np.linalg.norm(
        judge.descriptor(to_uint8(image), marks) - judge.descriptor(pixels, fit.landmarks_2d)))
    figures["hair_share_photo"] = float(covered.mean())
    figures["hair_share_render"] = float(((hair_view[..., 1] > 0.5) & (head > 0.5)).sum() / max(head.sum(), 1))
    figures["turned"] = float(fit.record["turned"])
    figures["overlay"] = float(fit.record["overlay"])
    return figures


# ---------------------------------------------------------------------------------------------
# Contact sheet


def square_crop(image: np.ndarray, mask: np.ndarray, pad: float = 0.15) -> np.ndarray:
    """The square around ``mask``'s pixels, grown by ``pad`` each side, cut from ``image``
    (grey beyond its edges) and scaled to ``CELL``."""
    from PIL import Image

    ys, xs = np.nonzero(mask > 0.5)
    if len(xs) == 0:
        ys, xs = np.array([0, image.shape[0] - 1]), np.array([0, image.shape[1] - 1])
    cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    half = max(xs.max() - xs.min(), ys.max() - ys.min()) / 2 * (1 + 2 * pad) + 1
    x0, y0 = int(round(cx - half)), int(round(cy - half))
    side = int(round(2 * half))
    canvas = np.full((side, side, 3), 128, np.uint8)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, image.shape[1]), min(y0 + side, image.shape[0])
    canvas[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return np.asarray(Image.fromarray(canvas).resize((CELL, CELL), Image.LANCZOS))


def sheet_row(fit: Fit, photo: Path, views: Views) -> list[np.ndarray]:
    from PIL import Image

    pixels = np.array(load_photo(photo, max_side=max(fit.camera.width, fit.camera.height)).pixels)
    front, front_mask, _ = views.render(fit, fit.texture, 0.0)
    cells = [square_crop(pixels, front_mask), square_crop(fit.preview, front_mask)]
    for degrees in (TURN_SHEET, 180.0):
        image, mask, _ = views.render(fit, fit.texture, degrees)
        cells.append(square_crop(to_uint8(image), mask, pad=0.08))
    cells.append(np.asarray(Image.fromarray(fit.texture).resize((CELL, CELL), Image.LANCZOS)))
    return cells


def write_sheet(rows: list[tuple[str, list[np.ndarray]]], path: Path) -> int:
    """Rows of cells under a header, with each row's label on its first cell; returns bytes."""
    from PIL import Image, ImageDraw

    header = ["photo", "overlay", f"turned {TURN_SHEET:g}°", "from behind", "UV texture"]
    width = CELL * len(header)
    sheet = Image.new("RGB", (width, 18 + CELL * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, name in enumerate(header):
        draw.text((i * CELL + 4, 3), name, fill=(0, 0, 0))
    for r, (label, cells) in enumerate(rows):
        for c, cell in enumerate(cells):
            sheet.paste(Image.fromarray(cell), (c * CELL, 18 + r * CELL))
        box = draw.textbbox((3, 18 + r * CELL + 2), label)
        draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
        draw.text((3, 18 + r * CELL + 2), label, fill=(255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    if path.stat().st_size > SHEET_LIMIT:  # photos do not compress well: 256 colours do
        sheet.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    return path.stat().st_size


# ---------------------------------------------------------------------------------------------
# The table


def mean(values: list[float | None]) -> float:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(kept)) if kept else float("nan")


def fmt(value: float, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {key: mean([r.get(key) for r in rows]) for key in (
        "foreign", "sharpness", "sharpness_face", "sharpness_skin", "seam", "seam_photo", "turned", "turned_masked",
        "overlay")}


HEADER = (f"{'config':<7} | {'n':>2} | {'foreign':>7} | {'vs photo':>8} | {'sharp chart':>11} | {'x photo':>7} | "
          f"{'x gan':>5} | {'sharp face':>10} | {'x photo':>7} | {'x gan':>5} | {'sharp skin':>10} | {'x photo':>7} | "
          f"{'x gan':>5} | {'seam':>5} | {'turned 25°':>10} | "
          f"{'masked':>6} | {'Δ masked':>8}")


def table_rows(summary: dict[str, dict[str, float]], n: dict[str, int]) -> tuple[list[str], list[str]]:
    """Text and Markdown rows of one photo group."""
    base = summary.get(BASELINE)
    gan = summary.get(GAN)
    text, md = [], []
    for name, s in summary.items():
        cut = s["foreign"] / base["foreign"] - 1 if base and base["foreign"] > 0 else float("nan")

        def ratio(key: str, other: dict[str, float] | None) -> str:
            return fmt(s[key] / other[key], ".2f") if other else "-"

        delta = s["turned_masked"] - base["turned_masked"] if base else float("nan")
        cells = [name, str(n[name]), fmt(100 * s["foreign"], ".2f") + "%", fmt(100 * cut, "+.0f") + "%" if base else "-",
                 fmt(1000 * s["sharpness"], ".3f"), ratio("sharpness", base), ratio("sharpness", gan),
                 fmt(1000 * s["sharpness_face"], ".3f"), ratio("sharpness_face", base), ratio("sharpness_face", gan),
                 fmt(1000 * s["sharpness_skin"], ".3f"), ratio("sharpness_skin", base), ratio("sharpness_skin", gan),
                 fmt(s["seam"], ".2f"), fmt(s["turned"], ".3f"), fmt(s["turned_masked"], ".3f"), fmt(delta, "+.3f")]
        widths = (7, 2, 7, 8, 11, 7, 5, 10, 7, 5, 10, 7, 5, 5, 10, 6, 8)
        text.append(" | ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths))))
        md.append("| " + " | ".join(cells) + " |")
    return text, md


def verdicts(candidate: str, groups: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Each issue 17 target for ``candidate``, met or not."""
    lines = []
    for group, summary in groups.items():
        s, base, gan = summary.get(candidate), summary.get(BASELINE), summary.get(GAN)
        if s is None or base is None:
            continue
        cut = 1 - s["foreign"] / base["foreign"] if base["foreign"] > 0 else float("nan")
        lines.append(f"{group}: foreign colour {100 * cut:.0f}% less than photo (target: at least 80% less): "
                     f"{'MET' if cut >= 0.8 else 'NOT met'}")
        for key, where in (("sharpness", "face chart"), ("sharpness_face", "face inside the landmarks"),
                           ("sharpness_skin", "face's skin seen squarely")):
            lines.append(f"{group}: sharpness on the {where} {s[key] / base[key]:.2f}x photo (target >= 1): "
                         f"{'MET' if s[key] >= base[key] else 'NOT met'}"
                         + (f"; {s[key] / gan[key]:.2f}x gan (target >= 2): "
                            f"{'MET' if s[key] >= 2 * gan[key] else 'NOT met'}" if gan else "; gan not run"))
        if math.isfinite(s["seam"]):
            lines.append(f"{group}: seam ratio {s['seam']:.2f} (no step: near 1; we call <= 1.5 no step): "
                         f"{'MET' if s['seam'] <= 1.5 else 'NOT met'} (the photo texture, which has no seam, scores "
                         f"{fmt(s['seam_photo'] if math.isfinite(s['seam_photo']) else base['seam'], '.2f')} "
                         "on the same contour)")
        delta = s["turned_masked"] - base["turned_masked"]
        lines.append(f"{group}: identity, masked turned {delta:+.3f} vs photo (target <= +0.010): "
                     f"{'MET' if delta <= 0.01 else 'NOT met'} (unmasked {s['turned'] - base['turned']:+.3f})")
    return [f"{candidate} against issue 17's targets:"] + ["  " + line for line in lines]


def parse_configs(text: str) -> list[Config]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    known = {c.name: c for c in CONFIGS}
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise GanfitError(f"--configs {text}: expected a comma-separated list of {', '.join(known)}")
    return [known[n] for n in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default=",".join(c.name for c in CONFIGS),
                        help="comma-separated configurations (default all; one this engine lacks is skipped with a note)")
    parser.add_argument("--photos-limit", type=int, default=None, help="only the first N photos of each group")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="write the table between <!-- texture-quality --> markers in this file")
    parser.add_argument("--sheet", type=Path, default=SHEET, help="contact sheet PNG (public photos only)")
    parser.add_argument("--no-sheet", action="store_true", help="no contact sheet")
    parser.add_argument("--no-cache", action="store_true", help="fit everything again (and refresh the cache)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    notes: list[str] = []
    try:
        configs = parse_configs(args.configs)
        if args.photos_limit is not None and args.photos_limit < 1:
            raise GanfitError(f"--photos-limit {args.photos_limit}: expected a whole number of at least 1")
        if not UTKFACE.is_dir():
            raise GanfitError(f"{UTKFACE}: no such folder; UTKFace lives in ../shared/data/utkface/crop_part1")
        settings: dict[str, FitSettings] = {}
        for config in configs:
            made = settings_of(config, args.device)
            if made is None:
                notes.append(f"{config.name} skipped: this engine has no {config.needs} "
                             f"(--{next(iter(config.options)).replace('_', '-')} not landed)")
            else:
                settings[config.name] = made
        if not settings:
            raise GanfitError("none of the chosen configurations is available in this engine")
        groups_photos = {"UTKFace 20": utkface_photos(), "public": public_photos()}
        if args.photos_limit:
            groups_photos = {g: p[:args.photos_limit] for g, p in groups_photos.items()}
        missing = [p for ps in groups_photos.values() for p in ps if not p.is_file()]
        if missing:
            raise GanfitError(f"{missing[0]}: photo not found")
    except GanfitError as exc:
        print(f"texture_quality: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("GANFIT_THREADS") != "1":
        print("texture_quality: note: GANFIT_THREADS is not 1", file=sys.stderr)
    for note in notes:
        print(f"texture_quality: {note}", file=sys.stderr)
    started = time.perf_counter()
    fitter, views = Fitter(use_cache=not args.no_cache), Views()
    per_photo: dict[str, dict[str, list[dict[str, Any]]]] = {}
    fits: dict[tuple[str, str], Fit] = {}
    skipped: list[str] = []
    for group, photos in groups_photos.items():
        per_photo[group] = {name: [] for name in settings}
        for photo in photos:
            got = {name: fitter.fit(name, s, photo) for name, s in settings.items()}
            reasons = [g for g in got.values() if isinstance(g, str)]
            if reasons:
                skipped.append(f"{photo.name} ({reasons[0].split(': ', 1)[-1][:60]})")
                print(f"  skip {photo.name}: {reasons[0]}", file=sys.stderr, flush=True)
                continue
            for name, fit in got.items():
                assert isinstance(fit, Fit)
                config = next(c for c in configs if c.name == name)
                row = {"photo": photo.name, **measure(fit, photo, config, views, fitter.judge)}
                per_photo[group][name].append(row)
                if group == "public":
                    fits[(name, photo.name)] = fit
            # The reference for a seam on the result's own weight: the photo texture on the same pairs.
            base_fit = got.get(BASELINE)
            for name, fit in got.items():
                if name != BASELINE and isinstance(fit, Fit) and isinstance(base_fit, Fit) and fit.photo_weight is not None:
                    per_photo[group][name][-1]["seam_photo"] = seam_ratio(
                        base_fit.texture, fit.photo_weight, skin_uv_masks(base_fit.texture.shape[0]).head_skin)
            print(f"  {photo.name[:32]:32s} " + "  ".join(
                f"{n}: fc {100 * per_photo[group][n][-1]['foreign']:.1f}% tm {per_photo[group][n][-1]['turned_masked']:.3f}"
                for n in settings), file=sys.stderr, flush=True)

    summaries = {g: {n: summarise(rows) for n, rows in by.items() if rows} for g, by in per_photo.items()}
    counts = {g: {n: len(rows) for n, rows in by.items()} for g, by in per_photo.items()}
    candidate = next((c for c in CANDIDATES if c in settings), None)
    lines = [
        f"Texture quality (issue 17), {MODE} fits; engine commit {COMMIT} (sources {ENGINE}); GANFIT_THREADS={os.environ.get('GANFIT_THREADS', 'unset')}",
        f"foreign: share of head-skin texels > {FOREIGN_SIGMAS:g} robust SDs (CIELAB) from the inner face's skin; "
        "vs photo: change against today's default",
        "sharp chart / sharp face: mean squared Laplacian of the luminance (x 1000) on the face chart / on the face "
        "inside the landmarks (jaw, brows raised 10%); sharp skin: the same face region where the photo shows skin "
        "seen squarely (projection confidence and segmentation skin > 0.9); x photo, x gan: ratios",
        "seam: gradient energy on the photo/model boundary / inside each side (1 = no step); photo and gan have no "
        "such boundary: theirs is the same contour on their own texture (for photo: the photo's own edges there)",
        f"turned {TURN_DEGREES:g}°: dlib distance photo -> turned render; masked: hair and headwear grey in both; "
        "Δ masked: against today's default",
    ]
    markdown = ["| photos | config | n | foreign colour | vs photo | sharpness, face chart (x1000) | x photo | x gan | "
                "sharpness, face inside landmarks (x1000) | x photo | x gan | sharpness, face skin seen squarely (x1000) | "
                f"x photo | x gan | seam | turned {TURN_DEGREES:g}° | masked | Δ masked |", "|---|---|" + "---:|" * 16]
    for group, summary in summaries.items():
        text, md = table_rows(summary, counts[group])
        lines += ["", group, HEADER, "-" * len(HEADER), *text]
        markdown += [f"| {group} " + row for row in md]
    boundaries = sorted({r["seam_boundary"] for by in per_photo.values() for rows in by.values() for r in rows
                         if r["seam_boundary"]})
    if boundaries:
        lines.append("seam boundary from: " + ", ".join(boundaries))
    if candidate:
        lines += [""] + verdicts(candidate, summaries)
    likeness, pairs = cross_photo_likeness(fits, groups_photos["public"], views, fitter.judge)
    likeness_line = None
    if pairs:
        likeness_line = (f"likeness to other photos of the same person (dlib distance of the head turned "
                         f"{CROSS_DEGREES:g}° to the person's other photos; {pairs} pairs, lower is closer): "
                         + ", ".join(f"{n} {d:.3f}" for n, d in likeness.items()))
        lines.append(likeness_line)
    lines += [f"note: {n}" for n in notes]
    if skipped:
        lines.append("photos without a usable face (left out of every config): " + ", ".join(skipped))
    sheet_note = None
    if not args.no_sheet and candidate and BASELINE in settings:
        rows = []
        for photo in public_photos()[:args.photos_limit] if args.photos_limit else public_photos():
            for name in (BASELINE, candidate):
                if (name, photo.name) in fits:
                    rows.append((f"{photo.stem} / {name}", sheet_row(fits[(name, photo.name)], photo, views)))
        size = write_sheet(rows, args.sheet)
        sheet_note = f"contact sheet: {args.sheet.relative_to(ROOT) if args.sheet.is_relative_to(ROOT) else args.sheet} " \
                     f"({len(rows)} rows: {BASELINE} and {candidate} per public photo, {size / 1e6:.2f} MB)"
        lines.append(sheet_note)
    lines.append(f"({fitter.fresh} fits run now, the rest from the cache; {time.perf_counter() - started:.0f} s)")
    publish("texture_quality", lines)
    (RESULTS / "texture_quality.json").write_text(json.dumps({
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": COMMIT,
        "threads": os.environ.get("GANFIT_THREADS"), "foreign_sigmas": FOREIGN_SIGMAS,
        "configs": {n: next(c for c in configs if c.name == n).options for n in settings}, "notes": notes,
        "summary": summaries, "skipped": skipped, "photos": per_photo,
        "cross_photo_likeness": {"degrees": CROSS_DEGREES, "pairs": pairs, "distance": likeness},
    }, indent=1))
    if args.markdown:
        stamp = (f"Written {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by "
                 f"`benchmarks/texture_quality.py`, engine commit {COMMIT}, GANFIT_THREADS="
                 f"{os.environ.get('GANFIT_THREADS', 'unset')}." + "".join(f" Note: {n}." for n in notes))
        block = markdown + ["", stamp]
        if candidate:
            block += ["", "```", *verdicts(candidate, summaries), *([likeness_line] if likeness_line else []), "```"]
        replace_block(args.markdown, "texture-quality", block)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except GanfitError as exc:
        print(f"texture_quality: {exc}", file=sys.stderr)
        sys.exit(1)
