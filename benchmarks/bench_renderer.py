"""Renderer forward+backward time for the default head (issue: <= 30 ms at 224x224 on 2 CPU cores).

Prints a table and writes it to benchmarks/results/renderer.txt. The scene is the fitting case:
the head seen frontally, filling the 224 x 224 face crop, with a 512 x 512 UV texture, and a
fixed random weighting of the image as the loss, which sends gradients to vertices, texture,
camera and light.

    python benchmarks/bench_renderer.py [--device cuda] [--repeats 30]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from report import publish

from ganfit.models.shape_model import load_default_shape_model
from ganfit.render import Camera, MeshRenderer, PointLight


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(size: int, device: torch.device, repeats: int) -> tuple[float, float, float, int]:
    model = load_default_shape_model().to(device)
    renderer = MeshRenderer(model.faces, model.uvs, model.uv_faces).to(device)
    mean = model.mean.to(device)
    verts = mean[None].clone().requires_grad_(True)
    lo, hi = mean.amin(0), mean.amax(0)
    centre = (lo + hi) / 2
    height = float(hi[1] - lo[1])
    focal = 1.5
    distance = focal * height * 1.05  # the head just fills the frame
    cam_pos = (centre + torch.tensor([0.0, 0.0, distance], device=device))[None].requires_grad_(True)
    camera = Camera(cam_pos, centre[None], torch.tensor([[0.0, 1.0, 0.0]], device=device), torch.tensor([focal], device=device))
    texture = torch.rand(1, 3, 512, 512, device=device, requires_grad=True)
    light = PointLight(
        (cam_pos.detach() + torch.tensor([[0.3, 0.4, 0.0]], device=device)).requires_grad_(True),
        torch.full((1, 3), 0.6, device=device, requires_grad=True),
        torch.full((1, 3), 0.4, device=device, requires_grad=True),
    )
    # A fixed random weighting of the image: the gradient of a generic image loss, with no
    # loss arithmetic of its own to time.
    weights = torch.rand(1, 3, size, size, device=device)

    def step() -> tuple[float, float]:
        _sync(device)
        t0 = time.perf_counter()
        out = renderer(verts, texture, camera, light, size, size)
        loss = (out.image * weights).sum()
        _sync(device)
        t1 = time.perf_counter()
        loss.backward()
        _sync(device)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t0

    for _ in range(5):
        step()
    fwd, total = zip(*(step() for _ in range(repeats)))
    coverage = int(renderer(verts, texture, camera, light, size, size).mask.sum())
    return statistics.median(fwd) * 1e3, statistics.median(total) * 1e3, min(total) * 1e3, coverage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    args = parser.parse_args()
    device = torch.device(args.device)
    model = load_default_shape_model()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    lines = [
        f"renderer forward+backward, default head ({model.mean.shape[0]} vertices, {model.faces.shape[0]} triangles), "
        f"texture 512x512, device {device} ({name}), torch {torch.__version__}, median of {args.repeats}",
        f"{'size':>9} | {'forward ms':>10} | {'fwd+bwd ms':>10} | {'best ms':>8} | {'face pixels':>11}",
        "-" * 62,
    ]
    for size in args.sizes:
        fwd, total, best, cov = bench(size, device, args.repeats)
        lines.append(f"{size:>4}x{size:<4} | {fwd:10.1f} | {total:10.1f} | {best:8.1f} | {cov:11d}")
    publish(f"renderer-{device.type}", lines)


if __name__ == "__main__":
    main()
