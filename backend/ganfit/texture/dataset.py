"""The UV texture set builder: ``ganfit texture-dataset --images DIR --out DIR`` (issue 5).

Why it exists: no texture prior can be downloaded, so the project learns its own (paper 3.1)
from photos projected into UV space. Each photo is fitted (landmarks and lighting by default,
the full objective with ``--fit-steps``), projected into the head's UV map with per-texel
visibility, divided by the fitted shading (an albedo estimate), filled from the mirror side where
hidden, and written with a confidence map.

The output folder is what ``ganfit.texture.model.UvTextureSet`` reads (docs/texture-dataset.md):

- ``<key>.png``: albedo, (S, S) RGB uint8, row 0 is v = 1;
- ``<key>_conf.png``: confidence, (S, S) grey uint8, 255 = seen in the photo (directly or at
  its mirror point), 0 = filled;
- ``records/<key>.json``: one record per photo, success or failure with its reason;
- ``split.json``: ``train``/``test`` keys (a hash of the file name holds out ``test_fraction``,
  plus the objective's 20 test photos);
- ``manifest.json``: configuration, counts, engine version and the data licence.

``<key>`` is the photo's file stem (``a.jpg`` -> ``a``), with the extension appended when two
photos share a stem or the stem ends in ``_conf``.

Builds are resumable (a photo is skipped when its record exists, and for a success both PNGs),
parallel over ``spawn`` processes (one model set and one torch thread each, so results do not
depend on the worker count), and every file is written atomically (temp + rename), so an
interrupted build never leaves half a file behind.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ganfit import __version__
from ganfit.errors import GanfitError, InputImageError, NoFaceError, OutputError
from ganfit.io.atomic import atomic_file

if TYPE_CHECKING:
    from ganfit.fit.reconstruct import Reconstructor
    from ganfit.fit.settings import FitSettings
    from ganfit.io.images import Photo
    from ganfit.io.result import Reconstruction

__all__ = [
    "BuildConfig",
    "BuildInterrupted",
    "Summary",
    "build_texture_dataset",
    "list_photos",
    "held_out",
    "register",
    "run",
    "main",
]

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "ganfit-texture-set"
MANIFEST_VERSION = 1
MANIFEST_JSON = "manifest.json"
SPLIT_JSON = "split.json"
RECORDS_DIR = "records"
CONFIDENCE_SUFFIX = "_conf"  # the same as ganfit.texture.model.CONFIDENCE_SUFFIX
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

EXIT_OK = 0
EXIT_NONE_SUCCEEDED = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

LICENCE_NOTE = (
    "The UV maps are derived from the input photos and carry their licence. UTKFace "
    "(https://susanqq.github.io/UTKFace/) is for non-commercial research only; models trained "
    "on it must say so. The landmarks come from dlib's 68-point model (iBUG 300-W data, not "
    "cleared for commercial use). Never commit the photos or their UV maps to the repository."
)

#: The objective benchmark's 20 UTKFace fitting photos, by file name only (the photos live in
#: ../shared/data/utkface/crop_part1 under a non-commercial research licence and are never
#: committed): two per gender (0 male, 1 female) and race (0-4) code of UTKFace's file names,
#: ages 20-70, the first in a seeded shuffle that dlib finds a face in. benchmarks/
#: identity_distance.py and texture_prior_fits.py fit them in this order; they always go to the
#: test split, so the fitting comparisons never see a texture prior trained on their own faces.
OBJECTIVE_TEST_PHOTOS: tuple[str, ...] = (
    "39_0_0_20170104204717955.jpg.chip.jpg", "57_0_0_20170104212740101.jpg.chip.jpg",
    "25_0_1_20170103180757928.jpg.chip.jpg", "56_0_1_20170111211502304.jpg.chip.jpg",
    "27_0_2_20161219192534211.jpg.chip.jpg", "45_0_2_20170105173303117.jpg.chip.jpg",
    "61_0_3_20170109150814971.jpg.chip.jpg", "59_0_3_20170104212824964.jpg.chip.jpg",
    "24_0_4_20170103210052027.jpg.chip.jpg", "29_0_4_20170104200952009.jpg.chip.jpg",
    "38_1_0_20170111182452859.jpg.chip.jpg", "53_1_0_20170105171816333.jpg.chip.jpg",
    "30_1_1_20170110120856819.jpg.chip.jpg", "48_1_1_20170110120129624.jpg.chip.jpg",
    "20_1_2_20170104020725236.jpg.chip.jpg", "28_1_2_20170105162418251.jpg.chip.jpg",
    "24_1_3_20170104222526663.jpg.chip.jpg", "25_1_3_20170104222454999.jpg.chip.jpg",
    "34_1_4_20170103182156641.jpg.chip.jpg", "24_1_4_20170104005617062.jpg.chip.jpg",
)


# --------------------------------------------------------------------------------------------
# Configuration and results


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides a photo's output files (a resumed build must use the same).

    Defaults are for thousands of photos: the landmark-only fit (``fit_steps=0``) with 200
    landmark steps and the lighting rendered at 128 px, which changes the albedo by under
    1.5/255 on average from the interactive defaults (300 steps, 224 px) at about 0.7x the time
    (docs/texture-dataset.md).
    """

    texture_size: int = 256
    fit_steps: int = 0  # full-objective steps; 0 = the landmark-only fit
    landmark_steps: int = 200
    lighting_steps: int = 80
    render_size: int | None = None  # None: 128 for the landmark-only fit, the fit default otherwise
    seed: int = 0
    max_landmark_error: float = 0.1  # fits worse than this (fraction of the eye-corner distance) fail
    device: str = "cpu"  # not part of the resume check: any device gives a valid texture

    def fit_settings(self) -> "FitSettings":
        """The ``FitSettings`` each photo is fitted with."""
        from ganfit.fit.settings import FitSettings

        base = FitSettings()
        render = self.render_size or (128 if self.fit_steps == 0 else base.joint.render_size)
        # The Reconstructor's own texture is only used by the full objective (its start value);
        # the landmark-only fit keeps it tiny, since this module projects its own at full size.
        internal_texture = self.texture_size if self.fit_steps > 0 else 16
        return FitSettings(
            landmark=replace(base.landmark, steps=self.landmark_steps),
            appearance=replace(base.appearance, steps=self.lighting_steps, texture_size=internal_texture),
            joint=replace(base.joint, steps=self.fit_steps, render_size=render),
            seed=self.seed,
            device=self.device,
        )

    def resume_key(self) -> dict[str, Any]:
        """The part of the configuration a resumed build must match."""
        data = asdict(self)
        data.pop("device")
        return data


