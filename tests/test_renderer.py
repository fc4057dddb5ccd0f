"""Differentiable renderer: analytic cases, occlusion, batching and finite-difference gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ganfit.render import Camera, MeshRenderer, PointLight, rasterize


def _quad(z: float, half: float = 1.0, dtype=torch.float64):
    """A square in the plane at depth z facing +z, wound counter-clockwise seen from +z."""
    v = torch.tensor([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]], dtype=dtype)
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=dtype)
    return v, f, uv


def _sphere(n_lat: int = 8, n_lon: int = 12, radius: float = 0.5, dtype=torch.float64):
    th = np.linspace(0.15, np.pi - 0.15, n_lat)
    ph = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    t, p = np.meshgrid(th, ph, indexing="ij")
    v = np.stack([np.sin(t) * np.sin(p), np.cos(t), np.sin(t) * np.cos(p)], -1).reshape(-1, 3) * radius
    uv = np.stack([p / (2 * np.pi), 1 - t / np.pi], -1).reshape(-1, 2)
    faces = []
    for i in range(n_lat - 1):
        for j in range(n_lon):
            a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
            c, d = a + n_lon, b + n_lon
            faces += [[a, c, b], [b, c, d]]
    return torch.tensor(v, dtype=dtype), torch.tensor(faces), torch.tensor(uv, dtype=dtype)


def _front_camera(distance: float = 3.0, focal: float = 1.0, dtype=torch.float64) -> Camera:
    return Camera(
        position=torch.tensor([[0.0, 0.0, distance]], dtype=dtype),
        look_at=torch.zeros(1, 3, dtype=dtype),
        up=torch.tensor([[0.0, 1.0, 0.0]], dtype=dtype),
        focal=torch.tensor([focal], dtype=dtype),
    )


def _light(pos, colour=(1.0, 1.0, 1.0), ambient=(0.2, 0.2, 0.2), dtype=torch.float64) -> PointLight:
    return PointLight(
        position=torch.tensor([pos], dtype=dtype),
        colour=torch.tensor([colour], dtype=dtype),
        ambient=torch.tensor([ambient], dtype=dtype),
    )


def test_projection_of_known_points():
    cam = _front_camera(distance=2.0, focal=1.5)
    pts = torch.tensor([[[0.0, 0.0, 0.0], [0.2, 0.1, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    screen = cam.project(pts, width=100, height=80)
    # Origin lands on the image centre; +x right, +y up in the world is up (smaller y) in pixels.
    assert torch.allclose(screen[0, 0], torch.tensor([50.0, 40.0, 2.0], dtype=torch.float64))
    assert torch.allclose(screen[0, 1], torch.tensor([50 + 150 * 0.1, 40 - 150 * 0.05, 2.0], dtype=torch.float64))
    assert screen[0, 2, 2].item() == pytest.approx(1.0)


def _decode_srgb(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _encode_srgb(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * np.maximum(c, 0.0031308) ** (1 / 2.4) - 0.055)


def test_srgb_round_trip_and_gradients() -> None:
    """The transfer functions invert each other and give finite gradients at 0 (torch.where
    evaluates both branches: a bare power would put inf * 0 = NaN into the backward)."""
    from ganfit.render.shading import linear_to_srgb, srgb_to_linear

    x = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64, requires_grad=True)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(x)).detach().numpy(), x.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(srgb_to_linear(x).detach().numpy(), _decode_srgb(x.detach().numpy()), atol=1e-12)
    (linear_to_srgb(x).sum() + srgb_to_linear(x).sum()).backward()
    assert torch.isfinite(x.grad).all()


def test_lit_plane_matches_phong_formula():
    """Every pixel of a textured plane equals albedo * (ambient + colour * cos(angle to light)),
    in linear light: the sRGB-stored albedo decoded, the lit colour encoded again (IEC 61966-2-1)."""
    size, distance, focal = 48, 3.0, 1.0
    v, f, uv = _quad(0.0, half=2.0)
    albedo = torch.tensor([0.8, 0.5, 0.3], dtype=torch.float64)
    texture = albedo.reshape(1, 3, 1, 1).expand(1, 3, 4, 4).contiguous()
    light_pos = (0.7, -0.4, 1.5)
    renderer = MeshRenderer(f, uv, f)
    out = renderer(v[None], texture, _front_camera(distance, focal), _light(light_pos), size, size)
    assert out.mask.min().item() == 1.0  # the plane fills the view

    # Analytic: ray through each pixel centre meets the plane z = 0.
    c = (np.arange(size) + 0.5 - size / 2) / (focal * size)
    x = c[None, :] * distance
    y = -c[:, None] * distance
    to_light = np.stack(np.broadcast_arrays(light_pos[0] - x, light_pos[1] - y, np.full_like(x, light_pos[2]) + 0 * y), -1)
    cos = to_light[..., 2] / np.linalg.norm(to_light, axis=-1)
    linear = _decode_srgb(albedo.numpy())[:, None, None] * (0.2 + np.clip(cos, 0, None))[None]
    np.testing.assert_allclose(out.image[0].numpy(), _encode_srgb(linear), atol=1e-9)
    np.testing.assert_allclose(out.depth[0, 0].numpy(), distance, atol=1e-9)


def test_nearer_surface_wins_whatever_the_triangle_order():
    near_v, f, uv = _quad(0.5, half=0.5)
    far_v, _, _ = _quad(-0.5, half=1.0)
    red = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    blue = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    # One texture, left half red (u < 0.5) for the near quad, right half blue for the far one.
    texture = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    texture[0, :, :, 0] = red[:, None]
    texture[0, :, :, 1] = blue[:, None]
    uv_near = uv * 0 + torch.tensor([0.25, 0.5], dtype=torch.float64)
    uv_far = uv * 0 + torch.tensor([0.75, 0.5], dtype=torch.float64)
    light = _light((0.0, 0.0, 10.0), colour=(0.0, 0.0, 0.0), ambient=(1.0, 1.0, 1.0))
    for order in ("near_first", "far_first"):
        if order == "near_first":
            verts = torch.cat([near_v, far_v])
            uvs = torch.cat([uv_near, uv_far])
            faces = torch.cat([f, f + 4])
        else:
            verts = torch.cat([far_v, near_v])
            uvs = torch.cat([uv_far, uv_near])
            faces = torch.cat([f, f + 4])
        out = MeshRenderer(faces, uvs, faces)(verts[None], texture, _front_camera(), light, 32, 32)
        centre = out.image[0, :, 16, 16]
        corner = out.image[0, :, 8, 8]  # inside the far quad only
        assert torch.allclose(centre, red), order
        assert torch.allclose(corner, blue), order
        assert out.depth[0, 0, 16, 16].item() == pytest.approx(2.5)
        assert out.depth[0, 0, 8, 8].item() == pytest.approx(3.5, rel=1e-6)


def test_background_and_mask():
    v, f, uv = _quad(0.0, half=0.5)
    tex = torch.ones(1, 3, 4, 4, dtype=torch.float64)
    out = MeshRenderer(f, uv, f)(v[None], tex, _front_camera(), _light((0, 0, 5)), 40, 40, background=0.25)
    mask = out.mask[0, 0]
    # The quad spans pixels [13.33, 26.67) (focal 1, distance 3, width 1): centres 13.5 .. 26.5.
    assert mask.sum().item() == 14 * 14
    assert mask[13:27, 13:27].min().item() == 1
    assert torch.all(out.image[0, :, mask == 0] == 0.25)
    assert torch.all(out.depth[0, 0][mask == 0] == 0)


def test_backfaces_are_culled_and_not_culled_on_request():
    v, f, uv = _quad(0.0, half=2.0)
    tex = torch.ones(1, 3, 2, 2, dtype=torch.float64)
    behind = Camera(torch.tensor([[0.0, 0.0, -3.0]], dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64),
                    torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64))
    light = _light((0, 0, -5))
    assert MeshRenderer(f, uv, f)(v[None], tex, behind, light, 16, 16).mask.sum() == 0
    assert MeshRenderer(f, uv, f, cull_backfaces=False)(v[None], tex, behind, light, 16, 16).mask.sum() == 256


def test_batch_equals_individual_renders():
    v, f, uv = _sphere(dtype=torch.float32)
    renderer = MeshRenderer(f, uv, f)
    tex = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cams = Camera(
        position=torch.tensor([[0.0, 0.0, 2.0], [1.0, 0.5, 1.5]]),
        look_at=torch.zeros(2, 3),
        up=torch.tensor([[0.0, 1.0, 0.0]] * 2),
        focal=torch.tensor([1.0, 1.3]),
    )
    light = PointLight(torch.tensor([[1.0, 1.0, 2.0], [-1.0, 0.0, 2.0]]), torch.ones(2, 3) * 0.7, torch.ones(2, 3) * 0.3)
    verts = torch.stack([v, v * 1.1])
    both = renderer(verts, tex, cams, light, 24, 32)
    for i in range(2):
        cam_i = Camera(cams.position[i : i + 1], cams.look_at[i : i + 1], cams.up[i : i + 1], cams.focal[i : i + 1])
        light_i = PointLight(light.position[i : i + 1], light.colour[i : i + 1], light.ambient[i : i + 1])
        one = renderer(verts[i : i + 1], tex[i : i + 1], cam_i, light_i, 24, 32)
        assert torch.allclose(both.image[i], one.image[0], atol=1e-6)
        assert torch.equal(both.mask[i], one.mask[0])


def _scene(dtype=torch.float64):
    v, f, uv = _sphere(dtype=dtype)
    tex = torch.rand(1, 3, 6, 6, dtype=dtype, generator=torch.Generator().manual_seed(1))
    weights = torch.rand(1, 3, 20, 20, dtype=dtype, generator=torch.Generator().manual_seed(2))
    return v, f, uv, tex, weights


def test_gradients_match_finite_differences():
    """Gradients reach vertices, texture, camera and light, and agree with finite differences."""
    v, f, uv, tex, weights = _scene()
    renderer = MeshRenderer(f, uv, f)
    cam0 = _front_camera(distance=2.0, focal=1.2)
    light0 = _light((0.8, 0.6, 2.0), colour=(0.7, 0.6, 0.5), ambient=(0.3, 0.2, 0.1))

    def loss(verts, texture, cam_pos, look_at, focal, light_pos, light_col, ambient):
        cam = Camera(cam_pos, look_at, cam0.up, focal)
        light = PointLight(light_pos, light_col, ambient)
        out = renderer(verts, texture, cam, light, 20, 20)
        return (out.image * weights).sum() + 0.1 * out.depth.sum()

    inputs = [
        v[None].clone(),
        tex.clone(),
        cam0.position.clone() + torch.tensor([[0.05, -0.03, 0.0]], dtype=torch.float64),
        cam0.look_at.clone(),
        cam0.focal.clone(),
        light0.position.clone(),
        light0.colour.clone(),
        light0.ambient.clone(),
    ]
    for x in inputs:
        x.requires_grad_(True)
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-7, atol=1e-5, rtol=1e-4)
    # Every input really receives a non-zero gradient.
    grads = torch.autograd.grad(loss(*inputs), inputs)
    for g in grads:
        assert g.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    v, f, uv, tex, _ = _scene(dtype=torch.float32)
    cam = _front_camera(2.0, 1.2, dtype=torch.float32)
    light = _light((0.8, 0.6, 2.0), dtype=torch.float32)
    cpu = MeshRenderer(f, uv, f)(v[None], tex, cam, light, 64, 64)
    dev = torch.device("cuda")
    gpu = MeshRenderer(f, uv, f).to(dev)(
        v[None].to(dev), tex.to(dev), cam.to(dev), PointLight(*(t.to(dev) for t in (light.position, light.colour, light.ambient))), 64, 64
    )
    assert torch.allclose(cpu.image, gpu.image.cpu(), atol=1e-4)


def test_rasterize_empty_when_behind_camera():
    screen = torch.tensor([[[1.0, 1.0, -1.0], [5.0, 1.0, -1.0], [1.0, 5.0, -1.0]]])
    frags = rasterize(screen, torch.tensor([[0, 1, 2]]), 8, 8)
    assert frags.pixel_index.numel() == 0
    assert math.isclose(float(frags.mask().sum()), 0.0)


def test_window_renders_a_crop_of_the_full_view():
    """Rendering a crop window at 2x equals the matching region of a 2x larger full render."""
    v, f, uv, tex, _ = _scene(dtype=torch.float64)
    renderer = MeshRenderer(f, uv, f)
    cam = _front_camera(2.0, 1.2)
    light = _light((0.8, 0.6, 2.0))
    full = renderer(v[None], tex, cam, light, 80, 80)  # photo 40x40 rendered at 2x
    crop = renderer(v[None], tex, cam, light, 40, 40, image_size=(40, 40), window=(10.0, 10.0, 30.0, 30.0))
    assert torch.allclose(crop.image, full.image[:, :, 20:60, 20:60], atol=1e-9)
