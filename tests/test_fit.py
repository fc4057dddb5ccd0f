"""Fitting (paper 3.4) on real photos with the real head model, renderer and dlib."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ganfit.face.detection import find_face
from ganfit.fit.pose import HeadPose, axis_angle_to_matrix
from ganfit.fit.reconstruct import Reconstructor
from ganfit.fit.settings import AppearanceStageSettings, FitSettings
from ganfit.fit.texture_projection import (
    inside_outline,
    mirror_vertex_index,
    outline_weight,
    project_photo_to_uv,
    push_pull_fill,
    skin_likeness,
    skin_outline,
)
from ganfit.io.images import load_photo
from ganfit.models.shape_model import load_default_shape_model
from ganfit.render import MeshRenderer, PointLight

FAST = FitSettings(appearance=AppearanceStageSettings(steps=10, texture_size=256))


@pytest.fixture(scope="module")
def reconstructor(face_detector) -> Reconstructor:
    return Reconstructor(FAST, detector=face_detector)


def test_axis_angle_matches_known_rotation():
    r = axis_angle_to_matrix(torch.tensor([[0.0, np.pi / 2, 0.0]]))
    # A quarter turn about y takes +z to +x.
    assert torch.allclose(r[0] @ torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(axis_angle_to_matrix(torch.zeros(1, 3)), torch.eye(3)[None])


def test_pose_camera_reproduces_the_pose_projection():
    """The paper's camera (position, look-at, up) made from a pose projects like the pose."""
    g = torch.Generator().manual_seed(0)
    pose = HeadPose(
        rotation=torch.randn(2, 3, generator=g) * 0.3,
        offset=torch.randn(2, 2, generator=g) * 0.1,
        log_depth=torch.log(torch.tensor([0.8, 1.5])),
        focal=torch.tensor([1.2, 2.0]),
    )
    pts = torch.randn(2, 10, 3, generator=g) * 0.1
    cam_pts = torch.einsum("bij,bnj->bni", pose.rotation_matrix(), pts) + pose.translation()[:, None]
    direct = torch.stack([cam_pts[..., 0] / cam_pts[..., 2], cam_pts[..., 1] / cam_pts[..., 2]], -1)
    direct = direct * (pose.focal * 640)[:, None, None] + torch.tensor([320.0, 240.0])
    via_camera = pose.camera().project(pts, 640, 480)[..., :2]
    assert torch.allclose(direct, via_camera, atol=1e-3)


@pytest.mark.parametrize("name", ["grace_path", "astronaut_path"])
def test_landmark_stage_is_accurate(name: str, request, reconstructor: Reconstructor):
    photo = load_photo(request.getfixturevalue(name))
    face, fit = reconstructor.fit_landmark_stage(photo)
    measured = (fit.projected[0] - torch.as_tensor(face.landmarks)).norm(dim=-1).mean() / face.interocular
    assert float(measured) == pytest.approx(float(fit.error_iod[0]), rel=1e-5)
    assert float(measured) <= 0.03
    assert fit.losses[-1] < fit.losses[0]


def test_fitting_is_deterministic_on_cpu(grace_path: Path, reconstructor: Reconstructor):
    photo = load_photo(grace_path)
    a = reconstructor.fit_landmark_stage(photo)[1]
    b = reconstructor.fit_landmark_stage(photo)[1]
    assert torch.equal(a.identity, b.identity)
    assert torch.equal(a.expression, b.expression)
    assert a.losses == b.losses


def test_push_pull_fills_holes_smoothly():
    image = torch.zeros(3, 16, 16)
    image[:, :, :8] = 1.0
    weight = torch.zeros(1, 16, 16)
    weight[:, :, :3] = 1.0  # only a left strip is known
    weight[:, :, 13:] = 1.0  # and a right strip (value 0)
    filled = push_pull_fill(image, weight)
    assert torch.allclose(filled[:, :, :3], image[:, :, :3])
    assert torch.allclose(filled[:, :, 13:], image[:, :, 13:])
    row = filled[0, 8]
    assert bool((row[1:] <= row[:-1] + 1e-6).all())  # a monotone ramp between the strips
    assert 0.0 < float(row[8]) < 1.0