@dataclass(frozen=True)
class PhotoTask:
    """One photo to process: its file, its output key, and how often a worker died on it."""

    path: Path
    key: str
    attempt: int = 0


@dataclass
class Summary:
    """Counts of a build over the whole set (earlier runs included) and of this run."""

    out_dir: Path
    total: int  # photos in the set (after --limit)
    skipped: int  # already complete before this run
    ok: int  # successes in the set
    failed: int  # failures in the set
    new_ok: int = 0  # successes this run
    new_failed: int = 0  # failures this run
    reasons: dict[str, int] = field(default_factory=dict)  # failures in the set by reason
    seconds: float = 0.0  # wall time of this run
    interrupted: bool = False
    train: int = 0
    test: int = 0

    @property
    def processed(self) -> int:
        return self.new_ok + self.new_failed

    @property
    def photos_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """'9,512 ok, 268 failed: 201 no face found, 67 face too small'."""
        text = f"{self.ok:,} ok, {self.failed:,} failed"
        if self.reasons:
            ordered = sorted(self.reasons.items(), key=lambda item: (-item[1], item[0]))
            text += ": " + ", ".join(f"{count:,} {reason}" for reason, count in ordered)
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total, "ok": self.ok, "failed": self.failed, "failure_reasons": self.reasons,
            "this_run": {
                "skipped": self.skipped, "ok": self.new_ok, "failed": self.new_failed,
                "seconds": round(self.seconds, 2), "photos_per_second": round(self.photos_per_second, 4),
                "interrupted": self.interrupted,
            },
            "train": self.train, "test": self.test,
        }


class BuildInterrupted(KeyboardInterrupt):
    """Ctrl-C during a build: every finished photo is saved and no partial file is left."""

    def __init__(self, summary: Summary):
        super().__init__("texture set build interrupted")
        self.summary = summary


# --------------------------------------------------------------------------------------------
# Inputs, keys and the split


def list_photos(images_dir: Path) -> list[Path]:
    """The photo files directly inside ``images_dir`` (by extension, hidden files skipped), sorted."""
    return sorted(
        p for p in images_dir.iterdir()
        if p.suffix.lower() in PHOTO_SUFFIXES and not p.name.startswith(".") and not p.is_dir()
    )


def photo_keys(photos: Sequence[Path]) -> list[str]:
    """Output name per photo: the stem, plus ``-<ext>`` where stems repeat or end in ``_conf``
    (which the reader would take for a confidence map)."""
    stems = Counter(p.stem for p in photos)
    keys = []
    for p in photos:
        clash = stems[p.stem] > 1 or p.stem.endswith(CONFIDENCE_SUFFIX)
        keys.append(f"{p.stem}-{p.suffix.lstrip('.')}" if clash else p.stem)
    return keys


