"""The texture-quality measures of issue 17 (``ganfit.texture.metrics``) on the shipped head's
real UV layout: foreign colour sees a painted patch on the scalp and nothing on clean skin; the
seam ratio is about 1 for a smooth blend and well above 1 for a hard step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ganfit.models.shape_model import load_default_shape_model
from ganfit.texture.colour import SkinColour, lab_to_srgb, srgb_to_lab
from ganfit.texture.metrics import SkinUVMasks, foreign_colour, seam_ratio, skin_uv_masks
from ganfit.texture.uv_layout import chart_triangles, triangles_mask

SIZE = 256
SKIN = np.array([0.80, 0.62, 0.52])
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "texture_quality.py"


@pytest.fixture(scope="module")
def masks() -> SkinUVMasks:
    return skin_uv_masks(SIZE)


def skin_texture(seed: int = 0) -> np.ndarray:
    """Skin colour with mild texel noise and a slow brightness drift (a plausible clean albedo)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(-0.04, 0.04, SIZE)[:, None, None]
    return np.clip(SKIN + ramp + rng.normal(0, 0.01, (SIZE, SIZE, 3)), 0, 1)


def test_masks_follow_the_layout(masks: SkinUVMasks) -> None:
    assert masks.inner_face.sum() > 0.05 * masks.face.sum()
    assert not (masks.inner_face & ~masks.face).any()
    assert not (masks.face_outline & ~masks.face).any()
    assert not (masks.inner_face & ~masks.face_outline).any(), "the skin reference lies on the face proper"
    assert masks.head_skin.sum() > masks.face_outline.sum() > masks.inner_face.sum()
    with pytest.raises(ValueError):  # shared through the cache: nobody may change them
        masks.head_skin[0, 0] = True


def test_cielab_round_trip_and_skin_distance() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.random((500, 3))
    assert np.abs(lab_to_srgb(srgb_to_lab(rgb)) - rgb).max() < 1e-4
    # White is L* 100, a* b* 0; a mid grey is neutral.
    assert np.allclose(srgb_to_lab(np.ones(3)), [100, 0, 0], atol=0.05)
    assert np.abs(srgb_to_lab(np.full(3, 0.5))[1:]).max() < 0.05
    skin = SkinColour.of(np.clip(SKIN + rng.normal(0, 0.01, (400, 3)), 0, 1))
    assert np.abs(skin.median_srgb() - SKIN).max() < 0.01
    assert float(np.median(skin.distance(np.clip(SKIN + rng.normal(0, 0.01, (400, 3)), 0, 1)))) < 1.5
    assert float(skin.distance(np.array([0.1, 0.08, 0.07]))) > 10, "dark hair is far"
    assert float(skin.distance(np.array([0.5, 0.7, 0.95]))) > 10, "sky is far"


def test_foreign_colour_flags_a_blue_patch_on_the_scalp(masks: SkinUVMasks) -> None:
    clean = skin_texture()
    assert foreign_colour(clean, masks).share < 0.002
    model = load_default_shape_model()
    scalp = triangles_mask(model.uvs, model.uv_faces[chart_triangles(model, "head.L")], SIZE).numpy() > 0.5
    ys, xs = np.nonzero(scalp)
    patch = scalp & ((np.arange(SIZE)[:, None] - ys.mean()) ** 2 + (np.arange(SIZE)[None] - xs.mean()) ** 2 < 20**2)
    painted = clean.copy()
    painted[patch] = (0.45, 0.65, 0.95)  # sky blue
    result = foreign_colour(painted, masks)
    expected = (patch & masks.head_skin).sum() / masks.head_skin.sum()
    assert expected > 0.01
    assert result.share == pytest.approx(expected, rel=0.05)
    assert result.far[patch].mean() > 0.95
    # uint8 input gives the same answer
    assert foreign_colour((painted * 255 + 0.5).astype(np.uint8), masks).share == pytest.approx(result.share, rel=0.05)


def test_seam_ratio_is_one_for_a_smooth_blend_and_large_for_a_step(masks: SkinUVMasks) -> None:
    rng = np.random.default_rng(1)
    detailed = np.clip(SKIN + rng.normal(0, 0.03, (SIZE, SIZE, 3)), 0, 1)  # the photo's side
    smooth = np.clip(SKIN * np.array([0.85, 0.9, 1.0]) + rng.normal(0, 0.003, (SIZE, SIZE, 3)), 0, 1)  # the model's
    rows = np.arange(SIZE)[:, None] * np.ones((1, SIZE))
    middle = np.nonzero(masks.face.any(1))[0].mean()
    # Smooth: the weight ramps over 40 texels, and so do the colours.
    weight = np.clip((middle + 20 - rows) / 40, 0, 1)
    blended = weight[..., None] * detailed + (1 - weight[..., None]) * smooth
    smooth_ratio = seam_ratio(blended, weight, masks.head_skin)
    # Hard: the same two sides cut at the contour.
    step = np.where((weight >= 0.5)[..., None], detailed, smooth)
    step_ratio = seam_ratio(step, weight, masks.head_skin)
    assert 0.7 < smooth_ratio < 1.3
    assert step_ratio > 2.0
    assert np.isnan(seam_ratio(detailed, np.ones((SIZE, SIZE)), masks.head_skin))  # no boundary


def test_benchmark_rejects_bad_options() -> None:
    for args in (["--configs", "photo,nope"], ["--photos-limit", "0"]):
        run = subprocess.run([sys.executable, str(BENCHMARK), *args], capture_output=True, text=True, timeout=60)
        assert run.returncode == 2
        assert len(run.stderr.strip().splitlines()) == 1 and run.stderr.startswith("texture_quality: ")
