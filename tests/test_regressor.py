"""The Fast-GANFit encoder (paper 4, Fig. 3) and its trainer (issue 19, items 2 and 3): real
photos, the real shape model, renderer, dlib landmarks and identity network; tiny runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ganfit.errors import GanfitError
from ganfit.face.detection import find_face
from ganfit.face.dlib_identity import DlibIdentity
from ganfit.fit.pose import initial_pose
from ganfit.io.images import load_photo
from ganfit.io.samples import sample_photo
from ganfit.models.shape_model import load_default_shape_model
from ganfit.regress import EncoderConfig, RegressionEncoder, encoder_inputs
from ganfit.train.regressor import (RegressorTrainConfig, build_cache, is_held_out, landmark_error, list_photos,
                                    load_checkpoint, train)

UTKFACE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "utkface" / "crop_part1"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Two sample photos, plus four UTKFace photos when the data set is here."""
    folder = tmp_path_factory.mktemp("regressor-photos")
    for name in ("grace_hopper", "astronaut"):
        shutil.copy(sample_photo(name, cache_dir=tmp_path_factory.mktemp("samples")), folder / f"{name}.png")
    if UTKFACE.is_dir():
        for path in sorted(UTKFACE.iterdir())[:4]:
            shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def cache(photos, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("regressor-cache")
    build_cache(list_photos(photos), folder)
    return folder


def _config(tmp_path: Path, photos: Path, cache: Path, **overrides) -> RegressorTrainConfig:
    values = dict(out=str(tmp_path / "run"), data=str(photos), cache=str(cache), held_out=0.0, batch=4,
                  stage1_steps=4, checkpoint_every=1000, sample_every=0, progress=False)
    values.update(overrides)
    return RegressorTrainConfig(**values)


def test_untrained_encoder_renders_the_mean_face_where_the_landmark_stage_starts(photos) -> None:
    """Paper 5.1: the zero-initialised output layer gives identity 0, expression 0, the landmark
    stage's initial pose and the appearance stage's initial light, whatever the input."""
    model = load_default_shape_model()
    torch.manual_seed(1)
    encoder = RegressionEncoder(model)
    photo = load_photo(photos / "grace_hopper.png")
    face = find_face(photo)
    pixels = torch.from_numpy(np.array(photo.pixels)).permute(2, 0, 1).float() / 255
    inputs = encoder_inputs(pixels, face.landmarks, 1.5, DlibIdentity())
    params = encoder(inputs).params

    assert params.identity.abs().max() == 0 and params.expression.abs().max() == 0
    zeros_i, zeros_e = torch.zeros(1, model.num_identity), torch.zeros(1, model.num_expression)
    neutral = model.vertices(zeros_i, zeros_e, indices=model.landmark_indices)
    start = initial_pose(inputs.landmarks, neutral, inputs.image_size[:, 0], inputs.image_size[:, 1], inputs.focal)
    for name in ("rotation", "offset", "log_depth", "focal"):
        assert torch.allclose(getattr(params.pose, name), getattr(start, name), atol=1e-6), name
    error = float(landmark_error(params, inputs, model)[0].detach())
    from ganfit.params import FitParams

    reference = float(landmark_error(FitParams(pose=start, identity=zeros_i, expression=zeros_e,
                                               light=params.light), inputs, model)[0])
    assert error == pytest.approx(reference, abs=1e-5)
    assert error < 0.2, "the mean face should sit over the detected face"
    # Ordinary light: from the camera's side, colour 0.6, ambient 0.4.
    camera = params.camera()
    towards = camera.position - params.light.centre
    assert torch.cosine_similarity(params.light.direction, towards, dim=-1) > 0.9
    assert torch.allclose(params.light.colour, torch.full((1, 3), 0.6))
    assert torch.allclose(params.light.ambient, torch.full((1, 3), 0.4))
    assert params.texture_latent is None
    assert 2e5 < encoder.num_parameters() < 3e6

    with_latent = RegressionEncoder(model, EncoderConfig(texture_latent_dim=7))(inputs).params
    assert with_latent.texture_latent is not None and with_latent.texture_latent.shape == (1, 7)
    assert with_latent.texture_latent.abs().max() == 0


def test_stage_one_lowers_the_landmark_loss(tmp_path, photos, cache) -> None:
    result = train(_config(tmp_path, photos, cache, stage1_steps=30))
    assert result.step == 30 and len(result.losses) == 30
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < 0.85 * first, (first, last)


def test_resume_continues_at_the_right_step_as_an_unbroken_run(tmp_path, photos, cache) -> None:
    unbroken = train(_config(tmp_path / "a", photos, cache, stage1_steps=6, checkpoint_every=2))
    train(_config(tmp_path / "b", photos, cache, stage1_steps=4, checkpoint_every=2))
    resumed = train(_config(tmp_path / "b", photos, cache, stage1_steps=6, checkpoint_every=2), resume=True)
    assert resumed.step == 6 and len(resumed.losses) == 2
    assert resumed.checkpoint is not None and resumed.checkpoint.name == "step-0000006.pt"
    np.testing.assert_allclose(resumed.losses, unbroken.losses[4:], rtol=1e-5)
    a, b = load_checkpoint(unbroken.checkpoint)["encoder"], load_checkpoint(resumed.checkpoint)["encoder"]
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    with pytest.raises(GanfitError, match="no checkpoint"):
        train(_config(tmp_path / "c", photos, cache), resume=True)


def test_stage_two_step_is_finite_and_writes_a_sample_sheet(tmp_path, photos, cache) -> None:
    from PIL import Image

    config = _config(tmp_path, photos, cache, stage1_steps=0, stage2_steps=1, stage2_batch=2, sample_every=1,
                     sample_photos=2)
    result = train(config)
    assert result.step == 1 and np.isfinite(result.losses).all()
    sheet = Image.open(Path(config.out) / "samples" / "step-0000001.png")
    size = config.objective.render_size
    assert sheet.size == (3 * size, 2 * size)  # photo | render | random-pose render, one row per photo
    pixels = np.asarray(sheet).astype(float)
    assert pixels[:, size:2 * size].std() > 5 and pixels[:, 2 * size:].std() > 5


def test_reframing_moves_the_face_but_not_what_the_encoder_sees_of_it(photos) -> None:
    """A photo pasted into a 3x larger virtual photo: the chip and identity features stay, the
    landmarks move with the paste, and the framing input says the face is 3x smaller in view."""
    from ganfit.regress.encoder import framing, inputs_from_targets
    from ganfit.train.regressor import Reframing, photo_target
    from ganfit.fit.settings import JointStageSettings

    path = photos / "grace_hopper.png"
    face = find_face(load_photo(path))
    identity_net = DlibIdentity()
    marks = torch.as_tensor(face.landmarks, dtype=torch.float32)
    plain = photo_target(path, marks, JointStageSettings(), identity_net)
    width, height = plain.size
    frame = Reframing(size=torch.tensor([[3 * width, 3 * height]]), corner=torch.tensor([[400, 250]]))
    moved = photo_target(path, marks + torch.tensor([400.0, 250.0]), JointStageSettings(), identity_net,
                         (frame.size[0], frame.corner[0]))
    focal = torch.tensor([1.5])
    before, after = inputs_from_targets([plain], focal), inputs_from_targets([moved], focal)
    assert torch.allclose(after.chip, before.chip, atol=1e-4)
    assert torch.allclose(after.identity, before.identity, atol=1e-3)
    assert torch.allclose(frame.apply(before).landmarks, after.landmarks)
    assert torch.equal(frame.apply(before).image_size, after.image_size)
    size_before, size_after = framing(before)[0, 0], framing(after)[0, 0]
    assert abs(float(size_before - size_after) - np.log(3.0)) < 1e-4


def test_limit_takes_a_uniform_sample_not_the_youngest(tmp_path) -> None:
    """UTKFace's names start with the age: the first N in name order were all small children."""
    folder = tmp_path / "ages"
    folder.mkdir()
    for age in range(1, 91):
        for i in range(5):
            (folder / f"{age}_0_0_2017{i:04d}.jpg.chip.jpg").write_bytes(b"")
    ages = [int(p.name.split("_")[0]) for p in list_photos(folder, limit=90)]
    assert 30 < sum(ages) / len(ages) < 60 and max(ages) > 70


def test_held_out_split_is_by_name_and_never_trained_on(tmp_path, photos, cache) -> None:
    names = [f"{i}_0_0_2017.jpg" for i in range(2000)]
    held = [n for n in names if is_held_out(n, 0.05)]
    assert 60 < len(held) < 140 and held == [n for n in names if is_held_out(n, 0.05)]
    assert not any(is_held_out(n, 0.0) for n in names)
    # The identity benchmark's 20 photos (Table I's UTKFace photos) are never trained on, as
    # they are never in the texture GAN's training set: one rule for the whole project.
    from ganfit.texture.dataset import OBJECTIVE_TEST_PHOTOS

    assert all(is_held_out(name, 0.0) for name in OBJECTIVE_TEST_PHOTOS)
    # Held-out photos are not in the training set: with 0.5 held out, the run trains on the rest.
    files = list_photos(photos)
    trained = [p for p in files if not is_held_out(p.name, 0.5)]
    with pytest.raises(GanfitError, match="held-out"):
        train(_config(tmp_path, photos, cache, held_out=1.0))
    if trained:
        from ganfit.train.regressor import load_cache, split_photos

        train_paths, held_paths = split_photos(files, 0.5)
        assert set(train_paths) == set(trained) and not set(train_paths) & set(held_paths)


def test_bad_input_is_a_one_line_error(tmp_path, photos, cache) -> None:
    with pytest.raises(GanfitError, match="no such folder"):
        train(_config(tmp_path, tmp_path / "missing", cache))
    with pytest.raises(GanfitError, match="steps"):
        train(_config(tmp_path, photos, cache, stage1_steps=0, stage2_steps=0))


def test_two_processes_with_torchrun_on_gloo_run_both_stages_and_write_one_checkpoint(tmp_path, photos, cache) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "ganfit", "train-regressor", "--out", str(out), "--data", str(photos), "--cache", str(cache),
               "--held-out", "0", "--stage1-steps", "3", "--batch", "4", "--stage2-steps", "1", "--stage2-batch", "2",
               "--checkpoint-every", "4", "--sample-every", "0", "--no-progress", "-v"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stderr  # both ranks joined one gloo group
    checkpoints = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["step-0000004.pt"]  # 3 landmark steps, 1 full-objective step
    state = load_checkpoint(checkpoints[0])
    assert state["step"] == 4
    assert not (out / "samples").exists()