def test_mirror_index_pairs_left_and_right():
    model = load_default_shape_model()
    mirror = mirror_vertex_index(model.mean)
    err = (model.mean[mirror] * torch.tensor([-1.0, 1.0, 1.0]) - model.mean).norm(dim=-1)
    assert float(err.median()) < 1e-4  # the head is left/right symmetric
    assert float((mirror[mirror] == torch.arange(len(mirror))).float().mean()) > 0.95


def test_projection_recovers_the_albedo_of_a_rendered_head():
    """Render the head with a known texture and light, project it back: the albedo returns."""
    model = load_default_shape_model()
    verts = model.mean[None]
    lo, hi = model.mean.amin(0), model.mean.amax(0)
    centre = (lo + hi) / 2
    from ganfit.render import Camera

    cam = Camera(centre[None] + torch.tensor([[0.1, 0.05, 0.9]]), centre[None], torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([1.5]))
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 128), torch.linspace(0, 1, 128), indexing="ij")
    texture = torch.stack([0.3 + 0.5 * xs, 0.2 + 0.6 * ys, 0.5 + 0.3 * xs * ys])[None]
    light = PointLight(centre[None] + torch.tensor([[0.5, 0.5, 1.0]]), torch.tensor([[0.7, 0.6, 0.5]]), torch.tensor([[0.3, 0.35, 0.4]]))
    photo = MeshRenderer(model.faces, model.uvs, model.uv_faces)(verts, texture, cam, light, 400, 400).image[0]
    uv = project_photo_to_uv(photo, verts[0], model.faces, model.uvs, model.uv_faces, cam, mirror_vertex_index(model.mean), 128, light)
    seen = uv.confidence[0] > 0.99
    assert float(seen.float().mean()) > 0.2  # the face chart, 58% of the square, is mostly seen
    err = (uv.image - texture[0]).abs().mean(0)[seen]
    assert float(err.mean()) < 0.02


def test_inside_outline_fades_over_the_feather():
    square = torch.tensor([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]])
    points = torch.tensor([[5.0, 5.0], [0.5, 9.5], [11.0, 5.0], [5.0, -1.5], [14.0, 5.0], [-3.0, -3.0]])
    weight = inside_outline(points, square, feather=2.0)
    assert torch.allclose(weight, torch.tensor([1.0, 1.0, 0.5, 0.25, 0.0, 0.0]))
    # Concave (a U open at the top, like the jaw below the brows' notch), and rays through corners.
    u_shape = torch.tensor([[0.0, 0.0], [30.0, 0.0], [30.0, 30.0], [20.0, 30.0], [20.0, 10.0],
                            [10.0, 10.0], [10.0, 30.0], [0.0, 30.0]])
    points = torch.tensor([[5.0, 20.0], [15.0, 20.0], [25.0, 5.0], [15.0, 5.0], [-5.0, 10.0], [15.0, 10.0]])
    weight = inside_outline(points, u_shape, feather=4.0)
    assert torch.allclose(weight, torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0]))


def test_outline_weight_interpolates_the_exact_test():
    generator = torch.Generator().manual_seed(1)
    angles = torch.linspace(0, 2 * torch.pi, 28)[:-1]
    radius = 100 + 20 * torch.rand(27, generator=generator)  # a bumpy, face-sized outline
    outline = torch.stack([300 + radius * angles.cos(), 250 + 1.3 * radius * angles.sin()], -1)
    points = torch.rand(20000, 2, generator=generator) * torch.tensor([600.0, 500.0])
    exact, fast = inside_outline(points, outline, 5.0), outline_weight(points, outline, 5.0)
    assert float((exact - fast).abs().max()) < 0.15  # a grid step is a quarter of the feather
    assert float((exact - fast).abs().mean()) < 1e-3
    assert bool(((exact == 1) == (fast > 0.999))[(exact == 1) | (exact == 0)].float().mean() > 0.99)


