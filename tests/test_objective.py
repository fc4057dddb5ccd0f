"""The GANFit objective (issue 4): differentiable alignment, the loss terms, the joint stage,
switching terms off, and multi-image fitting from the CLI. Real photos, the real renderer, the
real identity network; dlib itself is the reference for the chips."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganfit.face.alignment import ChipWarp, crop_window, extract_chips, gaussian_blur
from ganfit.face.detection import default_detector, find_face
from ganfit.face.dlib_identity import DlibIdentity, dlib_chip_warp
from ganfit.face.recognition import default_model_path
from ganfit.fit.joint_stage import fit_joint, prepare_target, random_view
from ganfit.fit.losses import content_loss, identity_loss, landmark_loss, pixel_loss
from ganfit.fit.reconstruct import Reconstructor
from ganfit.fit.settings import AppearanceStageSettings, FitSettings, JointStageSettings, LandmarkStageSettings
from ganfit.io.images import load_photo
from ganfit.io.samples import sample_photo
from ganfit.render import Camera

FAST = FitSettings(
    landmark=LandmarkStageSettings(steps=150),
    appearance=AppearanceStageSettings(steps=20, texture_size=256),
    joint=JointStageSettings(steps=6),
)


@pytest.fixture(scope="module")
def grace():
    photo = load_photo(sample_photo("grace_hopper"))
    face = find_face(photo, None, default_detector())
    pixels = torch.from_numpy(np.array(photo.pixels)).permute(2, 0, 1).float() / 255
    return photo, face, pixels


@pytest.fixture(scope="module")
def identity_net() -> DlibIdentity:
    return DlibIdentity()


# --- differentiable alignment ---------------------------------------------------------------


def test_chip_matches_dlibs_own_chip(grace) -> None:
    """The grid_sample warp cuts the same chip dlib cuts (dlib.get_face_chip) from the photo."""
    import dlib

    photo, face, pixels = grace
    image = np.array(photo.pixels)
    parts = [dlib.point(int(round(x - 0.5)), int(round(y - 0.5))) for x, y in face.landmarks]
    shape = dlib.full_object_detection(dlib.rectangle(0, 0, 1, 1), parts)
    reference = np.ascontiguousarray(dlib.get_face_chip(image, shape, 150, 0.25))

    warp = dlib_chip_warp(face.landmarks)
    window = warp.window()
    chip = extract_chips(crop_window(pixels[None], window, 224), [window], [warp])
    ours = (chip[0].permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    assert np.abs(ours.astype(float) - reference).mean() < 5.0  # of 255; dlib does not prefilter

    model = dlib.face_recognition_model_v1(str(default_model_path()))
    d_ref = np.array(model.compute_face_descriptor(reference))
    d_ours = np.array(model.compute_face_descriptor(np.ascontiguousarray(ours)))
    assert np.linalg.norm(d_ref - d_ours) < 0.08  # dlib's same-person threshold is 0.6


def test_gradients_flow_from_descriptor_to_window_image(grace, identity_net) -> None:
    photo, face, pixels = grace
    warp = dlib_chip_warp(face.landmarks)
    window = warp.window()
    image = crop_window(pixels[None], window, 224).requires_grad_(True)
    descriptor = identity_net.embed(extract_chips(image, [window], [warp]))
    (grad,) = torch.autograd.grad(descriptor.norm(), image)
    inside = grad.abs().sum(1)[0]
    assert float(inside.abs().sum()) > 0
    # The window's corners lie outside the (rotated) chip: no gradient reaches them.
    assert float(inside[:3, :3].abs().sum()) == 0.0


def test_faces_larger_than_the_chip_do_not_alias() -> None:
    """A 1-pixel checkerboard seen at 3.7 image pixels per chip pixel must come out as flat grey,
    not as a moire of black and white."""
    size = 600
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    board = ((xx + yy) % 2).float().expand(1, 3, size, size)
    warp = ChipWarp(np.array([[3.7, 0.0, 0.8], [0.0, 3.7, 0.8]]), 150)
    window = (0.0, 0.0, float(size), float(size))
    chip = extract_chips(crop_window(board, window, 400), [window], [warp])
    assert abs(float(chip.mean()) - 0.5) < 0.02
    assert float(chip[..., 5:-5, 5:-5].std()) < 0.02
    naive = torch.nn.functional.grid_sample(board, warp.grid(window), align_corners=False)
    assert float(naive.std()) > 5 * float(chip[..., 5:-5, 5:-5].std()) + 0.05  # what the prefilter prevents


def test_gaussian_blur_keeps_constants_and_mass() -> None:
    image = torch.full((1, 3, 20, 20), 0.7)
    assert torch.allclose(gaussian_blur(image, 1.5), image, atol=1e-6)
    spike = torch.zeros(1, 1, 31, 31)
    spike[0, 0, 15, 15] = 1
    assert abs(float(gaussian_blur(spike, 2.0).sum()) - 1.0) < 1e-5


def test_content_features_fast_path_matches_reference(identity_net) -> None:
    net = identity_net.network
    torch.manual_seed(0)
    chips = torch.rand(2, 3, 150, 150)
    outs = []
    for run in (net.features, lambda x: net._reference(x, with_features=True)):
        x = chips.clone().requires_grad_(True)
        descriptor, acts = run(x)
        gen = torch.Generator().manual_seed(1)
        loss = descriptor.sum() + sum((a * torch.randn(a.shape, generator=gen)).sum() for a in acts)
        (grad,) = torch.autograd.grad(loss, x)
        outs.append((descriptor.detach(), [a.detach() for a in acts], grad))
    (d1, a1, g1), (d2, a2, g2) = outs
    assert len(a1) == 4 and [a.shape[1] for a in a1] == [32, 64, 128, 256]
    assert float((d1 - d2).abs().max()) < 1e-4
    assert all(float((p - q).abs().max()) < 1e-4 for p, q in zip(a1, a2))
    assert float((g1 - g2).abs().max() / g2.abs().max()) < 1e-4


# --- loss terms -----------------------------------------------------------------------------


def test_loss_terms_values() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    assert torch.allclose(identity_loss(a, b), torch.tensor([0.0, 1.0]))
    feats = [torch.ones(2, 4, 3, 3), torch.ones(2, 8, 1, 1)]
    assert torch.allclose(content_loss(feats, feats), torch.zeros(2))
    assert torch.allclose(content_loss([2 * f for f in feats], feats), torch.ones(2))
    image = torch.zeros(1, 3, 4, 4)
    target = torch.full((1, 3, 4, 4), 0.5)
    weight = torch.zeros(1, 1, 4, 4)
    weight[..., :2, :] = 1
    assert torch.allclose(pixel_loss(image, target, weight), torch.tensor([0.5]))
    marks = torch.zeros(1, 68, 2)
    assert torch.allclose(landmark_loss(marks + torch.tensor([3.0, 4.0]), marks, torch.tensor([10.0])), torch.tensor([0.25]))


def test_random_view_orbits_the_head_centre() -> None:
    centre = torch.tensor([[0.0, 0.1, 0.0]])
    camera = Camera(position=torch.tensor([[0.0, 0.1, 1.0]]), look_at=centre.clone(), up=torch.tensor([[0.0, 1.0, 0.0]]), focal=torch.tensor([1.5]))
    turned = random_view(camera, centre, math.radians(90), 0.0)
    assert torch.allclose(turned.position, torch.tensor([[1.0, 0.1, 0.0]]), atol=1e-6)
    assert torch.allclose(turned.look_at, centre, atol=1e-6)
    assert torch.allclose((turned.position - centre).norm(), torch.tensor(1.0))


# --- the joint stage ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage1(grace, identity_net):
    photo, face, pixels = grace
    reconstructor = Reconstructor(replace(FAST, joint=replace(FAST.joint, steps=0)), identity=identity_net)
    result = reconstructor.reconstruct_photo(photo)
    _, fit = reconstructor.fit_landmark_stage(photo)
    return reconstructor, result, fit


def _run_joint(stage1, grace, identity_net, settings: JointStageSettings):
    reconstructor, result, fit = stage1
    photo, face, pixels = grace
    events = []
    target = prepare_target(pixels, face.landmarks, identity_net, settings.render_size)
    texture = torch.from_numpy(result.texture).permute(2, 0, 1)[None].float() / 255
    from ganfit.render import PointLight

    light = PointLight(*(torch.tensor(np.asarray(v))[None].float() for v in (result.light.position, result.light.colour, result.light.ambient)))
    joint = fit_joint(
        reconstructor.model, reconstructor.renderer, identity_net, [target], fit.pose, fit.identity, fit.expression,
        light, texture, settings, progress=events.append,
    )
    return joint, events


def test_joint_stage_lowers_the_objective_and_keeps_landmarks(stage1, grace, identity_net) -> None:
    steps = 20
    joint, events = _run_joint(stage1, grace, identity_net, JointStageSettings(steps=steps, random_pose_weight=0.0))
    totals = joint.losses["total"]
    assert len(totals) == steps and all(math.isfinite(x) for x in totals)
    # With the fixed projected texture, moving the geometry first costs pixel loss (the texture
    # slides against the photo); the identity term is what the stage buys, and it must fall.
    identity = joint.losses["identity"]
    assert sum(identity[-3:]) / 3 < 0.85 * identity[0]
    assert min(totals[-3:]) < 1.2 * totals[0]
    assert joint.losses["landmark"][-1] < 0.03**2 * 2  # about 3% of the eye-corner distance
    assert [e.step for e in events if e.stage == "fitting"] == list(range(1, steps + 1))
    assert events[-1].vertices is not None and events[-1].vertices.shape == (stage1[0].model.num_vertices, 3)
    assert set(events[0].losses) >= {"identity", "content", "pixel", "landmark", "prior", "total"}


def test_each_term_can_be_switched_off(stage1, grace, identity_net) -> None:
    off = JointStageSettings(steps=2, identity_weight=0, random_pose_weight=0, content_weight=0, pixel_weight=0)
    joint, events = _run_joint(stage1, grace, identity_net, off)
    assert set(events[0].losses) == {"landmark", "prior", "total"}
    assert joint.losses["identity"] == [0.0, 0.0]
    random_only = replace(off, random_pose_weight=1.0)
    joint, events = _run_joint(stage1, grace, identity_net, random_only)
    assert set(events[0].losses) == {"random_pose", "landmark", "prior", "total"}
    assert 0 < joint.losses["random_pose"][0] < 1


def test_reconstruction_records_objective_losses(grace, identity_net) -> None:
    photo, _, _ = grace
    result = Reconstructor(FAST, identity=identity_net).reconstruct_photo(photo)
    assert len(result.losses["joint_total"]) == FAST.joint.steps
    assert result.settings["identity_network"] == "dlib-resnet-v1"
    assert result.landmark_error_iod < 0.035


# --- multi-image fitting (paper 3.5) ----------------------------------------------------------


def test_cli_fits_three_photos_of_one_person(tmp_path: Path) -> None:
    """Three photos of Grace Hopper (the sample, mirrored, and a tighter crop at another size):
    one head, one texture, a camera and an expression per photo."""
    source = Image.open(sample_photo("grace_hopper")).convert("RGB")
    paths = [tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "c.png"]
    source.save(paths[0])
    source.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(paths[1])
    w, h = source.size
    source.crop((w // 8, h // 10, w - w // 8, h - h // 4)).resize((400, 460)).save(paths[2])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ganfit", "reconstruct", *map(str, paths), "-o", str(out), "-q",
           "--steps", "150", "--lighting-steps", "10", "--fit-steps", "3", "--texture-size", "256", "--no-exports"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    document = json.loads((out / "result.json").read_text())
    assert [Path(p).name for p in document["photos"]] == ["a.jpg", "b.jpg", "c.png"]
    views = document["views"]
    assert len(views) == 3
    assert [v["camera"]["width"] for v in views] == [w, w, 400]
    positions = np.array([v["camera"]["position"] for v in views])
    # One camera per photo: the tighter crop is seen from closer.
    assert np.linalg.norm(positions[2]) < 0.9 * np.linalg.norm(positions[0])
    assert all(len(v["expression_weights"]) == len(document["expressions"]) for v in views)
    assert all(v["landmark_error_iod"] < 0.05 for v in views)
    assert len(document["losses"]["joint_total"]) == 3
    assert "a.jpg" in proc.stdout and "wrote" in proc.stdout


def test_cli_rejects_bad_loss_weights(tmp_path: Path) -> None:
    photo = str(sample_photo("grace_hopper"))
    for bad in ("identity", "colour=1", "pixel=-1", "pixel=abc"):
        proc = subprocess.run([sys.executable, "-m", "ganfit", "reconstruct", photo, "-o", str(tmp_path / "x"),
                               "--loss-weight", bad], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        assert proc.stderr.startswith("ganfit: error: --loss-weight") and proc.stderr.count("\n") == 1
        assert not (tmp_path / "x").exists()


# --- fitting with a texture model (issue 5, item 6) ------------------------------------------


def test_texture_model_latent_is_fitted(grace, identity_net, tmp_path: Path) -> None:
    """With a texture model the texture is its decoded latent, optimised in stage 2 (eq. 6);
    here a small PCA model (64 px, 8 components) whose mean is flat skin."""
    from ganfit.texture.pca import PcaTextureModel

    size, k = 64, 8
    generator = torch.Generator().manual_seed(0)
    mean = torch.tensor([0.75, 0.55, 0.45])[:, None, None].expand(3, size, size).contiguous()
    basis = torch.linalg.qr(torch.randn(3 * size * size, k, generator=generator))[0].T.contiguous()
    path = PcaTextureModel(mean, basis, torch.full((k,), 4.0)).save(tmp_path / "pca.npz")

    photo, _, _ = grace
    settings = replace(FAST, texture_model=str(path), joint=replace(FAST.joint, steps=8))
    result = Reconstructor(settings, identity=identity_net).reconstruct_photo(photo)
    assert result.texture_model.startswith("PCA texture model pca.npz")
    assert len(result.losses["joint_texture_prior"]) == 8 and result.losses["joint_texture_prior"][-1] > 0
    assert result.texture.shape == (FAST.appearance.texture_size, FAST.appearance.texture_size, 3)
    # The texture left the mean: the latent moved toward the photo.
    assert np.abs(result.texture.astype(float) / 255 - np.array([0.75, 0.55, 0.45])).mean() > 0.005
    assert result.losses["joint_pixel"][-1] < result.losses["joint_pixel"][0]
    assert not any(k.startswith("refine_") for k in result.losses)  # refinement is off by default

    refined = Reconstructor(replace(settings, joint=replace(settings.joint, texture_refine_steps=6)),
                            identity=identity_net).reconstruct_photo(photo)
    assert refined.texture_model.endswith("per-texel refinement (6 steps)")
    assert len(refined.losses["refine_pixel"]) == 6
    assert refined.losses["refine_pixel"][-1] < refined.losses["refine_pixel"][0]


def test_cli_rejects_missing_texture_model(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "ganfit", "reconstruct", str(sample_photo("grace_hopper")),
                           "-o", str(tmp_path / "x"), "--texture-model", str(tmp_path / "none.npz")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("ganfit: error: --texture-model")
    assert not (tmp_path / "x").exists()
