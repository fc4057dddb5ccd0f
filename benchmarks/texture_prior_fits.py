"""GAN prior versus PCA prior in fitting (issue 5): identity and sharpness of the fitted texture.

Each photo is fitted once per texture prior (``--prior NAME=FILE``, a ``ganfit texture-pca``
or ``train-texture --export`` file; ``projected`` = no prior, the photo projected into UV), all
other settings the defaults. Each fit is judged by

- dlib's own C++ network: the descriptor distance from the photo to the render laid over the
  photo (``overlay``) and to the head turned 25 degrees over grey (``turned``), as in
  benchmarks/identity_distance.py -- dlib calls two faces the same person below 0.6;
- sharpness of the fitted UV texture: the mean squared Laplacian of its luminance in the
  face region (``ganfit.texture.metrics.sharpness``, x1e3), at the model's own resolution.

Photos: the 20 UTKFace test photos (ganfit.texture.dataset.OBJECTIVE_TEST_PHOTOS; held out of every UV
set's training split), or the photos given (files, or the sample names ``grace_hopper`` and
``astronaut``). Prints a table, writes benchmarks/results/NAME.txt, optionally a Markdown
table, and with ``--contact-sheet PNG`` a picture of the first eight photos, each with the overlay
render and UV texture of every prior. UTKFace photos must not appear in the repository, so the
docs' contact sheet is made from the public-domain photos (docs/images/public_photos):

    python benchmarks/texture_prior_fits.py grace_hopper astronaut docs/images/public_photos/*.jpg \\
        --prior pca=pca50.npz --prior gan=texture_gan.npz --name texture-prior-public \\
        --contact-sheet docs/images/texture_contact_sheet.png

    python benchmarks/texture_prior_fits.py --prior pca=pca50.npz --prior gan=texture_gan.npz \\
        [--markdown FILE.md] [--contact-sheet /tmp/sheet.png]   # (UTKFace: keep it out of git)

Settings are tuned on other photos than the 20, e.g. the default texture prior weight (1e-5) on
8 fresh UTKFace photos: ``python benchmarks/texture_prior_fits.py FRESH_PHOTOS... --prior ...
--joint texture_prior_weight=W`` for W in 1e-3, 1e-4, 1e-5, and the texture latent's learning
rate (0.1) the same way with ``--joint texture_learning_rate=R`` for R in 0.03, 0.1, 0.3
(docs/texture-model.md, sessions 6 and 7).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from identity_distance import (
    SAME_PERSON,
    TURN_DEGREES,
    DlibJudge,
    choose_photos,
    fit_and_judge,
    joint_settings,
    utkface_test_photos,
)
from PIL import Image, ImageDraw
from report import publish

from ganfit.fit.reconstruct import Reconstructor
from ganfit.fit.settings import FitSettings
from ganfit.io.images import load_photo
from ganfit.io.result import Reconstruction
from ganfit.texture.metrics import sharpness
from ganfit.texture.uv_layout import face_region_mask

SHEET_PHOTOS = 8
SHEET_CELL = 256


def texture_sharpness(result: Reconstruction, size: int) -> float:
    """Sharpness x1e3 of the result's UV texture at ``size`` texels (the prior's own resolution)."""
    texture = torch.from_numpy(result.texture).permute(2, 0, 1)[None].float() / 255.0
    if texture.shape[-1] != size:
        texture = F.interpolate(texture, size=(size, size), mode="bilinear", align_corners=False,
                                antialias=texture.shape[-1] > size)
    return float(sharpness(texture, face_region_mask(size))[0]) * 1e3


def contact_sheet(rows: list[list[np.ndarray]], labels: list[str], path: Path, title: str) -> None:
    """One row per photo: the photo, then overlay render and UV texture per prior; cells of
    SHEET_CELL pixels under the column ``labels``."""
    head = 28
    sheet = Image.new("RGB", (len(labels) * SHEET_CELL, head + len(rows) * SHEET_CELL), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for column, label in enumerate(labels):
        draw.text((column * SHEET_CELL + 8, 4), label, fill=(0, 0, 0))
    draw.text((8, 16), title, fill=(90, 90, 90))
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            cell = Image.fromarray(image).convert("RGB")
            cell.thumbnail((SHEET_CELL, SHEET_CELL), Image.LANCZOS)
            x = c * SHEET_CELL + (SHEET_CELL - cell.width) // 2
            y = head + r * SHEET_CELL + (SHEET_CELL - cell.height) // 2
            sheet.paste(cell, (x, y))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True, quality=90)  # quality: JPEG only; the docs' sheet is a PNG (lossless)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="*", type=Path, help="default: the 20 UTKFace test photos")
    parser.add_argument("--prior", action="append", default=[], metavar="NAME=FILE",
                        help="a texture model to compare (repeat); NAME=projected for no prior")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--photos-limit", type=int, default=None, help="only the first N photos")
    parser.add_argument("--markdown", type=Path, default=None, help="also write a Markdown table here")
    parser.add_argument("--contact-sheet", type=Path, default=None, help="write photo | overlay | UV texture here")
    parser.add_argument("--joint", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a JointStageSettings field for every prior, e.g. --joint texture_prior_weight=1e-4")
    parser.add_argument("--name", default="texture-prior-fits", help="results file name (benchmarks/results/NAME.txt)")
    args = parser.parse_args()
    priors: list[tuple[str, str | None]] = []
    for item in args.prior or ["projected="]:
        name, _, file = item.partition("=")
        if name != "projected" and not Path(file).is_file():
            print(f"texture_prior_fits: {file or item}: no such texture model (give NAME=FILE)", file=sys.stderr)
            return 2
        priors.append((name, None if name == "projected" else file))
    photos = choose_photos(args.photos, utkface_test_photos(), args.photos_limit, "texture_prior_fits")

    base = FitSettings(device=args.device, joint=joint_settings(args.joint))
    reconstructor = Reconstructor(base)
    judge = DlibJudge()
    rows: list[dict[str, float | str]] = []
    sheet: list[list[np.ndarray]] = []
    for index, path in enumerate(photos):
        photo = load_photo(path)
        pixels = np.array(photo.pixels)
        row: dict[str, float | str] = {"photo": path.name.split(".")[0][:24]}
        cells = [pixels]
        for name, file in priors:
            reconstructor.settings = replace(base, texture_model=file)
            model = reconstructor.texture_model()
            size = model.resolution if model is not None else 256
            result, row[f"{name}_s"], row[f"{name}_overlay"], row[f"{name}_turned"] = fit_and_judge(
                reconstructor, judge, photo, pixels)
            row[f"{name}_sharp"] = texture_sharpness(result, size)
            cells += [result.preview, result.texture]
        if index < SHEET_PHOTOS:
            sheet.append(cells)
        rows.append(row)
        print("  " + str(row["photo"]) + ": " + ", ".join(
            f"{n} {row[n + '_overlay']:.3f}/{row[n + '_turned']:.3f} sharp {row[n + '_sharp']:.2f}" for n, _ in priors),
            file=sys.stderr, flush=True)

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    names = [n for n, _ in priors]
    header = f"{'photo':<24} | " + " | ".join(f"{n + ' overlay':>14} | {'turned':>6} | {'sharp':>6}" for n in names)
    lines = [
        f"texture prior in fitting: dlib distance photo -> overlay / turned {TURN_DEGREES:.0f} deg (same person below "
        f"{SAME_PERSON}), sharpness = mean squared Laplacian x1e3 of the UV texture's face region",
        "priors: " + ", ".join(f"{n} = {Path(f).name if f else 'photo projected into UV, no prior'}" for n, f in priors)
        + f"; device {reconstructor.device} ({torch.get_num_threads()} threads); other settings default",
        header,
        "-" * len(header),
    ]
    for r in rows:
        lines.append(f"{r['photo']:<24} | " + " | ".join(
            f"{r[n + '_overlay']:14.3f} | {r[n + '_turned']:6.3f} | {r[n + '_sharp']:6.2f}" for n in names))
    lines.append(f"{'mean of ' + str(len(rows)):<24} | " + " | ".join(
        f"{mean(n + '_overlay'):14.3f} | {mean(n + '_turned'):6.3f} | {mean(n + '_sharp'):6.2f}" for n in names))
    lines.append("fit seconds (mean): " + ", ".join(f"{n} {mean(n + '_s'):.1f}" for n in names))
    for j, b in enumerate(names):  # every prior against each one listed before it
        for a in names[:j]:
            sharper = sum(r[f"{b}_sharp"] > r[f"{a}_sharp"] for r in rows)
            closer = sum(r[f"{b}_overlay"] <= r[f"{a}_overlay"] for r in rows)
            turned = sum(r[f"{b}_turned"] <= r[f"{a}_turned"] for r in rows)
            lines.append(f"{b} vs {a}: sharper on {sharper}/{len(rows)} photos, overlay distance equal or lower on "
                         f"{closer}/{len(rows)}, turned on {turned}/{len(rows)}; mean overlay "
                         f"{mean(a + '_overlay'):.3f} -> {mean(b + '_overlay'):.3f}, sharpness "
                         f"{mean(a + '_sharp'):.2f} -> {mean(b + '_sharp'):.2f}")
    publish(args.name, lines)
    if args.markdown:
        md = ["| photo | " + " | ".join(f"{n}: overlay | {n}: turned 25° | {n}: sharpness" for n in names) + " |",
              "|---|" + "---:|" * (3 * len(names))]
        md += [f"| {r['photo']} | " + " | ".join(
            f"{r[n + '_overlay']:.3f} | {r[n + '_turned']:.3f} | {r[n + '_sharp']:.2f}" for n in names) + " |" for r in rows]
        md.append(f"| **mean of {len(rows)}** | " + " | ".join(
            f"**{mean(n + '_overlay'):.3f}** | **{mean(n + '_turned'):.3f}** | **{mean(n + '_sharp'):.2f}**" for n in names) + " |")
        args.markdown.write_text("\n".join(md) + "\n")
    if args.contact_sheet and sheet:
        labels = ["photo"] + [f"{n}: {kind}" for n in names for kind in ("overlay render", "UV texture")]
        contact_sheet(sheet, labels, args.contact_sheet,
                      "texture priors: " + ", ".join(f"{n} = {Path(f).name if f else 'no prior'}" for n, f in priors))
        print(f"contact sheet: {args.contact_sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