def test_skin_likeness_tells_skin_from_sky_and_dark_hair():
    generator = torch.Generator().manual_seed(0)
    skin = torch.tensor([0.80, 0.55, 0.45]) * (1 + 0.05 * torch.randn(500, 1, generator=generator))
    skin = skin + 0.01 * torch.randn(500, 3, generator=generator)
    # Inside the outline also lie eyes, brows and lips: a robust reference ignores them.
    reference = torch.cat([skin, torch.rand(100, 3, generator=generator)])
    likeness = skin_likeness(torch.tensor([
        [0.82, 0.56, 0.46],  # skin
        [0.60, 0.41, 0.34],  # the same skin in shadow (0.75 x)
        [0.45, 0.70, 1.00],  # sky
        [0.20, 0.14, 0.11],  # dark brown hair: skin's hue, a quarter of its brightness
        [0.93, 0.93, 0.93],  # white wall
    ]), reference)
    assert likeness[0] > 0.9 and likeness[1] > 0.9
    assert likeness[2] == 0 and likeness[3] == 0 and likeness[4] < 0.1


def test_skin_outline_pulls_the_jaw_in_and_raises_the_brows(face_detector):
    from ganfit.io.samples import sample_photo

    landmarks = find_face(load_photo(sample_photo("grace_hopper")), None, face_detector).landmarks
    outline = skin_outline(landmarks)
    assert outline.shape == (27, 2)
    centre = landmarks.mean(0)
    jaw_before = np.linalg.norm(landmarks[:17] - centre, axis=1)
    assert np.allclose(np.linalg.norm(outline[:17] - centre, axis=1), 0.9 * jaw_before, rtol=1e-4)
    height = landmarks[8, 1] - landmarks[17:27, 1].mean()
    assert np.allclose(outline[17:, 1], landmarks[26:16:-1, 1] - 0.1 * height, atol=1e-3)
    assert np.allclose(outline[17:, 0], landmarks[26:16:-1, 0], atol=1e-3)


def test_clean_texture_keeps_the_background_off_the_head(grace_path: Path, reconstructor: Reconstructor):
    """grace_hopper's head model reaches past her face onto the blue sky behind her (ears,
    temples) and her hat: with ``skin_only_outside_face`` the texture loses the sky."""
    photo = load_photo(grace_path)
    textures = {}
    for clean in (False, True):
        settings = replace(FAST, appearance=replace(FAST.appearance, skin_only_outside_face=clean),
                           joint=replace(FAST.joint, steps=0))
        textures[clean] = Reconstructor(settings, detector=reconstructor.detector).reconstruct_photo(photo).texture
    def sky(texture: np.ndarray) -> int:
        rgb = texture.astype(np.float32) / 255
        return int((rgb[..., 2] > rgb[..., 0] + 0.1).sum())
    assert sky(textures[False]) > 500
    assert sky(textures[True]) < 0.2 * sky(textures[False])
    # Inside the face the two agree: the cleaning touches only what lies outside its outline.
    centre = (slice(40, 110), slice(80, 176))
    assert np.abs(textures[True][centre].astype(int) - textures[False][centre]).mean() < 3


def test_full_reconstruction_result(grace_path: Path, reconstructor: Reconstructor):
    result = reconstructor.reconstruct(grace_path)
    result.validate()
    assert result.landmark_error_iod <= 0.03
    assert result.texture.shape == (256, 256, 3)
    assert result.preview.shape == (600, 512, 3)
    # The lit render over the face resembles the photo: mean abs difference inside the face.
    photo = load_photo(grace_path).pixels.astype(np.float32)
    lm = result.landmarks_2d
    x0, y0 = lm.min(0).astype(int)
    x1, y1 = lm.max(0).astype(int)
    diff = np.abs(result.preview[y0:y1, x0:x1].astype(np.float32) - photo[y0:y1, x0:x1]).mean() / 255
    assert diff < 0.1  # at 256 px the face chart is ~250 px wide, about the photo's face size
    assert np.all(np.isfinite(result.light.position))
    assert 0 <= result.expression_weights.min() and result.expression_weights.max() <= 1


