"""Does the full objective make the reconstruction look like the person? (issue 4)

For each photo, two fits with the same settings except the joint stage: landmark-only (stage 1,
lighting, projected texture) and the full objective (paper 3.3-3.4). Each is judged by dlib
itself (dlib-bin's C++ network, not the project's PyTorch port), as the descriptor distance from
the photo to

- ``overlay``: the fitted render laid over the photo (dlib cuts both chips with the photo's
  landmarks), as the issue asks, and
- ``turned``: the head rendered 25 degrees to the side over grey (chip from the projected model
  landmarks): with a texture projected from the photo, the overlay mostly re-shows the photo;
  the turned view shows whether the 3D shape is right.

dlib calls two faces the same person below 0.6. Prints a table and writes
benchmarks/results/identity.txt (and, with ``--markdown FILE``, a Markdown table).

    python benchmarks/identity_distance.py [--device cuda] [--photos-limit N] [PHOTO ...]

``--save-landmarks FILE`` writes dlib's 68 landmarks of every photo to an .npz;
``--landmarks FILE`` uses them instead of running dlib's 100 MB landmark model (for a machine
that lacks it, such as the project's GPU box); detection and judging still use dlib.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from report import publish

from ganfit.face.detection import FaceDetector, default_detector, find_face
from ganfit.face.recognition import default_model_path
from ganfit.fit.joint_stage import random_view
from ganfit.fit.reconstruct import Reconstructor
from ganfit.fit.settings import AppearanceStageSettings, FitSettings, JointStageSettings
from ganfit.io.images import load_photo
from ganfit.io.result import Reconstruction
from ganfit.io.samples import SAMPLE_PHOTOS, sample_photo
from ganfit.render import Camera, PointLight
from ganfit.texture.dataset import OBJECTIVE_TEST_PHOTOS

ROOT = Path(__file__).resolve().parents[1]
UTKFACE = ROOT.parent / "shared" / "data" / "utkface" / "crop_part1"
TURN_DEGREES = 25.0
SAME_PERSON = 0.6


def utkface_test_photos() -> list[Path]:
    """The 20 UTKFace photos of the objective benchmark (``OBJECTIVE_TEST_PHOTOS``), in order."""
    return [UTKFACE / name for name in OBJECTIVE_TEST_PHOTOS]


def default_photos() -> list[Path]:
    return [sample_photo("grace_hopper"), sample_photo("astronaut")] + utkface_test_photos()


def choose_photos(given: list[Path], default: list[Path], limit: int | None, program: str) -> list[Path]:
    """The photos a benchmark runs on (``given`` or ``default``, the first ``limit``); a given
    name of a sample photo (``grace_hopper``, ``astronaut``) that is not a file is that sample. A
    missing one ends the program with a one-line message and exit status 2."""
    given = [sample_photo(str(p)) if not p.is_file() and str(p) in SAMPLE_PHOTOS else p for p in given]
    photos = (given or default)[:limit] if limit else (given or default)
    missing = [p for p in photos if not p.is_file()]
    if missing:
        print(f"{program}: {missing[0]}: not found (UTKFace lives in ../shared/data/utkface)", file=sys.stderr)
        raise SystemExit(2)
    return photos


class DlibJudge:
    """dlib's own descriptors of photos and renders, cut with given 68 landmarks."""

    def __init__(self) -> None:
        import dlib

        self.dlib = dlib
        self.model = dlib.face_recognition_model_v1(str(default_model_path()))

    def descriptor(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        dlib = self.dlib
        points = [dlib.point(int(round(x - 0.5)), int(round(y - 0.5))) for x, y in landmarks]
        xs, ys = landmarks[:, 0], landmarks[:, 1]
        rect = dlib.rectangle(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        shape = dlib.full_object_detection(rect, points)
        return np.array(self.model.compute_face_descriptor(np.ascontiguousarray(image), shape))


def turned_view(reconstructor: Reconstructor, result: Reconstruction, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """The fitted head turned by ``degrees`` (yaw) over grey at the photo's size, and its
    projected 68 landmarks."""
    dev = reconstructor.device
    cam = result.camera
    camera = Camera(*(torch.tensor(np.asarray(v)[None], dtype=torch.float32, device=dev) for v in (cam.position, cam.look_at, cam.up)),
                    focal=torch.tensor([cam.focal], dtype=torch.float32, device=dev))
    light = PointLight(*(torch.tensor(np.asarray(v)[None], dtype=torch.float32, device=dev) for v in (result.light.position, result.light.colour, result.light.ambient)))
    vertices = torch.from_numpy(result.vertices)[None].to(dev)
    centre = vertices.mean(1)
    view = random_view(camera, centre, math.radians(degrees), 0.0)
    texture = torch.from_numpy(result.texture).permute(2, 0, 1)[None].float().to(dev) / 255
    with torch.no_grad():
        out = reconstructor.renderer(vertices, texture, view, light, cam.height, cam.width, background=0.5)
        marks = view.project(vertices[:, torch.from_numpy(result.landmark_indices).long().to(dev)], cam.width, cam.height)[0, :, :2]
    image = (out.image[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    return image, marks.cpu().numpy()


def joint_settings(items: list[str]) -> JointStageSettings:
    """The joint stage's defaults with ``FIELD=VALUE`` overrides (the ``--joint`` option)."""
    overrides: dict[str, object] = {}
    for item in items:
        key, _, value = item.partition("=")
        kind = type(getattr(JointStageSettings(), key))
        overrides[key] = kind(float(value)) if kind is int else kind(value)
    return JointStageSettings(**overrides)


def fit_and_judge(reconstructor: Reconstructor, judge: DlibJudge, photo, pixels: np.ndarray
                  ) -> tuple[Reconstruction, float, float, float]:
    """Fit one photo with the reconstructor's current settings; return the result, the fit's
    seconds and dlib's distances from the photo to the overlay and to the turned view."""
    t0 = time.perf_counter()
    result = reconstructor.reconstruct_photo(photo)
    seconds = time.perf_counter() - t0
    reference = judge.descriptor(pixels, result.landmarks_2d)
    overlay = judge.descriptor(result.preview, result.landmarks_2d)
    image, marks = turned_view(reconstructor, result, TURN_DEGREES)
    turned = judge.descriptor(image, marks)
    return result, seconds, float(np.linalg.norm(overlay - reference)), float(np.linalg.norm(turned - reference))


def write_markdown_table(path: Path, table: list[str]) -> None:
    """Write the table to ``path``; in a file that already holds one (docs/identity-table.md),
    replace only that table, so the prose around it stays; to any other existing file, append it."""
    lines = path.read_text().splitlines() if path.is_file() else []
    start = next((i for i, line in enumerate(lines) if line.startswith("| photo |")), None)
    if start is None:
        lines = lines + ([""] if lines else []) + table
    else:
        end = start
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        lines = lines[:start] + table + lines[end:]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="*", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--photos-limit", type=int, default=None, help="only the first N photos")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="also write a Markdown table here (replacing only the table in a file that has one, else appended)")
    parser.add_argument("--save-landmarks", type=Path, default=None, help="write the photos' landmarks here and stop")
    parser.add_argument("--landmarks", type=Path, default=None, help="landmarks saved by --save-landmarks")
    parser.add_argument("--joint", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a JointStageSettings field (tuning, ablations), e.g. --joint steps=120")
    parser.add_argument("--clean-texture", action="store_true",
                        help="the final texture keeps only skin outside the face outline (reconstruct --clean-texture)")
    parser.add_argument("--name", default="identity", help="results file name (benchmarks/results/NAME.txt)")
    args = parser.parse_args()
    photos = choose_photos(args.photos, default_photos(), args.photos_limit, "identity_distance")

    if args.save_landmarks:
        detector = default_detector()
        marks = {p.name: find_face(load_photo(p), None, detector).landmarks for p in photos}
        np.savez(args.save_landmarks, **marks)
        print(f"wrote landmarks of {len(marks)} photos to {args.save_landmarks}")
        return 0
    detector = None
    if args.landmarks:
        saved = dict(np.load(args.landmarks))
        current: dict[str, np.ndarray] = {}
        detector = FaceDetector(landmarker=lambda pixels, box: current["landmarks"])

    appearance = AppearanceStageSettings(skin_only_outside_face=args.clean_texture)
    full_settings = FitSettings(device=args.device, joint=joint_settings(args.joint), appearance=appearance)
    landmark_settings = replace(full_settings, joint=replace(full_settings.joint, steps=0))
    reconstructor = Reconstructor(full_settings, detector=detector)
    judge = DlibJudge()
    rows = []
    for path in photos:
        photo = load_photo(path)
        if args.landmarks:
            current["landmarks"] = saved[path.name]
        pixels = np.array(photo.pixels)
        row: dict[str, float | str] = {"photo": path.name.split(".")[0][:24]}
        for label, settings in (("lmk", landmark_settings), ("full", full_settings)):
            reconstructor.settings = settings
            result, row[f"{label}_s"], row[f"{label}_overlay"], row[f"{label}_turned"] = fit_and_judge(
                reconstructor, judge, photo, pixels)
            row[f"{label}_lmk"] = result.landmark_error_iod
        rows.append(row)
        print(f"  {row['photo']}: overlay {row['lmk_overlay']:.3f} -> {row['full_overlay']:.3f}, "
              f"turned {row['lmk_turned']:.3f} -> {row['full_turned']:.3f}", file=sys.stderr, flush=True)

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    header = (f"{'photo':<24} | {'overlay: landmarks':>18} | {'full':>6} | {'turned 25°: landmarks':>21} | {'full':>6} | "
              f"{'lmk err':>7} | {'fit s':>5}")
    lines = [
        f"dlib descriptor distance to the photo (dlib's same-person threshold {SAME_PERSON}); landmark-only fit vs full objective",
        f"device {reconstructor.device} ({torch.get_num_threads()} threads); full objective: {full_settings.joint.steps} steps"
        f"{' (' + ', '.join(args.joint) + ')' if args.joint else ''}{'; clean texture' if args.clean_texture else ''}; "
        f"landmarks {'from ' + args.landmarks.name if args.landmarks else 'by dlib'}",
        header,
        "-" * len(header),
    ]
    for r in rows:
        lines.append(f"{r['photo']:<24} | {r['lmk_overlay']:18.3f} | {r['full_overlay']:6.3f} | {r['lmk_turned']:21.3f} | "
                     f"{r['full_turned']:6.3f} | {r['full_lmk']:7.2%} | {r['full_s']:5.1f}")
    better = sum(r["full_overlay"] < r["lmk_overlay"] for r in rows)
    better_turned = sum(r["full_turned"] < r["lmk_turned"] for r in rows)
    lines.append(f"{'mean of ' + str(len(rows)):<24} | {mean('lmk_overlay'):18.3f} | {mean('full_overlay'):6.3f} | "
                 f"{mean('lmk_turned'):21.3f} | {mean('full_turned'):6.3f} | {mean('full_lmk'):7.2%} | {mean('full_s'):5.1f}")
    lines.append(f"full objective closer than landmark-only: overlay {better}/{len(rows)}, turned {better_turned}/{len(rows)}; "
                 f"mean overlay distance {'under' if mean('full_overlay') < 0.5 else 'NOT under'} 0.5")
    publish(args.name, lines)
    if args.markdown:
        md = ["| photo | overlay, landmark-only | overlay, full | turned 25°, landmark-only | turned 25°, full | landmark error |",
              "|---|---:|---:|---:|---:|---:|"]
        md += [f"| {r['photo']} | {r['lmk_overlay']:.3f} | {r['full_overlay']:.3f} | {r['lmk_turned']:.3f} | {r['full_turned']:.3f} | {r['full_lmk']:.2%} |" for r in rows]
        md.append(f"| **mean of {len(rows)}** | **{mean('lmk_overlay'):.3f}** | **{mean('full_overlay'):.3f}** | "
                  f"**{mean('lmk_turned'):.3f}** | **{mean('full_turned'):.3f}** | {mean('full_lmk'):.2%} |")
        write_markdown_table(args.markdown, md)
    return 0 if mean("full_overlay") < 0.5 and mean("full_overlay") < mean("lmk_overlay") else 1


if __name__ == "__main__":
    sys.exit(main())
