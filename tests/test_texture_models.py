"""Texture models (issue 5): PCA baseline, the texture GAN's trainer and export, KID, sharpness.

All on CPU with a synthetic UV folder of smooth random textures laid out as the texture-set
builder writes them (``<stem>.png``, ``<stem>_conf.png``, ``split.json``), and a tiny GAN.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ganfit.errors import GanfitError
from ganfit.texture.gan import CoefficientDiscriminator, GanTextureModel, Generator
from ganfit.texture.metrics import (
    DlibFeatureExtractor,
    high_frequency_ratio,
    kid,
    kid_difference,
    laplacian_energy,
    sharpness,
)
from ganfit.texture.model import TextureModel, UvTextureSet, load_texture_model, resolve_texture_model
from ganfit.texture.pca import PcaFitSettings, PcaTextureModel, fit_pca, fit_pca_arrays
from ganfit.texture.train import (
    PRESETS,
    TrainConfig,
    config_from_args,
    export_generator,
    latest_checkpoint,
    register,
    train_texture,
)

SIZE = 32
COUNT = 30
TEST_NAMES = 5


def smooth_textures(count: int, size: int, seed: int, factors: int = 8) -> np.ndarray:
    """``(count, size, size, 3)`` uint8: a skin-like base colour plus a random mix of ``factors``
    smooth patterns with decaying strength (a low-dimensional set, as faces are) and a little
    smooth detail of each map's own."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.tensor([0.75, 0.55, 0.45])[None, :, None, None]
    patterns = F.interpolate(torch.randn(factors, 3, 5, 5, generator=gen), size=(size, size), mode="bicubic",
                             align_corners=False)
    weights = torch.randn(count, factors, generator=gen) * 0.1 / torch.arange(1, factors + 1).sqrt()
    detail = F.interpolate(torch.randn(count, 1, 9, 9, generator=gen) * 0.01, size=(size, size), mode="bicubic",
                           align_corners=False)
    textures = base + torch.einsum("nf,fchw->nchw", weights, patterns) + detail
    return (textures.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def uv_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("uv")
    images = smooth_textures(COUNT, SIZE, seed=1)
    rng = np.random.default_rng(2)
    names = [f"face{i:03d}" for i in range(COUNT)]
    for name, image in zip(names, images):
        Image.fromarray(image).save(folder / f"{name}.png")
        conf = (rng.uniform(0.2, 1.0, (SIZE, SIZE)) * 255).astype(np.uint8)
        Image.fromarray(conf).save(folder / f"{name}_conf.png")
    split = {"train": [f"{n}.png" for n in names[TEST_NAMES:]], "test": names[:TEST_NAMES]}
    (folder / "split.json").write_text(json.dumps(split))
    return folder


# --------------------------------------------------------------------------------------------
# UV folders and PCA


def test_uv_set_reads_split_and_plain_folders(uv_folder: Path, tmp_path: Path) -> None:
    train, test = UvTextureSet.open(uv_folder, "train"), UvTextureSet.open(uv_folder, "test")
    assert len(train) == COUNT - TEST_NAMES and len(test) == TEST_NAMES
    assert not set(train.names) & set(test.names)
    assert train.load().shape == (COUNT - TEST_NAMES, SIZE, SIZE, 3)
    assert train.load_confidence(size=16).shape == (COUNT - TEST_NAMES, 16, 16)
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in train.names[:20]:
        shutil.copy(uv_folder / f"{name}.png", plain)
    plain_train, plain_test = UvTextureSet.open(plain, "train"), UvTextureSet.open(plain, "test")
    assert (len(plain_train), len(plain_test)) == (18, 2)
    assert plain_train.load_confidence() is None


def test_pca_reconstructs_better_than_the_mean_and_round_trips(uv_folder: Path, tmp_path: Path) -> None:
    model = fit_pca(uv_folder, PcaFitSettings(components=10))
    assert isinstance(model, TextureModel)
    assert model.latent_dim == 10 and model.resolution == SIZE
    assert float(model.explained_variance_ratio.sum()) > 0.8
    assert torch.all(model.std[:-1] >= model.std[1:])
    held_in = torch.from_numpy(UvTextureSet.open(uv_folder, "train").load(limit=1)).permute(0, 3, 1, 2).float() / 255
    coeffs = model.project(held_in)
    recon = model.decode(coeffs)
    err_pca = float((recon - held_in).square().mean())
    err_mean = float((model.mean[None] - held_in).square().mean())
    assert err_pca < 0.2 * err_mean
    samples = model.sample(4, torch.Generator().manual_seed(0))
    assert samples.shape == (4, 3, SIZE, SIZE) and 0 <= float(samples.min()) and float(samples.max()) <= 1
    assert torch.equal(model.prior(model.initial_latent(2)), torch.zeros(2))

    path = model.save(tmp_path / "pca.npz")
    loaded = load_texture_model(path)
    assert isinstance(loaded, PcaTextureModel) and loaded.info["count"] == COUNT - TEST_NAMES
    assert torch.allclose(loaded.decode(coeffs), recon, atol=2e-3)
    assert torch.allclose(loaded.std, model.std)


def test_pca_confidence_weighted_mean_and_exactness() -> None:
    images = smooth_textures(12, 8, seed=3)
    confidence = np.zeros((12, 8, 8), dtype=np.uint8)
    confidence[:6] = 255  # only the first six maps count
    model = fit_pca_arrays(images, PcaFitSettings(components=20, confidence_weighted_mean=True), confidence)
    expected = images[:6].astype(np.float64).mean(0).transpose(2, 0, 1) / 255
    assert np.allclose(model.mean.numpy(), expected, atol=1e-5)
    assert model.latent_dim == 11  # clipped to N - 1
    # k + oversample >= N: the randomised SVD is exact, so all variance around the mean is kept.
    plain = fit_pca_arrays(images, PcaFitSettings(components=11))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(plain.decode(plain.project(x)), x, atol=1e-4)


# --------------------------------------------------------------------------------------------
# GAN


def tiny_config(data: Path, out: Path, steps: int, **changes: object) -> TrainConfig:
    config = TrainConfig(data=str(data), out=str(out), gan=PRESETS["tiny"], steps=steps, batch=4, r1_interval=4,
                         checkpoint_every=10, sample_every=10, log_every=5, grid=2, quiet=True, seed=7,
                         ema_kimg=0.01)
    for key, value in changes.items():
        setattr(config, key, value)
    return config


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """The tiny GAN's layers are too small to share out: one thread is ~5x faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_run(uv_folder: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """A 20-step uninterrupted run (checkpoints at 10 and 20)."""
    out = tmp_path_factory.mktemp("gan") / "full"
    result = train_texture(tiny_config(uv_folder, out, steps=20))
    assert result.step == 20 and result.images_seen == 80
    assert set(result.last_losses) >= {"loss_g", "loss_d"}
    return out


def test_gan_trains_writes_checkpoints_and_grids(trained_run: Path) -> None:
    checkpoints = sorted(p.name for p in (trained_run / "checkpoints").glob("*.pt"))
    assert checkpoints == ["checkpoint-00000010.pt", "checkpoint-00000020.pt"]
    assert latest_checkpoint(trained_run).name == "checkpoint-00000020.pt"
    assert not list((trained_run / "checkpoints").glob(".*tmp"))  # atomic writes leave nothing behind
    for name in ("reals.png", "step-00000010.png", "step-00000020.png"):
        with Image.open(trained_run / "samples" / name) as grid:
            assert grid.size == (2 * SIZE, 2 * SIZE)
    stats = [json.loads(line) for line in (trained_run / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [5, 10, 15, 20] and all(np.isfinite(s["loss_d"]) for s in stats)
    assert "r1" in stats[0]
    assert json.loads((trained_run / "config.json").read_text())["gan"]["resolution"] == SIZE


def test_gan_resume_matches_an_uninterrupted_run(uv_folder: Path, trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    first = train_texture(tiny_config(uv_folder, out, steps=10))
    assert first.step == 10
    with pytest.raises(GanfitError, match="--resume"):
        train_texture(tiny_config(uv_folder, out, steps=20))
    second = train_texture(tiny_config(uv_folder, out, steps=20), resume=True)
    assert second.step == 20
    resumed = torch.load(out / "checkpoints" / "checkpoint-00000020.pt", weights_only=True)
    full = torch.load(trained_run / "checkpoints" / "checkpoint-00000020.pt", weights_only=True)
    assert resumed["step"] == full["step"] == 20
    for part in ("G", "D", "G_ema"):
        for name, tensor in full[part].items():
            assert torch.equal(resumed[part][name], tensor), f"{part}.{name} differs after resume"
    with pytest.raises(GanfitError, match="batch"):
        train_texture(tiny_config(uv_folder, out, steps=30, batch=8), resume=True)


def test_exported_generator_is_a_differentiable_texture_model(trained_run: Path, tmp_path: Path) -> None:
    weights = export_generator(latest_checkpoint(trained_run), tmp_path / "texture_gan.npz")
    provenance = json.loads(weights.with_suffix(".json").read_text())
    assert provenance["steps"] == 20 and "non-commercial" in provenance["data"]["licence"]
    assert provenance["bytes"] == weights.stat().st_size < 50 * 2**20
    with np.load(weights) as data:  # no components: format 1, readable by older ganfit
        assert data["param/synthesis.const"].dtype == np.float16 and int(data["version"]) == 1
        assert not any(key.startswith("q8") for key in data.files)
    for space in ("w", "z"):
        model = load_texture_model(weights, latent_space=space)
        assert isinstance(model, GanTextureModel) and isinstance(model, TextureModel)
        latent = model.sample_latent(3, torch.Generator().manual_seed(1)).requires_grad_(True)
        texture = model.decode(latent)
        assert texture.shape == (3, 3, SIZE, SIZE) and 0 <= float(texture.detach().min()) <= float(texture.detach().max()) <= 1
        (grad,) = torch.autograd.grad(texture.mean() + model.prior(latent).sum(), latent)
        assert grad.shape == latent.shape and float(grad.abs().sum()) > 0
        assert torch.equal(model.decode(latent), texture)  # deterministic (constant noise)
    w_model = load_texture_model(weights)
    assert float(w_model.prior(w_model.initial_latent(1))) < 1e-6
    # Projection (GAN inversion) of a sample's texture gets much closer to it than the mean does.
    target = w_model.sample(2, torch.Generator().manual_seed(3))
    start = (w_model.decode(w_model.initial_latent(2)) - target).abs().mean()
    with torch.no_grad():  # as reconstruct calls it
        projected = w_model.project(target, steps=40)
    assert float((w_model.decode(projected) - target).abs().mean()) < 0.5 * float(start)
    assert float(w_model.prior(w_model.sample_latent(256, torch.Generator().manual_seed(2))).mean()) == pytest.approx(
        w_model.latent_dim, rel=0.35)


def test_time_limit_stops_with_a_checkpoint(uv_folder: Path, tmp_path: Path, one_thread: None) -> None:
    out = tmp_path / "limited"
    result = train_texture(tiny_config(uv_folder, out, steps=50, time_limit_minutes=0.0))
    assert result.step == 1  # the limit is checked after each step
    assert latest_checkpoint(out).name == "checkpoint-00000001.pt"
    resumed = train_texture(tiny_config(uv_folder, out, steps=3), resume=True)
    assert resumed.step == 3
    parser = register(argparse.ArgumentParser().add_subparsers())
    assert config_from_args(parser.parse_args(["--out", str(out), "--resume"])).time_limit_minutes is None
    assert config_from_args(parser.parse_args(["--out", str(out), "--resume", "--time-limit", "5"])).time_limit_minutes == 5


def test_mean_offset_starts_from_the_mirrored_data_mean_and_is_exported(uv_folder: Path, tmp_path: Path,
                                                                        one_thread: None) -> None:
    gan = dataclasses.replace(PRESETS["tiny"], mean_offset=True)
    out = tmp_path / "offset"
    train_texture(tiny_config(uv_folder, out, steps=2, gan=gan, checkpoint_every=2))
    maps = torch.from_numpy(UvTextureSet.open(uv_folder, "train").load(SIZE)).permute(0, 3, 1, 2).double()
    mean = maps.mean(0) / 127.5 - 1.0
    expected = 0.5 * (mean + mean.flip(-1))
    state = torch.load(latest_checkpoint(out), weights_only=True)
    for part in ("G", "G_ema"):  # a buffer: training does not move it
        assert torch.allclose(state[part]["synthesis.mean_image"].double(), expected, atol=1e-6)
    model = load_texture_model(export_generator(latest_checkpoint(out), tmp_path / "offset.npz"))
    assert isinstance(model, GanTextureModel) and model.config.mean_offset
    assert torch.allclose(model.generator.synthesis.mean_image.double(), expected, atol=2e-3)  # float16


def test_pca_base_holds_the_principal_components_of_the_mirrored_maps_and_learns_their_weights(
        uv_folder: Path, tmp_path: Path, one_thread: None) -> None:
    with pytest.raises(ValueError, match="needs mean_offset"):
        dataclasses.replace(PRESETS["tiny"], pca_base=4)
    with pytest.raises(ValueError, match="detail_cutoff"):  # a band would come from neither part
        dataclasses.replace(PRESETS["tiny"], mean_offset=True, pca_base=4, pca_base_resolution=8, detail_cutoff=16)
    parser = register(argparse.ArgumentParser().add_subparsers())
    assert config_from_args(parser.parse_args(["--out", str(tmp_path / "x"), "--pca-base", "8"])).gan.mean_offset
    with pytest.raises(GanfitError, match="invalid architecture: mapping_lr_mult must be > 0"):  # one line
        config_from_args(parser.parse_args(["--out", str(tmp_path / "x"), "--mapping-lr-mult", "0"]))
    wide = ["--out", str(tmp_path / "x"), "--preset", "pca-latent", "--pca-base", "200", "--z-dim", "256", "--w-dim", "256"]
    assert config_from_args(parser.parse_args(wide)).gan.w_dim == 256
    narrow = dataclasses.replace(PRESETS["tiny"], mean_offset=True, pca_base=40)  # w_dim 32: spans 32 of 40
    with pytest.raises(GanfitError, match="--pca-base 40 needs --w-dim 40"):
        train_texture(tiny_config(uv_folder, tmp_path / "narrow", steps=1, gan=narrow))
    assert not (tmp_path / "narrow" / "checkpoints").exists()
    gan = dataclasses.replace(PRESETS["tiny"], mean_offset=True, pca_base=4, detail_cutoff=8)
    out = tmp_path / "pca-base"
    train_texture(tiny_config(uv_folder, out, steps=3, gan=gan, checkpoint_every=1))
    # The principal directions computed here by a plain SVD of the maps and their mirror images.
    maps = torch.from_numpy(UvTextureSet.open(uv_folder, "train").load(SIZE)).permute(0, 3, 1, 2).double() / 255.0
    rows = torch.cat([maps, maps.flip(-1)]).flatten(1)
    _, singular, vt = torch.linalg.svd(rows - rows.mean(0), full_matrices=False)
    std = singular[:4] / (rows.shape[0] - 1) ** 0.5
    state = torch.load(latest_checkpoint(out), weights_only=True)
    for part in ("G", "G_ema"):
        basis = state[part]["synthesis.pca_basis"].double().flatten(1)  # std * direction, in [-1, 1] units
        assert torch.allclose(basis.norm(dim=1), 2 * std, rtol=1e-3)
        cosines = (basis / basis.norm(dim=1, keepdim=True) * vt[:4]).sum(1).abs()
        assert cosines.min() > 0.999, cosines
    first = torch.load(out / "checkpoints" / "checkpoint-00000001.pt", weights_only=True)
    name = "synthesis.pca_coefficients.weight"  # trained: the adversarial game sets the coefficients
    assert not torch.equal(state["G"][name], first["G"][name])
    start = Generator(gan)  # one step in: the coefficients still follow PCA's N(0, 1) over z
    start.load_state_dict(first["G"])
    with torch.no_grad():
        coefficients = start.synthesis.pca_coefficients(start.mapping(torch.randn(4096, gan.z_dim)))
    assert coefficients.mean(0).abs().max() < 0.15 and (coefficients.std(0) - 1).abs().max() < 0.15
    assert torch.equal(state["G"]["synthesis.pca_basis"], first["G"]["synthesis.pca_basis"])  # fixed
    model = load_texture_model(export_generator(latest_checkpoint(out), tmp_path / "pca-base.npz"))
    assert isinstance(model, GanTextureModel) and model.config.pca_base == 4
    # The convolutions only add detail: their coarse content (here at 4 px) is mostly removed;
    # the same weights without the high-pass keep it.
    unfiltered = Generator(dataclasses.replace(gan, detail_cutoff=0))
    unfiltered.load_state_dict(model.generator.state_dict())
    w = model.sample_latent(3, torch.Generator().manual_seed(0))

    @torch.no_grad()
    def coarse_detail(generator: Generator) -> float:
        synthesis = generator.synthesis
        detail = synthesis(w, noise_mode="const") - synthesis.mean_image - synthesis.pca_image(w)
        return float(F.adaptive_avg_pool2d(detail, gan.detail_cutoff // 2).abs().mean())

    assert coarse_detail(model.generator) < 0.3 * coarse_detail(unfiltered)
    # int8 in the file, one scale per component: off by at most half a step (1/254 of its peak)
    exported = model.generator.synthesis.pca_basis
    trained = state["G_ema"]["synthesis.pca_basis"]
    step = trained.flatten(1).abs().amax(1) / 127
    assert ((exported - trained).flatten(1).abs() <= step[:, None] * 0.5001 + 1e-7).all()
    assert float((exported - trained).abs().max()) > 0  # really quantised, not stored as float
    with np.load(tmp_path / "pca-base.npz") as data:
        assert int(data["version"]) == 2 and data["q8/synthesis.pca_basis"].dtype == np.int8
        assert "param/synthesis.pca_basis" not in data.files


def test_pca_latent_gan_draws_inside_the_components_span_and_its_discriminator_sees_coefficients(
        uv_folder: Path, tmp_path: Path, one_thread: None) -> None:
    with pytest.raises(ValueError, match="detail=False needs pca_base"):
        dataclasses.replace(PRESETS["tiny"], detail=False)
    gan = dataclasses.replace(PRESETS["tiny"], mean_offset=True, pca_base=4, detail=False, coefficient_d_width=16)
    out = tmp_path / "latent"
    train_texture(tiny_config(uv_folder, out, steps=4, gan=gan, checkpoint_every=4))
    state = torch.load(latest_checkpoint(out), weights_only=True)
    assert not any(name.startswith("synthesis.convs") for name in state["G"])  # no convolutional synthesis
    for name in ("mean_image", "pca_basis"):  # the discriminator projects with the generator's components
        assert torch.equal(state["D"][name], state["G"][f"synthesis.{name}"])
    model = load_texture_model(export_generator(latest_checkpoint(out), tmp_path / "latent.npz"))
    assert isinstance(model, GanTextureModel) and not model.config.detail
    synthesis = model.generator.synthesis
    images = model.generator.synthesis(model.sample_latent(5, torch.Generator().manual_seed(0)))
    basis = synthesis.pca_basis.flatten(1)
    offsets = (images - synthesis.mean_image).flatten(1)
    inside = (offsets @ basis.T) @ torch.linalg.pinv(basis.T)  # projection onto the span
    assert float(offsets.abs().mean()) > 1e-3
    assert torch.allclose(inside, offsets, atol=1e-4)
    discriminator = CoefficientDiscriminator(gan)
    discriminator.load_state_dict(state["D"])
    coefficients = discriminator.coefficients(images)  # recovers what the generator chose
    w = model.sample_latent(5, torch.Generator().manual_seed(0))
    assert torch.allclose(coefficients, synthesis.pca_coefficients(w), atol=2e-2)


def test_pca_latent_gan_trains_in_coefficient_space_with_the_image_space_game(
        uv_folder: Path, tmp_path: Path, one_thread: None) -> None:
    """The fast path (both players on (B, K) coefficients) must be the game on images: the same
    reals after projection, and R1 equal to the image gradient's squared norm."""
    from ganfit.texture.train import _load_data, _setup_distributed, _Trainer

    gan = dataclasses.replace(PRESETS["tiny"], mean_offset=True, pca_base=6, pca_base_resolution=16, detail=False,
                              coefficient_d_width=16)
    config = tiny_config(uv_folder, tmp_path / "fast", steps=1, gan=gan, batch=8)
    trainer = _Trainer(config, _setup_distributed("cpu")[0])
    data = _load_data(config, trainer.device)
    trainer.set_mean_image(data)
    trainer.set_pca_basis(data)
    assert trainer.latent
    trainer.step = 3
    reals = trainer._reals(data, trainer._random())  # coefficients, mirrored where the draw says so
    trainer.latent = False
    images = trainer._reals(data, trainer._random())  # the same draws on images
    trainer.latent = True
    assert reals.shape == (8, 6) and images.shape == (8, 3, SIZE, SIZE)
    assert torch.allclose(reals, trainer.D.coefficients(images), atol=1e-5)

    images.requires_grad_(True)  # R1 through the projection (2x area resize) vs. in coefficient space
    (image_grad,) = torch.autograd.grad(trainer.D(images).sum(), images)
    coefficients = trainer.D.coefficients(images.detach()).requires_grad_(True)
    (coefficient_grad,) = torch.autograd.grad(trainer.D.classify(coefficients).sum(), coefficients)
    image_r1 = image_grad.square().sum(dim=(1, 2, 3))
    assert float(image_r1.min()) > 0
    assert torch.allclose((coefficient_grad.square() * trainer.D.r1_weights()).sum(1), image_r1, rtol=1e-3)

    fakes = trainer._fakes(trainer._random())  # what G's images project to (their finer components blurred)
    drawn = trainer.G.synthesis.mean_image + trainer.G.synthesis.pca_image(
        trainer.G.mapping(torch.randn(8, gan.z_dim, generator=trainer._random())))
    assert torch.allclose(trainer.D.coefficients(drawn), fakes, atol=1e-4)
    projection = trainer._fake_projection()  # row k: component k's image, projected (not symmetric)
    assert not torch.allclose(projection, projection.T, atol=1e-3)
    stats = trainer.train_step(data)
    assert all(np.isfinite(value) for value in stats.values()) and "r1" not in stats  # step 3: no R1
    trainer.step = 4
    r1 = trainer.train_step(data)["r1"]
    assert 0 < r1 < 10 * float(image_r1.mean())  # the size of the image path's

    empty = CoefficientDiscriminator(gan)  # fewer maps than components: empty rows weigh nothing
    empty.pca_basis.copy_(trainer.D.pca_basis)
    empty.pca_basis[-1] = 0
    weights = empty.r1_weights()
    assert float(weights[-1]) == 0 and torch.equal(weights[:-1], trainer.D.r1_weights()[:-1])


def test_shipped_gan_is_named_gan_and_reported_by_info(trained_run: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import ganfit.texture.model as texture_model_module
    from ganfit.cli import main

    missing = tmp_path / "absent" / "texture_gan.npz"
    monkeypatch.setattr(texture_model_module, "SHIPPED_GAN", missing)
    with pytest.raises(GanfitError, match="no texture GAN ships"):
        resolve_texture_model("gan")
    assert resolve_texture_model("projected") is None and resolve_texture_model(None) is None
    assert main(["info", "--json"]) == 0
    assert "texture_gan" not in json.loads(capsys.readouterr().out)["models"]

    shipped = export_generator(latest_checkpoint(trained_run), tmp_path / "data" / "texture_gan.npz",
                               quality={"kid_heldout": 12.5})
    monkeypatch.setattr(texture_model_module, "SHIPPED_GAN", shipped)
    assert resolve_texture_model("gan") == str(shipped)
    assert isinstance(load_texture_model(resolve_texture_model("gan")), GanTextureModel)
    assert main(["info", "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)["models"]["texture_gan"]
    assert entry["path"] == str(shipped) and "non-commercial" in entry["licence"]
    assert entry["trained"] == "20 steps, 80 images" and entry["KIDx1e3 vs held-out"] == 12.5
    assert main(["info"]) == 0
    assert "texture_gan" in capsys.readouterr().out


def test_the_shipped_gan_matches_its_provenance_and_beats_pca() -> None:
    """The GAN in the package: under the issue's 50 MB, the bytes its provenance describes, a
    KID below PCA's recorded beside it, and samples that are textures."""
    import hashlib

    from ganfit.texture.model import SHIPPED_GAN, shipped_gan_provenance

    provenance = shipped_gan_provenance()
    assert provenance is not None, f"{SHIPPED_GAN} or its .json is missing"
    data = SHIPPED_GAN.read_bytes()
    assert len(data) < 50e6 and len(data) == provenance["bytes"]
    assert hashlib.sha256(data).hexdigest() == provenance["sha256"]
    assert "non-commercial" in provenance["data"]["licence"]
    quality = provenance["quality"]
    assert quality["held_out_maps"] >= 300 and quality["kid_heldout"] < quality["kid_heldout_pca"]
    model = load_texture_model(resolve_texture_model("gan"))
    assert isinstance(model, GanTextureModel) and model.resolution == 256
    samples = model.sample(2, torch.Generator().manual_seed(0))
    assert samples.shape == (2, 3, 256, 256) and 0.0 <= float(samples.min()) and float(samples.max()) <= 1.0
    assert float((samples[0] - samples[1]).abs().mean()) > 0.01  # two different faces


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_torchrun_two_cpu_processes(uv_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "ganfit.texture.train", "--data", str(uv_folder), "--out", str(out), "--preset", "tiny",
               "--steps", "4", "--batch", "4", "--checkpoint-every", "2", "--sample-every", "4", "--grid", "2",
               "--r1-interval", "2", "--device", "cpu", "--quiet", "--export", str(out / "gan.npz")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(out / "checkpoints" / "checkpoint-00000004.pt", weights_only=True)
    assert state["step"] == 4 and state["images_seen"] == 16
    assert (out / "samples" / "step-00000004.png").is_file() and (out / "gan.json").is_file()


# --------------------------------------------------------------------------------------------
# Metrics


def test_kid_is_unbiased_and_separates_distributions() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    shifted = rng.normal(loc=0.5, size=(400, 16))
    same = kid(a, a, subsets=20, subset_size=200)
    independent = kid(a, b, subsets=20, subset_size=200)
    different = kid(a, shifted, subsets=20, subset_size=200)
    # A set against itself: subsets overlap, a bias of -2 (mean k(x, x) - mean k(x, y)) / m.
    assert abs(same.mean) < 0.05 and abs(independent.mean) < 3 * independent.std + 0.01
    assert different.mean > 20 * max(abs(same.mean), abs(independent.mean))


def test_kid_difference_is_paired_and_only_confident_when_it_should_be() -> None:
    rng = np.random.default_rng(1)
    real = rng.normal(size=(80, 16))  # a small held-out set, as the UV sets' are
    good, twin = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    worse = rng.normal(loc=0.3, size=(300, 16))
    clear = kid_difference(real, good, worse, draws=200)
    assert clear.high < 0 and clear.a_better == 1.0  # a real gap: the interval excludes 0
    exact = kid(real[:80], good[:80], 1, 80).mean - kid(real[:80], worse[:80], 1, 80).mean  # whole sets, equal sizes
    assert kid_difference(real, good[:80], worse[:80], draws=10).mean == pytest.approx(exact, rel=1e-9)
    tie = kid_difference(real, good, twin, draws=200)  # two samples of one model
    assert tie.low < 0 < tie.high and 0.02 < tie.a_better < 0.98
    flipped = kid_difference(real, worse, good, draws=200)
    assert flipped.low > 0 and flipped.a_better == 0.0


def test_dlib_features_of_uv_maps() -> None:
    textures = torch.from_numpy(smooth_textures(12, 64, seed=4)).permute(0, 3, 1, 2).float() / 255
    extractor = DlibFeatureExtractor(batch_size=8)
    pooled = extractor(textures)
    assert pooled.shape == (12, 256) and np.isfinite(pooled).all()
    chips = extractor.to_chip(textures[:2])
    # The pooled features are the fc's input: fc(pooled) is the network's own descriptor.
    assert torch.allclose(extractor.network.fc(torch.from_numpy(pooled[:2]).float()), extractor.network(chips),
                          atol=1e-4)
    noise = torch.rand(12, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    assert kid(pooled, extractor(noise), subsets=10).mean > 10 * abs(kid(pooled, pooled, subsets=10).mean)


def test_sharpness_prefers_a_checkerboard_to_its_blur() -> None:
    ys, xs = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    board = (((ys // 4) + (xs // 4)) % 2).float().expand(1, 3, 64, 64).clone()
    # Gaussian blur, sigma 1.5 texels (a box blur as wide as the period would only lower the contrast).
    taps = torch.exp(-torch.arange(-4.0, 5.0).square() / (2 * 1.5**2))
    kernel = (taps[:, None] * taps[None, :] / taps.sum() ** 2).expand(3, 1, 9, 9)
    blurred = F.conv2d(F.pad(board, (4, 4, 4, 4), mode="reflect"), kernel, groups=3)
    mask = torch.zeros(64, 64)
    mask[8:56, 8:56] = 1
    for measure in (laplacian_energy, high_frequency_ratio, sharpness):
        sharp, soft = float(measure(board, mask)), float(measure(blurred, mask))
        assert sharp > 2 * soft > 0, measure.__name__
    flat = torch.full((2, 3, 64, 64), 0.5)
    assert torch.allclose(sharpness(flat), torch.zeros(2))
