"""Render the Blender example picture (docs/images/blender_example.png) with the add-on's own
scene import and Cycles: the photo, the Cycles render from the fitted camera over the photo,
and the head from a three-quarter view with two expression sliders moved.

    python tools/render_blender_example.py [--result FOLDER] [--samples 32] [--output PNG]

Without ``--result`` it first runs ``python -m ganfit reconstruct`` on the grace_hopper sample
photo in a child process (torch never loads beside bpy, as in Blender itself). Needs the
project's environment (``make install``: bpy 5.0.1, Pillow).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger("render_blender_example")

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "images" / "blender_example.png"
TILE_HEIGHT = 300  # pixels of each picture; the PNG stays under 300 KB
LABEL_HEIGHT = 18
#: Sliders moved for the three-quarter view: shows that the expression shape keys work.
EXPRESSION = {"mouthSmileLeft": 0.7, "mouthSmileRight": 0.7, "browInnerUp": 0.4}


def reconstruct(out: Path) -> Path:
    """grace_hopper fitted by the engine with its default settings, in a child process."""
    code = "from ganfit.io.samples import sample_photo; print(sample_photo('grace_hopper'))"
    photo = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    command = [sys.executable, "-m", "ganfit", "reconstruct", photo, "-o", str(out), "--force", "--quiet"]
    log.info("reconstructing: %s", " ".join(command))
    subprocess.run(command, check=True)
    return out


def _render(path: Path, width: int, height: int, samples: int) -> Image.Image:
    """Cycles on the CPU from the scene camera, transparent film, as an RGBA image."""
    import bpy

    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.cycles.max_bounces = 0  # the engine's image formation has no inter-reflection
    scene.cycles.seed = 0
    scene.render.film_transparent = True
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    with Image.open(path) as image:
        return image.convert("RGBA")


def _tile(image: Image.Image, label: str, height: int = TILE_HEIGHT) -> Image.Image:
    scale = height / image.height
    image = image.resize((round(image.width * scale), height), Image.LANCZOS)
    canvas = Image.new("RGB", (image.width, height + LABEL_HEIGHT), "white")
    canvas.paste(image, (0, LABEL_HEIGHT))
    ImageDraw.Draw(canvas).text((4, 3), label, fill="black")
    return canvas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--result", type=Path, help="a result folder of grace_hopper (default: reconstruct one)")
    parser.add_argument("--samples", type=int, default=32, help="Cycles samples per pixel (default 32)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"PNG to write (default {OUTPUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    work = Path(tempfile.mkdtemp(prefix="ganfit-blender-example-"))
    try:
        return make_picture(args.result or reconstruct(work / "grace_hopper"), work, args.samples, args.output)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def make_picture(folder: Path, work: Path, samples: int, output: Path) -> int:
    """Import ``folder`` into an empty Blender scene, render the two views, write ``output``."""
    # Blender's user folders go to a throwaway place before bpy loads: no user config touched.
    os.environ["BLENDER_USER_RESOURCES"] = str(work / "blender-user")
    import bpy
    import addon_utils  # on sys.path once bpy is loaded

    sys.path.insert(0, str(ROOT))
    from ganfit_blender import result_reader, scene_import  # the add-on's own import

    addon_utils.enable("cycles", default_set=True)
    bpy.ops.wm.read_homefile(use_empty=True)
    data = result_reader.read_result(folder)
    # Standard view: the engine's own picture (an artist's AgX would tone-map it)
    built = scene_import.import_result(bpy.context, folder, scene_import.ImportOptions(match_engine_colour=True))
    scene = bpy.context.scene
    scene.render.threads_mode = "FIXED"
    scene.render.threads = max(1, min(8, os.cpu_count() or 1))

    # 1. the photo; 2. Cycles from the fitted camera, over the photo (half the photo's size)
    if data.photo_path is None:
        raise SystemExit(f"{folder}: the source photo is not where the result says; pass a fresh --result")
    photo = Image.open(data.photo_path).convert("RGB")
    width, height = data.camera.width // 2, data.camera.height // 2
    fitted = _render(work / "fitted.png", width, height, samples)
    over = photo.resize((width, height), Image.LANCZOS).convert("RGBA")
    over.alpha_composite(fitted)

    # 3. three-quarter view of the head, two sliders moved, on white
    keys = built.head.data.shape_keys.key_blocks
    for name, value in EXPRESSION.items():
        keys[name].value = value
    centre = data.vertices.mean(axis=0).astype(np.float64)
    angle = math.radians(35.0)
    eye = centre + 0.42 * np.array([math.sin(angle), 0.05, math.cos(angle)])
    camera = bpy.data.objects.new("three-quarter", built.camera.data.copy())
    camera.data.lens = 1.6 * camera.data.sensor_width
    camera.data.show_background_images = False
    camera.matrix_world = scene_import.camera_matrix(eye, centre, np.array([0.0, 1.0, 0.0]))
    built.collection.objects.link(camera)
    scene.camera = camera
    side = _render(work / "side.png", height, height, samples)
    white = Image.new("RGBA", side.size, "white")
    white.alpha_composite(side)

    smile = ", ".join(f"{k} {v}" for k, v in EXPRESSION.items() if k != "mouthSmileRight")
    tiles = [
        _tile(photo, "photo"),
        _tile(over.convert("RGB"), "Cycles, fitted camera, over the photo"),
        _tile(white.convert("RGB"), f"3/4 view; sliders: {smile.replace('Left', '')}"),
    ]
    sheet = Image.new("RGB", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), tiles[0].height), "white")
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width + 8
    output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output, optimize=True)
    size_kb = output.stat().st_size / 1024
    log.info("wrote %s (%dx%d, %.0f KB)", output, sheet.width, sheet.height, size_kb)
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