def held_out(name: str, test_fraction: float) -> bool:
    """Whether a photo (by file name) is in the test split: a hash of its name, so the split
    does not depend on which photos were processed, in what order, or on how many there are."""
    if name in OBJECTIVE_TEST_PHOTOS:
        return True
    digest = int(hashlib.sha1(name.encode("utf-8")).hexdigest()[:8], 16)
    return digest / 2**32 < test_fraction


def processing_order(key: str) -> int:
    """Sort key for the work queue: a hash of the photo's key, so photos are fitted in an order
    that is fixed but unrelated to their names. Why: file names often carry attributes (UTKFace's
    start with the age), and in name order a set stopped part-way is a skewed sample of the
    folder; in hash order any prefix is a uniform one. Salted so it is independent of
    ``held_out``'s hash."""
    return int(hashlib.sha1(f"order:{key}".encode("utf-8")).hexdigest()[:12], 16)


# --------------------------------------------------------------------------------------------
# Per-photo work (runs in the worker processes, or in-process with one worker)


def _failure_reason(exc: BaseException) -> str:
    """A short category for the summary; the record keeps the full message."""
    message = str(exc)
    if isinstance(exc, NoFaceError):
        return "no face found"
    if isinstance(exc, InputImageError):
        if "too small" in message:
            return "face too small"
        if "face" in message and "found" in message:
            return "face not found"
        return "unreadable image"
    if isinstance(exc, PoorFitError):
        return "poor landmark fit"
    if isinstance(exc, GanfitError):
        return "fit failed"
    return f"internal error ({type(exc).__name__})"


class PoorFitError(GanfitError):
    """The fit converged far from the photo's landmarks: its texture would smear the face."""