def test_adam_matches_torch_adam():
    from ganfit.fit.optim import Adam

    g = torch.Generator().manual_seed(3)
    target = torch.randn(5, generator=g)
    ours = torch.zeros(5, requires_grad=True)
    ref = torch.zeros(5, requires_grad=True)
    opt_ours, opt_ref = Adam([ours], lr=0.05), torch.optim.Adam([ref], lr=0.05)
    for _ in range(50):
        for p, opt in ((ours, opt_ours), (ref, opt_ref)):
            opt.zero_grad()
            ((p - target) ** 4).sum().backward()
            opt.step()
    assert torch.allclose(ours, ref, atol=1e-6)


def test_exif_focal_length_sets_the_camera(grace_path: Path, tmp_path: Path, reconstructor: Reconstructor):
    """A photo whose EXIF says 26 mm (35 mm equivalent) is fitted with that field of view."""
    from PIL import Image

    from ganfit.fit.reconstruct import photo_focal

    image = Image.open(grace_path)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 26
    tagged = tmp_path / "tagged.jpg"
    image.save(tagged, exif=exif, quality=95)
    photo = load_photo(tagged)
    assert photo.focal_35mm == 26
    expected = 26 / 43.267 * np.hypot(512, 600) / 512
    assert photo_focal(photo, 1.5) == pytest.approx(expected)
    assert photo_focal(load_photo(grace_path), 1.5) == 1.5
    face, fit = reconstructor.fit_landmark_stage(photo)
    assert float(fit.pose.focal[0]) == pytest.approx(expected, rel=1e-6)
    assert float(fit.error_iod[0]) <= 0.03


def test_landmark_solve_recovers_a_head_from_a_far_start():
    """GANFit++'s Gauss-Newton start (``solve_landmarks``): from a start far from the truth (a
    shared identity offset of 1 std, as the regression network gives, wrong expressions, a
    turned and shifted pose) it lands near the head that made the landmarks, for two photos of
    one person, keeping expressions in range."""
    from ganfit.fit.landmark_stage import interocular, solve_landmarks

    model = load_default_shape_model()
    g = torch.Generator().manual_seed(3)
    ki, ke = model.num_identity, model.num_expression
    truth_id = torch.randn(1, ki, generator=g) * 0.3
    truth_exp = torch.rand(2, ke, generator=g) * 0.2
    truth = HeadPose(rotation=torch.tensor([[0.0, 0.3, 0.0], [0.1, -0.2, 0.0]]), offset=torch.tensor([[0.02, -0.01], [0.0, 0.03]]),
                     log_depth=torch.log(torch.tensor([0.9, 1.2])), focal=torch.tensor([1.5, 1.5]))
    sizes = torch.tensor([[400.0, 400.0], [500.0, 300.0]])
    points = model.vertices(truth_id.expand(2, -1) * model.identity_std, truth_exp, indices=model.landmark_indices)
    landmarks = torch.stack([truth.camera().view(b).project(points[b:b + 1], *sizes[b].tolist())[0, :, :2] for b in range(2)])
    start = HeadPose(truth.rotation + 0.08, truth.offset + 0.02, truth.log_depth + 0.05, truth.focal)

    def error(pose: HeadPose, identity: torch.Tensor, expression: torch.Tensor) -> float:
        marks = model.vertices(identity.expand(2, -1) * model.identity_std, expression, indices=model.landmark_indices)
        projected = torch.stack([pose.camera().view(b).project(marks[b:b + 1], *sizes[b].tolist())[0, :, :2] for b in range(2)])
        return float(((projected - landmarks).norm(dim=-1).mean(-1) / interocular(landmarks)).mean())

    start_id, start_exp = truth_id + 1.0, (truth_exp + 0.3).clamp(0, 1)
    pose, identity, expression = solve_landmarks(model, landmarks, sizes, start, start_id, start_exp,
                                                 landmark_weight=50.0, identity_prior_weight=2e-4, expression_prior_weight=1e-4)
    assert error(start, start_id, start_exp) > 0.05
    assert error(pose, identity, expression) < 0.01  # within 1% of the eye-corner distance
    assert float((identity - truth_id).square().mean().sqrt()) < 0.5  # the offset of 1 std mostly gone
    assert float((pose.rotation - truth.rotation).abs().max()) < 0.03
    assert bool(((expression >= model.expression_min) & (expression <= model.expression_max)).all())
    assert identity.shape == (1, ki) and expression.shape == (2, ke) and pose.log_depth.shape == (2,)
