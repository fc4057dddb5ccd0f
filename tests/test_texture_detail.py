"""The detail stage of the PCA-latent texture GAN (issue 5; ganfit.texture.detail): the network's
high-pass and patch training, ``train-texture-detail`` (checkpoints, resume, refusals), and the
exported GAN + detail as a texture model. CPU, tiny sizes, a synthetic UV folder.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ganfit.errors import GanfitError
from ganfit.texture.detail import DetailConfig, DetailNetwork, high_pass, layout_coordinates
from ganfit.texture.detail_train import DetailTrainConfig, export_with_detail, train_detail
from ganfit.texture.gan import GanTextureModel
from ganfit.texture.model import load_texture_model
from ganfit.texture.train import PRESETS, TrainConfig, export_generator, latest_checkpoint, train_texture

SIZE = 32


@pytest.fixture(scope="module")
def uv_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 maps: smooth colour fields with sharp random speckles (detail PCA's few components miss)."""
    folder = tmp_path_factory.mktemp("uv")
    gen = torch.Generator().manual_seed(3)
    smooth = F.interpolate(torch.rand(24, 3, 4, 4, generator=gen) * 0.4 + 0.4, size=(SIZE, SIZE), mode="bicubic",
                           align_corners=False)
    speckles = (torch.rand(24, 1, SIZE, SIZE, generator=gen) > 0.9).float() * 0.3
    maps = ((smooth - speckles).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    names = [f"map{i:02d}" for i in range(24)]
    for name, image in zip(names, maps):
        Image.fromarray(image).save(folder / f"{name}.png")
    (folder / "split.json").write_text(json.dumps({"train": names[4:], "test": names[:4]}))
    return folder


@pytest.fixture(scope="module")
def latent_gan(uv_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PCA-latent GAN (6 components) trained for 2 steps and exported."""
    out = tmp_path_factory.mktemp("gan")
    gan = dataclasses.replace(PRESETS["tiny"], mean_offset=True, pca_base=6, detail=False, coefficient_d_width=16)
    config = TrainConfig(data=str(uv_folder), out=str(out / "run"), gan=gan, steps=2, batch=4, checkpoint_every=2,
                         sample_every=0, log_every=1, grid=2, quiet=True, seed=1)
    train_texture(config)
    return export_generator(latest_checkpoint(out / "run"), out / "gan.npz")


def detail_config(uv_folder: Path, gan: Path, out: Path, steps: int) -> DetailTrainConfig:
    return DetailTrainConfig(data=str(uv_folder), gan=str(gan), out=str(out), steps=steps, batch=4, patch=16,
                             detail=DetailConfig(resolution=SIZE, channels=8, layers=3, cutoff=8),
                             checkpoint_every=3, sample_every=3, log_every=1, quiet=True)


def test_high_pass_and_layout_coordinates() -> None:
    flat = torch.full((1, 3, 16, 16), 0.7)
    assert float(high_pass(flat, 4).abs().max()) < 1e-6  # no colour change survives
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 1.0 - 0.5
    kept = high_pass(checker.expand(1, 3, 16, 16), 4)
    assert torch.allclose(kept, checker.expand(1, 3, 16, 16), atol=1e-6)  # finest detail passes whole
    coordinates = layout_coordinates(8)
    assert torch.equal(coordinates, coordinates.flip(-1))  # left and right of the layout are mirror images
    assert float(coordinates[1, 0, 0]) > 0 > float(coordinates[1, -1, 0])  # row 0 is v = 1


def test_detail_of_a_patch_is_the_detail_of_the_whole_map_there() -> None:
    """Training on patches and applying to whole maps compute the same thing away from the
    patch's border (receptive field and one low-pass cell)."""
    torch.manual_seed(0)
    network = DetailNetwork(DetailConfig(resolution=64, channels=8, layers=4, cutoff=16))
    with torch.no_grad():
        network.to_rgb.weight.mul_(100)
        coarse = torch.rand(2, 3, 64, 64) * 2 - 1
        whole = network(coarse)
        y = x = 16
        window = (slice(None), slice(None), slice(y, y + 32), slice(x, x + 32))
        part = network.patch(coarse[window], network.coordinates[window], network.noise_map[window].expand(2, -1, -1, -1))
    inner = (slice(None), slice(None), slice(12, 20), slice(12, 20))
    assert float(whole.abs().mean()) > 1e-3  # (the stage scales it down to residual_scale)
    assert torch.allclose(part[inner], whole[window][inner], atol=1e-5)
    with pytest.raises(ValueError, match="expects 64 px"):
        network(coarse[..., :32, :32])


def test_detail_stage_trains_resumes_and_exports_a_texture_model(uv_folder: Path, latent_gan: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "detail"
    checkpoint = train_detail(detail_config(uv_folder, latent_gan, out, steps=3))
    assert checkpoint is not None and checkpoint.name == "checkpoint-00000003.pt"
    assert (out / "samples" / "step-00000003.png").is_file()
    with pytest.raises(GanfitError, match="--resume"):
        train_detail(detail_config(uv_folder, latent_gan, out, steps=5))
    train_detail(detail_config(uv_folder, latent_gan, out, steps=5), resume=True)
    steps = [json.loads(line)["step"] for line in (out / "stats.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]  # continued at 4, not from 0
    stats = json.loads((out / "stats.jsonl").read_text().splitlines()[-1])
    assert all(np.isfinite(stats[k]) for k in ("loss_d", "loss_g", "residual_std"))

    before = latent_gan.read_bytes()
    with pytest.raises(GanfitError, match="is the GAN the stage was trained on"):
        export_with_detail(latest_checkpoint(out), latent_gan)
    assert latent_gan.read_bytes() == before
    weights = export_with_detail(latest_checkpoint(out), tmp_path / "gan_detail.npz")
    with np.load(weights) as data:
        assert int(data["version"]) == 3 and "detail/config" in data.files
        assert json.loads(str(data["info"]))["detail"]["steps"] == 5
    provenance = json.loads(weights.with_suffix(".json").read_text())
    assert provenance["detail"]["steps"] == 5 and provenance["quality"]["kid_heldout"] is None
    assert provenance["gan_weights"]["file"] == "gan.npz" and provenance["bytes"] == weights.stat().st_size

    model = load_texture_model(weights)
    plain = GanTextureModel.load(weights, detail=False)
    assert isinstance(model, GanTextureModel) and model.detail is not None and plain.detail is None
    latent = model.sample_latent(3, torch.Generator().manual_seed(1)).requires_grad_(True)
    texture = model.decode(latent)
    assert texture.shape == (3, 3, SIZE, SIZE) and 0 <= float(texture.detach().min()) <= float(texture.detach().max()) <= 1
    assert torch.equal(model.decode(latent), texture)  # fixed noise: deterministic
    (grad,) = torch.autograd.grad(texture.mean(), latent)
    assert float(grad.abs().sum()) > 0
    with torch.no_grad():
        added = texture - plain.decode(latent)
    assert float(added.abs().mean()) > 1e-5  # the detail is there ...
    coarse_change = F.avg_pool2d(added, 4).abs().mean()
    assert float(coarse_change) < 0.2 * float(added.abs().mean())  # ... and leaves the colouring alone


def test_info_reports_a_shipped_detail_stage(uv_folder: Path, latent_gan: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import ganfit.texture.model as texture_model_module
    from ganfit.cli import main

    out = tmp_path / "detail"
    train_detail(detail_config(uv_folder, latent_gan, out, steps=2))
    shipped = export_with_detail(latest_checkpoint(out), tmp_path / "data" / "texture_gan.npz")
    provenance = json.loads(shipped.with_suffix(".json").read_text())
    provenance["quality"] = {"kid_heldout": 30.5, "kid_heldout_pca": 31.0, "kid_heldout_pca_model": "PCA (96)"}
    shipped.with_suffix(".json").write_text(json.dumps(provenance))
    monkeypatch.setattr(texture_model_module, "SHIPPED_GAN", shipped)
    assert main(["info", "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)["models"]["texture_gan"]
    assert entry["detail stage"].startswith("2 steps") and entry["KIDx1e3 of PCA"] == "31.0 (PCA (96))"
    assert "non-commercial" in entry["licence"]  # the GAN's provenance travels with the detail export


def test_detail_stage_refuses_bad_inputs(uv_folder: Path, latent_gan: Path, tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ganfit", "train-texture-detail", *args],
                              capture_output=True, text=True, timeout=120)

    plain = tmp_path / "plain"  # a convolutional GAN: nothing for the stage to add to
    train_texture(TrainConfig(data=str(uv_folder), out=str(plain), gan=PRESETS["tiny"], steps=1, batch=2,
                              checkpoint_every=1, sample_every=0, quiet=True))
    plain_gan = export_generator(latest_checkpoint(plain), tmp_path / "plain.npz")
    cases = [
        (["--data", str(tmp_path / "nope"), "--gan", str(latent_gan), "--out", str(tmp_path / "a")], "no such folder"),
        (["--data", str(uv_folder), "--gan", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "a")], "no such file"),
        (["--data", str(uv_folder), "--gan", str(plain_gan), "--out", str(tmp_path / "a")], "not a PCA-latent GAN"),
        (["--data", str(uv_folder), "--gan", str(latent_gan), "--out", str(tmp_path / "a"), "--cutoff", "8",
          "--patch", "10"], "--patch 10"),
        (["--out", str(tmp_path / "empty"), "--export", str(tmp_path / "x.npz")], "holds no checkpoint"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--data", str(uv_folder), "--gan", str(latent_gan), "--out", str(tmp_path / "a"),
                       "--device", "cuda"], "no CUDA"))
    for args, message in cases:
        result = cli(*args)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "x.npz").exists()  # nothing half-written
