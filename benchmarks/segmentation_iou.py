"""How well does the photo segmentation agree with hand-drawn labels? (issue 17, item 1)

Runs ``ganfit.texture.segmentation.segment_photo`` with dlib's 68 landmarks on the labelled
photos of ``benchmarks/segmentation_labels.json`` (polygons drawn by eye: 20 UTKFace photos, the
project's held-out ``OBJECTIVE_TEST_PHOTOS``, and the public sample photos with a face) and
prints, per photo and as means:

- ``skin``: intersection over union of predicted and labelled face skin;
- ``not skin``: the same for everything else (the texture's concern is both sides);
- ``hair``: IoU of hair, on photos where hair is labelled;
- ``acc``: pixel accuracy over the four classes (labelled headwear and glasses are one class).

The segmentation's settings were tuned on the ``tune`` half (even positions in
``OBJECTIVE_TEST_PHOTOS``); the ``held-out`` half and the public photos were not looked at while
tuning. The table goes to benchmarks/results/segmentation_iou.txt and, with ``--markdown FILE``,
between ``<!-- segmentation -->`` markers in FILE. ``--sheet PNG`` writes a contact sheet of the
public photos only (never UTKFace: its licence allows no redistribution of its images).

    python benchmarks/segmentation_iou.py [--markdown docs/texture-segmentation.md]
        [--sheet docs/images/segmentation.png] [--overlays DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from report import publish, replace_block

from ganfit.errors import GanfitError
from ganfit.face.detection import FaceDetector, find_face
from ganfit.io.images import load_photo
from ganfit.io.samples import sample_photo
from ganfit.texture.dataset import OBJECTIVE_TEST_PHOTOS
from ganfit.texture.segmentation import HAIR, HEADWEAR_OR_GLASSES, OTHER, SKIN, segment_photo

ROOT = Path(__file__).resolve().parents[1]
LABELS = Path(__file__).with_name("segmentation_labels.json")
UTKFACE = ROOT.parent / "shared" / "data" / "utkface" / "crop_part1"
#: Label names of the JSON file and the segmentation class each counts as.
LABEL_CLASSES = {"skin": SKIN, "hair": HAIR, "headwear": HEADWEAR_OR_GLASSES, "glasses": HEADWEAR_OR_GLASSES, "other": OTHER}
#: The photos the settings were tuned on: every other one of the objective test photos.
TUNING_PHOTOS = OBJECTIVE_TEST_PHOTOS[0::2]
#: Overlay colours of the classes (other: none).
COLOURS = {SKIN: (255, 60, 60), HAIR: (60, 220, 60), HEADWEAR_OR_GLASSES: (60, 120, 255)}


def label_map(regions: list, shape: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """(H, W) uint8 class map painted from the polygons in order, and whether hair is labelled."""
    import cv2

    labels = np.zeros(shape, np.uint8)
    has_hair = False
    for name, polygon in regions:
        if name not in LABEL_CLASSES:
            raise GanfitError(f"{LABELS.name}: unknown label {name!r}; use one of {', '.join(LABEL_CLASSES)}")
        points = np.round((np.asarray(polygon, np.float64) - 0.5) * 16).astype(np.int32)
        cv2.fillPoly(labels, [points], LABEL_CLASSES[name], lineType=cv2.LINE_8, shift=4)
        has_hair |= name == "hair"
    return labels, has_hair and bool((labels == HAIR).any())


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def scores(predicted: np.ndarray, truth: np.ndarray, has_hair: bool) -> dict[str, float]:
    return {
        "skin": iou(predicted == SKIN, truth == SKIN),
        "not skin": iou(predicted != SKIN, truth != SKIN),
        "hair": iou(predicted == HAIR, truth == HAIR) if has_hair else float("nan"),
        "acc": float((predicted == truth).mean()),
    }


def photos() -> list[tuple[str, str, Path]]:
    """(group, name, path): the labelled UTKFace photos, then the public samples."""
    labels = json.loads(LABELS.read_text())
    out = []
    for name in labels["utkface"]:
        group = "tune" if name in TUNING_PHOTOS else "held-out"
        out.append((group, name, UTKFACE / name))
    for name in labels["samples"]:
        out.append(("public", name, sample_photo(name)))
    return out


def overlay(pixels: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The photo with each class tinted in its colour."""
    out = pixels.astype(np.float32).copy()
    for label, colour in COLOURS.items():
        where = labels == label
        out[where] = (1 - alpha) * out[where] + alpha * np.asarray(colour, np.float32)
    return out.clip(0, 255).astype(np.uint8)


