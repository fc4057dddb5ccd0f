"""The full objective as a module of its own (issue 19, item 1): ``FitParams`` for a batch of
*different* photos in, every term of eq. 13 by name out, with gradients to every parameter.
Real photos, the real renderer and the real identity network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ganfit.face.dlib_identity import DlibIdentity
from ganfit.fit.joint_stage import prepare_target
from ganfit.fit.reconstruct import Reconstructor
from ganfit.fit.settings import FitSettings, JointStageSettings, LandmarkStageSettings
from ganfit.io.images import load_photo
from ganfit.io.samples import sample_photo
from ganfit.objective import FullObjective
from ganfit.params import FitParams, LightParams
from ganfit.render import PointLight


@pytest.fixture(scope="module")
def two_people(tmp_path_factory):
    """grace_hopper and astronaut after the landmark stage: two different people, one batch."""
    identity_net = DlibIdentity()
    reconstructor = Reconstructor(FitSettings(landmark=LandmarkStageSettings(steps=150)), identity=identity_net)
    cache = tmp_path_factory.mktemp("photos")
    fits, targets = [], []
    for name in ("grace_hopper", "astronaut"):
        photo = load_photo(sample_photo(name, cache_dir=cache))
        face, fit = reconstructor.fit_landmark_stage(photo)
        pixels = torch.from_numpy(np.array(photo.pixels)).permute(2, 0, 1).float() / 255
        targets.append(prepare_target(pixels, face.landmarks, identity_net, JointStageSettings().render_size))
        fits.append(fit)
    return reconstructor, identity_net, fits, targets


def _params(reconstructor, fits) -> FitParams:
    from ganfit.fit.pose import HeadPose

    pose = HeadPose(*(torch.cat([getattr(f.pose, k) for f in fits]).detach().clone().requires_grad_(True)
                      for k in ("rotation", "offset", "log_depth", "focal")))
    identity = torch.cat([f.identity for f in fits]).detach().clone().requires_grad_(True)  # (2, Ki): two people
    expression = torch.cat([f.expression for f in fits]).detach().clone().requires_grad_(True)
    model = reconstructor.model
    with torch.no_grad():
        centre = model.vertices(identity * model.identity_std, expression).mean(1)
    light = PointLight(centre + torch.tensor([[0.0, 0.3, 0.6]]), torch.full((2, 3), 0.6), torch.full((2, 3), 0.4))
    lights = LightParams.from_light(light, centre)
    for tensor in lights.parameters():
        tensor.requires_grad_(True)
    return FitParams(pose=pose, identity=identity, expression=expression, light=lights)


def test_every_term_by_name_for_a_batch_of_different_photos(two_people) -> None:
    reconstructor, identity_net, fits, targets = two_people
    objective = FullObjective(reconstructor.model, reconstructor.renderer, identity_net, JointStageSettings())
    params = _params(reconstructor, fits)
    texture = torch.full((1, 3, 64, 64), 0.6)
    out = objective(params, targets, texture, torch.Generator().manual_seed(0))
    assert set(out.terms) == {"identity", "random_pose", "content", "pixel", "landmark", "prior"}
    for name, value in out.terms.items():
        assert value.shape == (2,) and torch.isfinite(value).all(), name
    weights = objective.weights()
    expected = sum(weights[k] * out.terms[k].mean() for k in out.terms)
    assert torch.allclose(out.total, expected)
    assert out.vertices.shape == (2, reconstructor.model.num_vertices, 3)
    # Each person keeps their own identity: the two heads differ.
    assert (out.vertices[0] - out.vertices[1]).norm(dim=-1).mean() > 1e-3

    out.total.backward()
    for name, tensor in [("rotation", params.pose.rotation), ("identity", params.identity),
                         ("expression", params.expression), ("light direction", params.light.direction),
                         ("light colour", params.light.colour), ("ambient", params.light.ambient)]:
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all(), name
        assert (tensor.grad.abs().sum(-1) > 0).all(), f"{name}: a photo's row got no gradient"


def test_rows_are_independent(two_people) -> None:
    """Photo 0's terms are the same in a batch with another person as alone (the random-pose
    term draws from the generator, so it is off here)."""
    reconstructor, identity_net, fits, targets = two_people
    objective = FullObjective(reconstructor.model, reconstructor.renderer, identity_net,
                              JointStageSettings(random_pose_weight=0.0))
    texture = torch.full((1, 3, 64, 64), 0.6)
    both = objective(_params(reconstructor, fits), targets, texture, torch.Generator())
    alone = objective(_params(reconstructor, fits[:1]), targets[:1], texture, torch.Generator())
    for name in ("identity", "content", "pixel", "landmark", "prior"):
        assert torch.allclose(both.terms[name][0], alone.terms[name][0], rtol=1e-4, atol=1e-6), name


def test_params_move_between_devices_and_dtypes(two_people) -> None:
    reconstructor, _, fits, _ = two_people
    params = _params(reconstructor, fits).detach()
    double = params.to(dtype=torch.float64)
    assert double.identity.dtype == torch.float64 and double.pose.rotation.dtype == torch.float64
    assert double.light.distance.dtype == torch.float64 and double.batch == 2
    assert torch.equal(double.to(dtype=torch.float32).expression, params.expression)


def test_a_texture_per_photo_and_one_photos_row(two_people) -> None:
    """B texture rows are B photos' own textures; FitParams.row(b) is photo b alone, and the
    batch's terms are each photo's terms (random pose off: it draws from the generator)."""
    reconstructor, identity_net, fits, targets = two_people
    objective = FullObjective(reconstructor.model, reconstructor.renderer, identity_net,
                              JointStageSettings(random_pose_weight=0.0))
    params = _params(reconstructor, fits).detach()
    textures = torch.stack([torch.full((3, 8, 8), 0.3), torch.full((3, 8, 8), 0.8)])
    both = objective(params, targets, textures, torch.Generator())
    for b in range(2):
        alone = objective(params.row(b), targets[b:b + 1], textures[b:b + 1], torch.Generator())
        assert params.row(b).batch == 1
        for name in ("identity", "pixel", "landmark", "prior"):
            assert torch.allclose(both.terms[name][b], alone.terms[name][0], rtol=1e-4, atol=1e-6), (b, name)
    swapped = objective(params, targets, textures.flip(0), torch.Generator())
    assert not torch.allclose(both.terms["pixel"], swapped.terms["pixel"])  # each photo used its own texture
