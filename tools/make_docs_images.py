"""Make the example picture in the README: photo, fitted head over the photo, the textured head
from a new angle, and the UV texture, for the public-domain sample photos.

    python tools/make_docs_images.py   # writes docs/images/examples.png
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ganfit.fit.reconstruct import Reconstructor
from ganfit.io.images import load_photo
from ganfit.io.samples import sample_photo
from ganfit.render import Camera, MeshRenderer, PointLight

TILE = 300
OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "examples.png"


def _tile(image: np.ndarray | Image.Image, label: str) -> Image.Image:
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    scale = TILE / max(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    canvas = Image.new("RGB", (TILE, TILE + 18), "white")
    canvas.paste(img, ((TILE - img.width) // 2, 18 + (TILE - img.height) // 2))
    ImageDraw.Draw(canvas).text((4, 3), label, fill="black")
    return canvas


def _turned_view(result, angle_deg: float) -> np.ndarray:
    """The reconstructed head rendered with its texture and fitted light, camera turned."""
    verts = torch.from_numpy(result.vertices)[None]
    renderer = MeshRenderer(torch.from_numpy(result.faces).long(), torch.from_numpy(result.uvs), torch.from_numpy(result.uv_faces).long())
    centre = verts[0].mean(0)
    a = math.radians(angle_deg)
    eye = centre + 0.55 * torch.tensor([math.sin(a), 0.05, math.cos(a)])
    cam = Camera(eye[None], centre[None], torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([1.6]))
    light = PointLight(
        torch.from_numpy(result.light.position)[None].float(),
        torch.from_numpy(result.light.colour)[None].float(),
        torch.from_numpy(result.light.ambient)[None].float(),
    )
    tex = torch.from_numpy(result.texture).permute(2, 0, 1)[None].float() / 255
    out = renderer(verts, tex, cam, light, 400, 400, background=1.0)
    return (out.image[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def main() -> None:
    reconstructor = Reconstructor()
    rows = []
    for name in ("grace_hopper", "astronaut"):
        path = sample_photo(name)
        result = reconstructor.reconstruct(path)
        lm = result.landmarks_2d
        lo, hi = lm.min(0), lm.max(0)
        pad = (hi - lo).max() * 0.45
        box = (int(lo[0] - pad), int(lo[1] - pad * 1.3), int(hi[0] + pad), int(hi[1] + pad * 0.7))
        photo = Image.fromarray(load_photo(path).pixels).crop(box)
        preview = Image.fromarray(result.preview).crop(box)
        tiles = [
            _tile(photo, f"{name}: photo"),
            _tile(preview, "fitted head over the photo"),
            _tile(_turned_view(result, 35), "new view (35 degrees)"),
            _tile(result.texture, "UV texture (albedo)"),
        ]
        row = Image.new("RGB", (TILE * len(tiles), TILE + 18), "white")
        for i, t in enumerate(tiles):
            row.paste(t, (i * TILE, 0))
        rows.append(row)
    sheet = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    OUT.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