def contact_sheet(items: list[tuple[np.ndarray, np.ndarray, np.ndarray]], path: Path, height: int = 240) -> None:
    """Public photos only: photo | predicted classes | labelled classes, cropped to the head; a
    256-colour PNG to stay small in the docs."""
    from PIL import Image

    rows = []
    for pixels, predicted, truth in items:
        ys, xs = np.nonzero((truth != OTHER) | (predicted != OTHER))
        pad = int(0.25 * max(ys.ptp(), xs.ptp()))
        y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad, pixels.shape[0])
        x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad, pixels.shape[1])
        tiles = [pixels[y0:y1, x0:x1], overlay(pixels, predicted)[y0:y1, x0:x1], overlay(pixels, truth)[y0:y1, x0:x1]]
        scale = height / (y1 - y0)
        size = (round((x1 - x0) * scale), height)
        rows.append(np.concatenate([np.asarray(Image.fromarray(t).resize(size, Image.LANCZOS)) for t in tiles], 1))
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows], 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def mean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", type=Path, default=None, help="write the table between <!-- segmentation --> markers")
    parser.add_argument("--sheet", type=Path, default=None, help="contact sheet PNG of the public photos")
    parser.add_argument("--overlays", type=Path, default=None,
                        help="folder for per-photo overlays of every photo (for looking at locally; never commit it)")
    args = parser.parse_args(argv)
    try:
        labels = json.loads(LABELS.read_text())
        detector = FaceDetector()
        rows: list[tuple[str, str, dict[str, float], float]] = []
        sheet_items = []
        for group, name, path in photos():
            photo = load_photo(path)
            face = find_face(photo, detector=detector)
            regions = labels["utkface" if group != "public" else "samples"][name]
            truth, has_hair = label_map(regions, photo.pixels.shape[:2])
            start = time.perf_counter()
            predicted = segment_photo(photo.pixels, face.landmarks).labels
            seconds = time.perf_counter() - start
            rows.append((group, name, scores(predicted, truth, has_hair), seconds))
            if group == "public":
                sheet_items.append((photo.pixels, predicted, truth))
            if args.overlays is not None:
                from PIL import Image

                args.overlays.mkdir(parents=True, exist_ok=True)
                pair = np.concatenate([overlay(photo.pixels, predicted), overlay(photo.pixels, truth)], 1)
                Image.fromarray(pair).save(args.overlays / f"{group}-{Path(name).stem}.png")
    except GanfitError as exc:
        print(f"segmentation_iou: {exc}", file=sys.stderr)
        return 2

    keys = ("skin", "not skin", "hair", "acc")
    lines = ["| photo | set | skin IoU | not-skin IoU | hair IoU | accuracy | seconds |", "|---|---|---|---|---|---|---|"]
    for group, name, s, seconds in rows:
        cells = " | ".join("-" if not np.isfinite(s[k]) else f"{s[k]:.3f}" for k in keys)
        lines.append(f"| {name.split('_2017')[0].split('_2016')[0]} | {group} | {cells} | {seconds:.2f} |")
    summary = ["", "| set | photos | skin IoU | not-skin IoU | hair IoU (photos) | accuracy |", "|---|---|---|---|---|---|"]
    for label, members in (
        ("UTKFace tune", [r for r in rows if r[0] == "tune"]),
        ("UTKFace held-out", [r for r in rows if r[0] == "held-out"]),
        ("UTKFace all", [r for r in rows if r[0] != "public"]),
        ("public", [r for r in rows if r[0] == "public"]),
    ):
        hair = [r[2]["hair"] for r in members]
        summary.append(
            f"| {label} | {len(members)} | {mean([r[2]['skin'] for r in members]):.3f} | "
            f"{mean([r[2]['not skin'] for r in members]):.3f} | {mean(hair):.3f} ({sum(np.isfinite(hair))}) | "
            f"{mean([r[2]['acc'] for r in members]):.3f} |"
        )
    publish("segmentation_iou", lines + summary)
    if args.markdown is not None:
        replace_block(args.markdown, "segmentation", lines + summary)
    if args.sheet is not None and sheet_items:
        contact_sheet(sheet_items, args.sheet)
        print(f"wrote {args.sheet} ({args.sheet.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
