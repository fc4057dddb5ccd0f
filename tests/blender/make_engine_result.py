"""Run by the Blender tests in a child process (torch never loads beside bpy): fit
grace_hopper with the fastest settings, write the result folder, and save the engine's own
render of it at a small size for the render comparison.

    python make_engine_result.py OUT_FOLDER RENDER_WIDTH RENDER_HEIGHT
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from ganfit.fit.reconstruct import Reconstructor
from ganfit.fit.settings import AppearanceStageSettings, FitSettings, LandmarkStageSettings, JointStageSettings
from ganfit.io.result import read_result, write_result
from ganfit.io.samples import sample_photo
from ganfit.render.camera import Camera
from ganfit.render.renderer import MeshRenderer
from ganfit.render.shading import PointLight

FAST = FitSettings(
    landmark=LandmarkStageSettings(steps=100),
    appearance=AppearanceStageSettings(steps=5, texture_size=128),
    joint=JointStageSettings(steps=3),
)


def engine_render(folder: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The engine's render of a result folder as written (texture read back from the PNG)."""
    result = read_result(folder)
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)[None]  # noqa: E731
    renderer = MeshRenderer(torch.as_tensor(result.faces), torch.as_tensor(result.uvs), torch.as_tensor(result.uv_faces))
    cam, light = result.camera, result.light
    camera = Camera(t(cam.position), t(cam.look_at), t(cam.up), torch.tensor([cam.focal]))
    lights = PointLight(t(light.position), t(light.colour), t(light.ambient))
    texture = torch.as_tensor(result.texture, dtype=torch.float32).permute(2, 0, 1)[None] / 255.0
    with torch.no_grad():
        out = renderer(t(result.vertices), texture, camera, lights, height, width)
    return out.image[0].permute(1, 2, 0).numpy(), out.mask[0, 0].numpy()


def main() -> None:
    out, width, height = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    result = Reconstructor(FAST).reconstruct(sample_photo("grace_hopper"))
    write_result(result, out, force=True)
    image, mask = engine_render(out, width, height)
    np.savez(out.parent / "engine_render.npz", image=image, mask=mask)


if __name__ == "__main__":
    main()
