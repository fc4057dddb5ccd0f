"""Render docs/images/blender_placement.png: Blender's startup scene (the 2 m cube) after two
imports of the same result. Each head lands clear of the cube and of the one before, with its
camera and light moved along, as Reconstruct Face and the import place them (issue 18).

    python tools/render_placement_example.py --result FOLDER [--output PNG]

FOLDER is a ganfit result folder (``ganfit reconstruct PHOTO -o FOLDER``). Needs the project's
environment (``make install``: bpy 5.0.1, Pillow).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "images" / "blender_placement.png"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--result", type=Path, required=True, help="a ganfit result folder")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="PNG to write")
    parser.add_argument("--samples", type=int, default=16, help="Cycles samples per pixel (default 16)")
    args = parser.parse_args(argv)
    os.environ["BLENDER_USER_RESOURCES"] = tempfile.mkdtemp(prefix="ganfit-placement-")  # before bpy loads
    import bpy
    import addon_utils  # on sys.path once bpy is loaded
    from mathutils import Vector

    sys.path.insert(0, str(ROOT))
    from ganfit_blender import scene_import  # the add-on's own import

    addon_utils.enable("cycles", default_set=True)
    bpy.ops.wm.read_homefile(use_empty=False)  # the startup file: cube, camera, light
    scene = bpy.context.scene
    startup_camera = scene.camera
    heads = [scene_import.import_result(bpy.context, args.result).head for _ in range(2)]
    scene.camera = startup_camera  # look at the whole scene, not through a fitted camera
    bpy.context.view_layer.update()
    centre = sum((h.matrix_world.translation for h in heads), Vector()) / len(heads)
    centre.x /= 2  # between the cube (at the origin) and the heads
    startup_camera.location = centre + Vector((0.6, -4.5, 1.6))
    direction = centre - startup_camera.location
    startup_camera.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
    startup_camera.data.lens = 32
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = args.samples
    scene.cycles.use_denoising = False
    scene.render.resolution_x, scene.render.resolution_y = 900, 420
    scene.render.resolution_percentage = 100
    scene.view_settings.view_transform = "Standard"
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = str(args.output)
    bpy.ops.render.render(write_still=True)
    for head in heads:
        x, y, z = head.location
        print(f"{head.name}: at ({x:.2f}, {y:.2f}, {z:.2f}) m; clearance from the cube's face x = 1: "
              f"{x - 0.12 - 1.0:.2f} m")
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