class PhotoFitter:
    """One process's models and the work for one photo: fit, project, check, write."""

    def __init__(self, config: BuildConfig, out_dir: Path, reconstructor: "Reconstructor | None" = None):
        from ganfit.fit.reconstruct import Reconstructor

        self.config = config
        self.out_dir = out_dir
        self.reconstructor = reconstructor or Reconstructor(config.fit_settings())
        self._region_mask: tuple[np.ndarray, str] | None = None

    def process(self, task: PhotoTask) -> dict[str, Any]:
        """Fit one photo and write its files; returns its record (also written to records/).

        User-level failures (no face, unreadable file, poor fit) and unexpected errors in one
        photo become failure records: one bad photo must not stop a build of thousands.
        """
        from ganfit.io.images import load_photo

        started = time.perf_counter()
        record: dict[str, Any] = {"photo": task.path.name, "key": task.key}
        try:
            photo = load_photo(task.path, max_side=self.reconstructor.settings.max_photo_side)
            result = self.reconstructor.reconstruct_photo(photo)
            if not result.landmark_error_iod <= self.config.max_landmark_error:
                raise PoorFitError(
                    f"{task.path.name}: the fit misses the landmarks by {result.landmark_error_iod:.1%} of the "
                    f"eye-corner distance (limit {self.config.max_landmark_error:.0%})"
                )
            albedo, confidence = self._project(photo, result)
            self._write_png(albedo, self.out_dir / f"{task.key}.png")
            self._write_png(confidence, self.out_dir / f"{task.key}{CONFIDENCE_SUFFIX}.png")
            record.update(_success_fields(result, albedo, confidence, *self._region()))
        except GanfitError as exc:
            record.update(status="failed", reason=_failure_reason(exc), message=str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug on one photo is recorded, with its traceback
            log.error("%s: unexpected error\n%s", task.path.name, traceback.format_exc())
            record.update(status="failed", reason=_failure_reason(exc), message=f"{type(exc).__name__}: {exc}")
        record["seconds"] = round(time.perf_counter() - started, 3)
        write_record(self.out_dir, task.key, record)
        return record

    def _project(self, photo: "Photo", result: "Reconstruction") -> tuple[np.ndarray, np.ndarray]:
        """Albedo (S, S, 3) and confidence (S, S) uint8 of the fitted photo in the model's UVs."""
        import torch

        from ganfit.fit.texture_projection import project_photo_to_uv
        from ganfit.render import Camera, PointLight

        rec = self.reconstructor
        dev, dt = rec.device, rec.dtype

        def vec(values: Any) -> torch.Tensor:
            return torch.as_tensor(np.asarray(values, dtype=np.float32), device=dev, dtype=dt)

        cam, light = result.camera, result.light
        camera = Camera(vec(cam.position)[None], vec(cam.look_at)[None], vec(cam.up)[None], vec([cam.focal]))
        lamp = PointLight(vec(light.position)[None], vec(light.colour)[None], vec(light.ambient)[None])
        pixels = torch.from_numpy(np.array(photo.pixels)).to(dev).permute(2, 0, 1).to(dt) / 255.0
        model = rec.model
        uv = project_photo_to_uv(
            pixels, vec(result.vertices), model.faces, model.uvs, model.uv_faces, camera,
            rec.mirror_index, self.config.texture_size, lamp,
        )
        albedo = (uv.image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        confidence = (uv.confidence[0].clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        return albedo, confidence

    def _region(self) -> tuple[np.ndarray, str]:
        """The texels whose observed share the record reports: the face chart of the head's UV
        layout when the model has one (ganfit.texture.uv_layout), else every texel a UV triangle
        covers (the rest of the map is fill either way)."""
        if self._region_mask is None:
            import torch

            from ganfit.fit.texture_projection import uv_fragments

            model = self.reconstructor.model
            size = self.config.texture_size
            if model.uv_charts.numel() > 0 and "face" in model.uv_chart_names:
                from ganfit.texture.uv_layout import face_region_mask

                self._region_mask = (face_region_mask(size, model).cpu().numpy() > 0, "face")
            else:
                frags = uv_fragments(model.uvs, model.uv_faces, size)
                ones = torch.ones(frags.pixel_index.shape[0], 1, dtype=model.uvs.dtype, device=model.uvs.device)
                self._region_mask = (frags.scatter(ones)[0, 0].cpu().numpy() > 0, "uv")
        return self._region_mask

    @staticmethod
    def _write_png(pixels: np.ndarray, target: Path) -> None:
        from PIL import Image

        with atomic_file(target, force=True) as tmp:
            Image.fromarray(np.ascontiguousarray(pixels)).save(tmp, format="PNG")


def _success_fields(result: "Reconstruction", albedo: np.ndarray, confidence: np.ndarray, region: np.ndarray,
                    region_name: str) -> dict[str, Any]:
    """The small per-photo record of a success (what a data loader may filter on)."""
    cam, light = result.camera, result.light
    seen = (confidence >= 128) & region
    # Albedo that hit 1.0 in some channel: the photo was brighter than the fitted light explains
    # (over-exposure, or light and albedo traded scale); such texels lost their true colour.
    clipped = (albedo[seen].max(-1) >= 255).mean() if seen.any() else 0.0
    return {
        "status": "ok",
        "landmark_error_iod": round(float(result.landmark_error_iod), 5),
        # share of the region (face chart, or all UV triangles) seen with confidence >= 0.5
        "observed_fraction": round(float(seen.sum() / max(int(region.sum()), 1)), 4),
        "observed_region": region_name,
        "clipped_fraction": round(float(clipped), 4),  # of the seen texels of the region
        "light": {k: [round(float(x), 5) for x in getattr(light, k)] for k in ("position", "colour", "ambient")},
        "camera": {
            **{k: [round(float(x), 5) for x in getattr(cam, k)] for k in ("position", "look_at", "up")},
            "focal": round(float(cam.focal), 5), "width": cam.width, "height": cam.height,
        },
    }


def write_record(out_dir: Path, key: str, record: dict[str, Any]) -> None:
    """records/<key>.json, written last for a photo: its presence marks the photo done."""
    with atomic_file(out_dir / RECORDS_DIR / f"{key}.json", force=True) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def read_record(out_dir: Path, key: str) -> dict[str, Any] | None:
    """The record of a finished photo, or None when it has to be (re)done."""
    try:
        record = json.loads((out_dir / RECORDS_DIR / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") not in ("ok", "failed"):
        return None
    if record["status"] == "ok" and not (
        (out_dir / f"{key}.png").is_file() and (out_dir / f"{key}{CONFIDENCE_SUFFIX}.png").is_file()
    ):
        return None
    return record


# Worker-process state: one PhotoFitter per process, made by the pool's initializer.
_WORKER: PhotoFitter | None = None


def _init_worker(config: BuildConfig, out_dir: Path, log_level: int) -> None:
    """Load the models once per worker; Ctrl-C is the main process's to handle (it lets the
    photos in progress finish), and one torch thread per worker keeps results identical for any
    worker count."""
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    _WORKER = PhotoFitter(config, out_dir)


def _work(task: PhotoTask) -> dict[str, Any]:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.process(task)


# --------------------------------------------------------------------------------------------
# The build


def _check_arguments(images_dir: Path, out_dir: Path, config: BuildConfig, workers: int, limit: int | None,
                     test_fraction: float) -> None:
    """Bad arguments fail before any model loads, with one line that says what to do."""
    if not images_dir.exists():
        raise GanfitError(f"--images {images_dir}: folder not found; check the path")
    if not images_dir.is_dir():
        raise GanfitError(f"--images {images_dir}: is a file, not a folder of photos")
    if out_dir.exists() and not out_dir.is_dir():
        raise GanfitError(f"--out {out_dir}: is a file, not a folder; choose another output folder")
    if out_dir.resolve() == images_dir.resolve():
        raise GanfitError(f"--out {out_dir}: is the photo folder; choose a separate output folder")
    if workers < 1:
        raise GanfitError(f"--workers {workers}: must be 1 or more")
    if limit is not None and limit < 1:
        raise GanfitError(f"--limit {limit}: must be 1 or more")
    if not 16 <= config.texture_size <= 4096:
        raise GanfitError(f"--texture-size {config.texture_size}: choose between 16 and 4096")
    if config.fit_steps < 0:
        raise GanfitError(f"--fit-steps {config.fit_steps}: must be 0 (landmark-only) or more")
    for name, value in (("--steps", config.landmark_steps), ("--lighting-steps", config.lighting_steps)):
        if value < 1:
            raise GanfitError(f"{name} {value}: must be 1 or more")
    if config.render_size is not None and not 32 <= config.render_size <= 1024:
        raise GanfitError(f"--render-size {config.render_size}: choose between 32 and 1024")
    if not config.max_landmark_error > 0:
        raise GanfitError(f"--max-landmark-error {config.max_landmark_error}: must be a positive fraction")
    if not 0 <= test_fraction < 1:
        raise GanfitError(f"--test-fraction {test_fraction}: choose a fraction from 0 up to (not including) 1")


def _clean_partials(out_dir: Path) -> int:
    """Remove temporary files an earlier run left when it was killed mid-write."""
    removed = 0
    for folder in (out_dir, out_dir / RECORDS_DIR):
        if folder.is_dir():
            for path in folder.glob(".*.partial*"):
                try:
                    path.unlink()
                    removed += 1
                except OSError:
                    pass
    return removed


def _model_fingerprint() -> dict[str, Any]:
    """Which head and UV layout the textures are in (a resumed build must use the same)."""
    from ganfit.models.shape_model import load_default_shape_model

    model = load_default_shape_model()
    digest = hashlib.sha1()
    digest.update(model.uvs.cpu().numpy().astype(np.float32).tobytes())
    digest.update(model.uv_faces.cpu().numpy().astype(np.int64).tobytes())
    return {"shape_model": model.name, "uv_layout_sha1": digest.hexdigest()[:16]}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_file(path, force=True) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def _check_resume(out_dir: Path, expected: dict[str, Any]) -> None:
    """Refuse to mix textures made with another configuration into one set."""
    manifest = out_dir / MANIFEST_JSON
    if not manifest.is_file():
        if out_dir.is_dir() and any(p.suffix == ".png" for p in out_dir.iterdir()):
            raise GanfitError(f"--out {out_dir}: holds PNG files but no {MANIFEST_JSON}; choose an empty or new folder")
        return
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GanfitError(f"--out {out_dir}: {MANIFEST_JSON} is unreadable ({exc}); choose another folder") from None
    if data.get("format") != MANIFEST_FORMAT:
        raise GanfitError(f"--out {out_dir}: not a texture set folder; choose an empty or new folder")
    before = data.get("resume_key")
    if before != expected:
        changed = sorted(k for k in set(before or {}) | set(expected) if (before or {}).get(k) != expected.get(k))
        raise GanfitError(
            f"--out {out_dir}: was built with other settings ({', '.join(changed)}); "
            "use the same options to resume, or choose another output folder"
        )


def build_texture_dataset(
    images_dir: str | Path,
    out_dir: str | Path,
    config: BuildConfig = BuildConfig(),
    workers: int = 1,
    limit: int | None = None,
    test_fraction: float = 0.05,
    retry_failed: bool = False,
    progress: bool = True,
    log_level: int = logging.WARNING,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> Summary:
    """Build (or resume) the UV texture set of the photos in ``images_dir`` into ``out_dir``.

    Photos whose outputs are complete are skipped (failures too, unless ``retry_failed``).
    ``workers`` > 1 fits in that many ``spawn`` processes; 1 fits in this process. Raises
    ``GanfitError`` for bad arguments and ``BuildInterrupted`` (a KeyboardInterrupt carrying the
    summary so far) on Ctrl-C, after the photos in progress are saved.
    """
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    _check_arguments(images_dir, out_dir, config, workers, limit, test_fraction)
    photos = list_photos(images_dir)
    if not photos:
        raise GanfitError(
            f"--images {images_dir}: no photos ({', '.join(sorted(PHOTO_SUFFIXES))}) in this folder"
        )
    keys = photo_keys(photos)  # over the whole folder, so --limit does not change any key
    if limit is not None:
        photos, keys = photos[:limit], keys[:limit]
    if config.device != "cpu":
        from ganfit.fit.reconstruct import resolve_device

        resolve_device(config.device)  # a bad --device is an argument error, found before any work
    resume_key = {**config.resume_key(), **_model_fingerprint()}
    _check_resume(out_dir, resume_key)
    try:
        (out_dir / RECORDS_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--out {out_dir}: cannot create the folder ({exc.strerror}); choose another") from None
    if removed := _clean_partials(out_dir):
        log.info("removed %d temporary files of an interrupted run", removed)

    records: dict[str, dict[str, Any]] = {}
    todo: deque[PhotoTask] = deque()
    for path, key in zip(photos, keys):
        record = read_record(out_dir, key)
        if record is not None and not (retry_failed and record["status"] == "failed"):
            records[key] = record
        else:
            todo.append(PhotoTask(path, key))
    todo = deque(sorted(todo, key=lambda task: processing_order(task.key)))
    skipped = len(records)
    started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    manifest_base = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "engine_version": __version__,
        "images": str(images_dir.resolve()), "limit": limit, "resume_key": resume_key,
        "config": asdict(config), "fit_settings": config.fit_settings().to_dict(),
        "licence": LICENCE_NOTE, "started": started_at,
        "files": {
            "<key>.png": f"albedo, {config.texture_size}x{config.texture_size} RGB uint8, row 0 is v = 1",
            f"<key>{CONFIDENCE_SUFFIX}.png": "confidence, grey uint8: 255 seen in the photo, 0 filled",
            f"{RECORDS_DIR}/<key>.json": "per photo: status, failure reason, landmark error, light, camera, seconds",
            SPLIT_JSON: "train/test keys of the successful photos",
        },
    }
    _write_json(out_dir / MANIFEST_JSON, {**manifest_base, "status": "running"})
    log.info("%d photos: %d already done, %d to do", len(photos), skipped, len(todo))

    from tqdm import tqdm

    bar = tqdm(total=len(photos), initial=skipped, desc="texture set", unit="photo", disable=not progress,
               dynamic_ncols=True, smoothing=0.05)
    counts = Counter(r["status"] for r in records.values())
    new: Counter[str] = Counter()

    def finished(record: dict[str, Any]) -> None:
        records[record["key"]] = record
        counts[record["status"]] += 1
        new[record["status"]] += 1
        bar.update(1)
        bar.set_postfix(ok=counts["ok"], failed=counts["failed"], refresh=False)
        if record["status"] == "failed":
            log.info("%s: %s", record["photo"], record.get("message", record.get("reason")))
        if on_record is not None:
            on_record(record)

    clock = time.perf_counter()
    interrupted = False
    try:
        if workers == 1 or len(todo) <= 1:
            _run_in_process(todo, config, out_dir, finished)
        else:
            _run_in_pool(todo, config, out_dir, min(workers, len(todo)), log_level, finished, bar)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        _clean_partials(out_dir)
        seconds = time.perf_counter() - clock
    # Split and manifest describe the set as it stands, interrupted or not.
    summary = _finish(out_dir, photos, keys, records, skipped, new, seconds, interrupted, test_fraction,
                      manifest_base)
    if interrupted:
        raise BuildInterrupted(summary)
    return summary


def _run_in_process(todo: deque[PhotoTask], config: BuildConfig, out_dir: Path,
                    finished: Callable[[dict[str, Any]], None]) -> None:
    """One worker: this process, with one torch thread like a pool worker (same outputs)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fitter = PhotoFitter(config, out_dir)
        while todo:
            finished(fitter.process(todo.popleft()))
    finally:
        torch.set_num_threads(threads)


def _run_in_pool(todo: deque[PhotoTask], config: BuildConfig, out_dir: Path, workers: int, log_level: int,
                 finished: Callable[[dict[str, Any]], None], bar: Any) -> None:
    """Several spawn workers; a worker that dies (killed, out of memory, a crash in native code)
    costs the photos it held one retry, and a photo that breaks a worker twice is recorded as
    failed."""
    context = multiprocessing.get_context("spawn")
    broken_without_progress = 0
    while todo:
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                   initargs=(config, out_dir, log_level))
        inflight: dict[Future[dict[str, Any]], PhotoTask] = {}
        progressed = False
        try:
            try:
                while todo or inflight:
                    while todo and len(inflight) < 2 * workers:
                        task = todo.popleft()
                        inflight[pool.submit(_work, task)] = task
                    done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                    for future in done:
                        record = future.result()  # BrokenProcessPool when a worker died
                        inflight.pop(future)
                        progressed = True
                        finished(record)
            except KeyboardInterrupt:
                bar.write("ganfit: stopping after the photos in progress (Ctrl-C again to stop at once)",
                          file=sys.stderr)
                _drain(inflight, finished, pool)
                raise
        except BrokenProcessPool:
            pool.shutdown(wait=True, cancel_futures=True)
            broken_without_progress = 0 if progressed else broken_without_progress + 1
            if broken_without_progress >= 2:
                todo.extendleft(reversed(list(inflight.values())))
                raise GanfitError(
                    "the worker processes keep dying before finishing a photo (see the messages above); "
                    "run with --workers 1 to see the error directly"
                ) from None
            retry = []
            for task in inflight.values():
                if task.attempt >= 1:
                    finished(_crash_record(task, out_dir))
                else:
                    retry.append(replace(task, attempt=task.attempt + 1))
            log.warning("a worker process died; retrying the %d photos it may have held", len(retry))
            todo.extendleft(reversed(retry))
            continue
        pool.shutdown(wait=True)


def _drain(inflight: dict[Future[dict[str, Any]], PhotoTask], finished: Callable[[dict[str, Any]], None],
           pool: ProcessPoolExecutor) -> None:
    """After Ctrl-C: photos not yet handed to a worker are dropped, the ones in progress are
    kept (workers ignore SIGINT and finish them); a second Ctrl-C kills the workers (their
    temporary files are removed afterwards)."""
    try:
        for future in list(inflight):
            if future.cancel():  # still queued in this process: never started
                continue
            try:
                finished(future.result())
            except BrokenProcessPool:
                break
    except KeyboardInterrupt:
        for process in list(getattr(pool, "_processes", {}).values()):  # no public API before 3.14
            process.kill()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _crash_record(task: PhotoTask, out_dir: Path) -> dict[str, Any]:
    record = {
        "photo": task.path.name, "key": task.key, "status": "failed", "reason": "worker process died",
        "message": f"{task.path.name}: a worker process died twice while holding this photo (killed, out of "
                   "memory, or a crash in native code); rerun with --retry-failed",
        "seconds": 0.0,
    }
    write_record(out_dir, task.key, record)
    return record


def _finish(out_dir: Path, photos: list[Path], keys: list[str], records: dict[str, dict[str, Any]], skipped: int,
            new: Counter[str], seconds: float, interrupted: bool, test_fraction: float,
            manifest_base: dict[str, Any]) -> Summary:
    """Write split.json and manifest.json for the set as it stands; return the summary."""
    ok_names = [(p.name, k) for p, k in zip(photos, keys) if records.get(k, {}).get("status") == "ok"]
    test = [k for name, k in ok_names if held_out(name, test_fraction)]
    test_set = set(test)
    train = [k for _, k in ok_names if k not in test_set]
    failed = [records[k] for k in keys if records.get(k, {}).get("status") == "failed"]
    summary = Summary(
        out_dir=out_dir, total=len(photos), skipped=skipped, ok=len(ok_names), failed=len(failed),
        new_ok=new["ok"], new_failed=new["failed"], reasons=dict(Counter(r["reason"] for r in failed)),
        seconds=seconds, interrupted=interrupted, train=len(train), test=len(test),
    )
    _write_json(out_dir / SPLIT_JSON, {
        "rule": f"test: sha1(photo file name) in the lowest {test_fraction:g} of its range, plus the "
                "objective benchmark's 20 fitting photos (ganfit.texture.dataset.OBJECTIVE_TEST_PHOTOS)",
        "test_fraction": test_fraction, "train": train, "test": test,
    })
    seconds_ok = [r["seconds"] for r in records.values() if r.get("status") == "ok" and r.get("seconds")]
    _write_json(out_dir / MANIFEST_JSON, {
        **manifest_base,
        "status": "interrupted" if interrupted else ("complete" if len(records) == len(photos) else "partial"),
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "counts": summary.to_json(),
        "seconds_per_photo_median": round(float(np.median(seconds_ok)), 3) if seconds_ok else None,
        "summary": summary.line(),
        "failures": [{"photo": r["photo"], "reason": r["reason"], "message": r.get("message", "")} for r in failed],
    })
    return summary


# --------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``ganfit texture-dataset`` (shared by the ganfit CLI and ``main``)."""
    default = BuildConfig()
    parser.add_argument("--images", type=Path, required=True, metavar="DIR", help="folder of face photos (JPEG/PNG)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="output folder; rerunning the same command resumes it")
    parser.add_argument("--workers", type=int, default=_default_workers(), metavar="N",
                        help="parallel worker processes, one torch thread each (default: the CPU count, %(default)s)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N photos in name order")
    parser.add_argument("--texture-size", type=int, default=default.texture_size, metavar="S",
                        help="UV map size in pixels (default %(default)s)")
    parser.add_argument("--fit-steps", type=int, default=default.fit_steps, metavar="N",
                        help="full-objective steps per photo (default 0: the landmark-only fit, ~10x faster)")
    parser.add_argument("--steps", type=int, default=default.landmark_steps, metavar="N",
                        help="landmark-stage steps (default %(default)s)")
    parser.add_argument("--lighting-steps", type=int, default=default.lighting_steps, metavar="N",
                        help="lighting-stage steps (default %(default)s)")
    parser.add_argument("--render-size", type=int, default=None, metavar="PX",
                        help="face render size of the lighting and objective (default 128 landmark-only, else 224)")
    parser.add_argument("--max-landmark-error", type=float, default=default.max_landmark_error, metavar="F",
                        help="fail fits whose landmark error exceeds this fraction of the eye-corner distance "
                             "(default %(default)s)")
    parser.add_argument("--test-fraction", type=float, default=0.05, metavar="F",
                        help="share held out for split.json's test list, by a hash of the file name (default %(default)s)")
    parser.add_argument("--seed", type=int, default=default.seed, help="random seed (default %(default)s)")
    parser.add_argument("--device", default=default.device, help="cpu (default), cuda, cuda:N, mps or auto")
    parser.add_argument("--retry-failed", action="store_true", help="fit again the photos that failed before")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each failure and stage")


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``texture-dataset`` subcommand to the ganfit CLI's subparsers (dispatch with ``run``)."""
    parser = subparsers.add_parser(
        "texture-dataset", help="build a UV texture set (albedo + confidence maps) from a folder of face photos",
        description=__doc__.splitlines()[0],
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    return BuildConfig(
        texture_size=args.texture_size, fit_steps=args.fit_steps, landmark_steps=args.steps,
        lighting_steps=args.lighting_steps, render_size=args.render_size, seed=args.seed,
        max_landmark_error=args.max_landmark_error, device=args.device,
    )


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (a service manager, `kill`, a job scheduler) stops the build like Ctrl-C: the
    workers are shut down and the set stays resumable, instead of the parent vanishing and its
    workers running on."""
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """Run the subcommand: 0 when the set holds at least one texture, 1 when none succeeded,
    2 for bad arguments (one line on stderr), 130 on Ctrl-C or SIGTERM."""
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        summary = build_texture_dataset(
            args.images, args.out, config_from_args(args), workers=args.workers, limit=args.limit,
            test_fraction=args.test_fraction, retry_failed=args.retry_failed, progress=not args.quiet,
            log_level=logging.INFO if args.verbose else logging.WARNING,
        )
    except BuildInterrupted as stop:
        s = stop.summary
        print(f"ganfit: interrupted; {s.processed:,} photos done this run, none half-written. "
              f"Run the same command to resume. Set so far: {s.line()}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("ganfit: interrupted before the build started; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except GanfitError as exc:
        print(f"ganfit: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_USER_ERROR)
    rate = f"{summary.photos_per_second:.2f} photos/s" if summary.processed else "nothing new to do"
    print(f"{summary.out_dir}: {summary.line()} ({summary.processed:,} fitted this run in {summary.seconds:.0f} s, "
          f"{rate}; {summary.skipped:,} already done; split {summary.train:,} train / {summary.test:,} test)")
    if summary.failed:
        print(f"failure reasons per photo: {summary.out_dir / MANIFEST_JSON}", file=sys.stderr)
    return EXIT_OK if summary.ok > 0 else EXIT_NONE_SUCCEEDED


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ganfit.texture.dataset --images DIR --out DIR`` (the same as ``ganfit texture-dataset``)."""
    parser = argparse.ArgumentParser(prog="python -m ganfit.texture.dataset", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return run(args)


if __name__ == "__main__":
    # Run through the package's module, not __main__, so the spawned workers unpickle the same
    # classes and functions this process defined.
    from ganfit.texture.dataset import main as _main

    sys.exit(_main())
