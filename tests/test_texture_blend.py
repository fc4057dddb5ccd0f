"""texture/blend.py: the photo where it shows skin seen squarely, the shipped GAN fitted to that
skin elsewhere, blended band by band (issue 17, item 2). Real renderer, real dlib, real GAN."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganfit.cli import main
from ganfit.errors import GanfitError
from ganfit.fit.reconstruct import Reconstructor
from ganfit.fit.settings import FitSettings
from ganfit.fit.texture_projection import project_photo_to_uv
from ganfit.render import Camera, PointLight
from ganfit.settings import build_settings
from ganfit.texture.blend import (BlendSettings, TextureFitter, blend_texture, blend_weight, chart_mask,
                                  clean_model, default_skin_masks, eye_mouth_layout, foreign_photo,
                                  fitted_model, match_colour, match_colour_locally, multiband_blend,
                                  photo_skin_texture, skin_colour, skin_mask)
from ganfit.texture.metrics import foreign_colour
from ganfit.texture.model import SHIPPED_GAN, load_texture_model
from ganfit.texture.segmentation import segment_photo

SIZE = 256
FAST = FitSettings(mode="fast")
BLEND = replace(FAST, appearance=replace(FAST.appearance, texture_size=SIZE, texture_source="blend"))
PHOTO = replace(FAST, appearance=replace(FAST.appearance, texture_size=SIZE))


@pytest.fixture(scope="module")
def reconstructor(face_detector) -> Reconstructor:
    return Reconstructor(BLEND, detector=face_detector)


@pytest.fixture(scope="module")
def grace(grace_path: Path, reconstructor: Reconstructor):
    """grace_hopper reconstructed in fast mode with each texture source."""
    blended = reconstructor.reconstruct(grace_path)
    reconstructor.settings = PHOTO
    try:
        photo = reconstructor.reconstruct(grace_path)
    finally:
        reconstructor.settings = BLEND
    return blended, photo


@pytest.fixture(scope="module")
def fitter() -> TextureFitter:
    return TextureFitter(load_texture_model(SHIPPED_GAN))


def _scene(result) -> tuple[torch.Tensor, Camera, PointLight]:
    c, l = result.camera, result.light
    camera = Camera(*(torch.as_tensor(np.asarray(v, np.float32))[None] for v in (c.position, c.look_at, c.up)),
                    torch.tensor([c.focal], dtype=torch.float32))
    light = PointLight(*(torch.as_tensor(np.asarray(v, np.float32))[None] for v in (l.position, l.colour, l.ambient)))
    return torch.as_tensor(result.vertices, dtype=torch.float32), camera, light


def test_multiband_blend_is_the_photo_where_w_is_1_and_the_model_where_0():
    gen = torch.Generator().manual_seed(0)
    photo, model = torch.rand(3, 128, 128, generator=gen), torch.rand(3, 128, 128, generator=gen)
    weight = torch.zeros(1, 128, 128)
    weight[..., :64] = 1
    chart = torch.zeros(1, 128, 128)
    chart[:, 16:112, 16:112] = 1  # a chart whose borders the weight must not drop at
    out = multiband_blend(photo, model, weight, chart, levels=5)
    inside = chart[0] > 0
    # Away from the W = 0.5 line (2^levels texels: the coarsest band's reach) each side is itself,
    # also along the chart's own borders.
    left, right = inside.clone(), inside.clone()
    left[:, 40:] = False
    right[:, :88] = False
    assert (out - photo)[:, left].abs().max() < 0.03
    assert (out - model)[:, right].abs().max() < 0.03
    # The transition is gradual: halfway at the line, within the two values.
    assert (out[:, inside] - torch.minimum(photo, model)[:, inside]).min() > -0.1


def test_local_colour_match_takes_the_tone_around_the_seen_skin():
    """A model grey everywhere; the photo, trusted on the left half, warmer toward the top. After
    the local match the model beside the trusted half has the photo's tone at that height, not
    one average tone, and the photo's fine detail does not come along."""
    size = 256
    rows = torch.linspace(0, 1, size)[:, None].expand(size, size)
    gen = torch.Generator().manual_seed(1)
    photo = torch.stack([0.7 - 0.2 * rows, 0.5 + 0 * rows, 0.4 + 0.1 * rows]) + 0.05 * torch.randn(3, size, size, generator=gen)
    model = torch.full((3, size, size), 0.5)
    weight = torch.zeros(1, size, size)
    weight[..., : size // 2] = 1
    chart = torch.ones(1, size, size)
    out = match_colour_locally(model, photo, weight, chart, cells=32)
    beside = out[:, :, size // 2 + 4: size // 2 + 12]  # just right of the trusted half
    top, bottom = beside[:, : size // 8].mean((1, 2)), beside[:, -size // 8:].mean((1, 2))
    assert abs(float(top[0]) - 0.68) < 0.05 and abs(float(bottom[0]) - 0.52) < 0.05, (top, bottom)
    assert abs(float(top[2]) - 0.41) < 0.05 and abs(float(bottom[2]) - 0.49) < 0.05, (top, bottom)
    # Smooth: no noise carried over (its std is 0.05 in the photo).
    assert float(beside[0].diff(dim=1).std()) < 0.005
    # Off: unchanged.
    assert torch.equal(match_colour_locally(model, photo, weight, chart, cells=0), model)


def test_a_black_and_white_photo_gets_a_model_in_its_tone():
    """A toned black-and-white photo: the matched model has the photo's tone everywhere, also where
    the photo is not trusted (no bluish neck); a colour photo keeps the model's colour variation."""
    from ganfit.render.shading import linear_to_srgb, srgb_to_linear

    size = 64
    gen = torch.Generator().manual_seed(2)
    model = torch.rand(3, size, size, generator=gen) * 0.6 + 0.2  # colourful
    tone = torch.tensor([1.0, 0.85, 0.7])  # sepia, linear light
    luminance = torch.rand(1, size, size, generator=gen) * 0.5 + 0.2
    toned = linear_to_srgb(luminance * tone[:, None, None])
    weight = torch.zeros(1, size, size)
    weight[..., : size // 2] = 1
    out = srgb_to_linear(match_colour(model, toned, weight))[:, :, size // 2:]  # the untrusted half
    ratios = out / out[1:2].clamp_min(1e-4)
    assert (ratios[0] - tone[0] / tone[1]).abs().median() < 0.05, ratios[0].median()
    assert (ratios[2] - tone[2] / tone[1]).abs().median() < 0.05, ratios[2].median()
    # A colour photo (the model itself, shifted): the model's own colour variation stays.
    coloured = match_colour(model, (model * 0.9).clamp(0, 1), weight)
    spread = (coloured.max(0).values - coloured.min(0).values).mean()
    assert float(spread) > 0.2, spread


def _rendered_head(reconstructor: Reconstructor, result, foreign: bool):
    """grace's fitted head rendered with a known albedo: the GAN's mean texture, its scalp band
    painted dark blue when ``foreign`` (hair the segmentation would find)."""
    vertices, camera, light = _scene(result)
    model = load_texture_model(SHIPPED_GAN)
    with torch.no_grad():
        albedo = torch.nn.functional.interpolate(model.decode(model.initial_latent(1)), size=(SIZE, SIZE),
                                                 mode="bilinear", align_corners=False)[0]
    painted = torch.zeros(1, SIZE, SIZE)
    painted[:, : SIZE // 10, SIZE // 4 : 3 * SIZE // 4] = 1  # the top of the face chart: forehead to scalp
    if foreign:
        albedo = albedo * (1 - painted) + torch.tensor([0.1, 0.12, 0.45])[:, None, None] * painted
    width, height = result.camera.width, result.camera.height
    render = reconstructor.renderer(vertices[None], albedo[None], camera, light, height, width)
    # The "segmentation": skin wherever the render shows an unpainted texel.
    flat = PointLight(light.position, torch.zeros(1, 3), torch.ones(1, 3))
    shown = reconstructor.renderer(vertices[None], (1 - painted).expand(3, -1, -1)[None], camera, flat, height, width)
    skin = (shown.image[0, 0] * render.mask[0, 0]).clamp(0, 1)
    return render.image[0].clamp(0, 1), skin, albedo, painted, vertices, camera, light


def test_skin_colour_comes_back_where_the_photo_shows_foreign_colour(
        reconstructor: Reconstructor, grace, fitter: TextureFitter):
    image, skin, albedo, painted, vertices, camera, light = _rendered_head(reconstructor, grace[0], foreign=True)
    texels = reconstructor._uv_texels(SIZE)
    args = (vertices, reconstructor.model.faces, camera, reconstructor.mirror_index, texels, SIZE, light)
    photo = photo_skin_texture(image, skin, *args)
    out = blend_texture(photo, fitter, chart_mask(texels, SIZE)).image
    plain = project_photo_to_uv(image, vertices, reconstructor.model.faces, reconstructor.model.uvs,
                                reconstructor.model.uv_faces, camera, reconstructor.mirror_index, SIZE, light,
                                texels=texels).image
    # The painted texels the photo saw, away from the band's edge.
    core = torch.nn.functional.max_pool2d(1 - painted[None], 5, 1, 2)[0] < 0.5
    seen = core & (plain.sub(torch.tensor([0.1, 0.12, 0.45])[:, None, None]).abs().amax(0, keepdim=True) < 0.15)
    assert seen.sum() > 200, "the band was not in view: the test lost its meaning"
    truth = (albedo * (1 - painted)).sum((1, 2)) / (1 - painted).sum()  # the skin colour around it
    err_blend = (out[:, seen[0]].mean(1) - truth).abs().max()
    err_plain = (plain[:, seen[0]].mean(1) - truth).abs().max()
    assert err_plain > 0.3  # the photo projection paints the blue on
    assert err_blend < 0.08, (err_blend, out[:, seen[0]].mean(1), truth)
    # Where the photo saw skin squarely, the blend keeps it: close to the true albedo.
    sure = (photo.confidence > 0.99) & ~core
    assert (out - albedo)[:, sure[0]].abs().mean() < 0.05


@pytest.fixture(scope="module")
def grace_texture(reconstructor: Reconstructor, grace, grace_pixels: np.ndarray):
    """grace_hopper's photo texture (the photo weight W as its confidence) and the charts."""
    vertices, camera, light = _scene(grace[0])
    landmarks = np.asarray(grace[0].landmarks_2d)
    skin = skin_mask(segment_photo(grace_pixels, landmarks).skin, landmarks, BlendSettings().edge_softness)
    texels = reconstructor._uv_texels(SIZE)
    pixels = torch.from_numpy(np.array(grace_pixels)).permute(2, 0, 1).float() / 255
    photo = photo_skin_texture(pixels, skin, vertices, reconstructor.model.faces, camera, reconstructor.mirror_index,
                               texels, SIZE, light)
    return photo, chart_mask(texels, SIZE)


def test_no_seam_step_across_the_photo_model_boundary(grace_texture, fitter: TextureFitter):
    photo, chart = grace_texture
    out = blend_texture(photo, fitter, chart).image
    w = photo.confidence[0]

    def gradient_energy(image: torch.Tensor) -> torch.Tensor:
        lum = image.mean(0)
        return (lum[1:, :-1] - lum[:-1, :-1]).square() + (lum[:-1, 1:] - lum[:-1, :-1]).square()

    # Texels inside the charts, away from chart borders (the charts' own edges are steps).
    inner = torch.nn.functional.max_pool2d(1 - chart[None], 5, 1, 2)[0, 0] < 0.5
    inner = inner[:-1, :-1]
    ww = w[:-1, :-1]
    contour, photo_side, model_side = (inner & (ww > 0.35) & (ww < 0.65), inner & (ww > 0.95), inner & (ww < 0.05))
    assert contour.sum() > 100 and photo_side.sum() > 1000 and model_side.sum() > 1000
    energy = gradient_energy(out)
    across = float(energy[contour].mean())
    assert across <= float(energy[photo_side].mean()), (across, float(energy[photo_side].mean()))
    # A hard cut between the same two textures is a step, and the measure sees it.
    hard = torch.where(photo.confidence > 0.5, photo.image, fitted_model(photo, fitter, chart))
    assert float(gradient_energy(hard)[contour].mean()) > 1.5 * across


def test_the_model_is_cleaned_of_what_is_not_skin(grace_texture, fitter: TextureFitter):
    photo, chart = grace_texture
    masks = default_skin_masks(chart)
    assert masks is not None, "the default head's charts are recognised"
    skin = skin_colour(photo, masks)
    assert skin is not None
    model = fitted_model(photo, fitter, chart)
    dirty = model.clone()
    # A blob of black hair on the scalp (head skin outside the face outline) and a blue one on the lips.
    scalp = torch.from_numpy(masks.head_skin & ~masks.face_outline)
    blob = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    rows, cols = torch.nonzero(scalp, as_tuple=True)
    r, c = int(rows[len(rows) // 3]), int(cols[len(cols) // 3])
    blob[max(r - 8, 0):r + 8, max(c - 8, 0):c + 8] = True
    blob &= scalp
    assert blob.sum() > 100
    dirty[:, blob] = 0.03
    lips = torch.from_numpy(~masks.head_skin & masks.face)
    dirty[:, lips] = torch.tensor([0.1, 0.2, 0.9])[:, None]
    settings = BlendSettings()
    cleaned = clean_model(dirty, skin, masks, chart, settings.clean_sigmas, settings.clean_scale)
    rgb = cleaned.permute(1, 2, 0).numpy()
    assert float(skin.distance(rgb[blob.numpy()]).max()) <= settings.clean_sigmas[1] + 1e-6
    # Refilled from the skin around it (step 1), not merely pulled toward the median to the bound
    # (step 2 alone leaves a dark patch): the blob's colour is close to the ring of skin around it.
    ring = (torch.nn.functional.max_pool2d(blob[None, None].float(), 9, 1, 4)[0, 0] > 0) & ~blob & scalp
    step = np.abs(np.median(rgb[blob.numpy()], 0) - np.median(rgb[ring.numpy()], 0)).max()
    assert step < 0.05, step
    assert float(skin.distance(dirty.permute(1, 2, 0).numpy()[blob.numpy()]).min()) > 10, "the blob was foreign"
    assert torch.equal(cleaned[:, lips], dirty[:, lips]), "brows, eyes and lips are not skin and stay"
    # Skin-coloured model away from anything foreign (the blob, the model's own dark patches) stays.
    foreign = torch.from_numpy(skin.distance(dirty.permute(1, 2, 0).numpy()) > settings.clean_sigmas[0] - 0.5)
    reach = 4 * settings.clean_scale + 1
    far = torch.nn.functional.max_pool2d(foreign[None, None].float(), reach, 1, reach // 2)[0, 0] == 0
    plain = far & torch.tensor(masks.head_skin)
    assert plain.sum() > 1000
    assert float((cleaned - dirty)[:, plain].abs().max()) < 1e-5


def test_foreign_photo_outside_the_face_outline_gets_no_weight(grace_texture):
    photo, chart = grace_texture
    masks = default_skin_masks(chart)
    skin = skin_colour(photo, masks)
    image = photo.image.clone()
    outside = torch.from_numpy(masks.head_skin & ~masks.face_outline)
    left = outside.clone()
    left[:, SIZE // 2:] = False  # sky on the left of the head, skin-coloured on the right
    right = outside & ~left
    inside = torch.tensor(masks.inner_face)
    sky = torch.tensor([0.5, 0.7, 0.95])[:, None]
    image[:, left] = sky
    image[:, inside] = sky
    image[:, right] = torch.from_numpy(skin.median_srgb()).float()[:, None]
    foreign = torch.from_numpy(foreign_photo(torch.ones(1, SIZE, SIZE), image, skin, masks,
                                             BlendSettings().photo_foreign_sigmas))
    assert bool(foreign[left].all()), "sky outside the face outline is foreign"
    assert not bool(foreign[right].any()), "skin-coloured photo outside the outline keeps its weight"
    assert not bool(foreign[inside].any()), "inside the face outline the photo stays"
    unseen = foreign_photo(torch.zeros(1, SIZE, SIZE), image, skin, masks, BlendSettings().photo_foreign_sigmas)
    assert not unseen.any(), "only texels the photo saw are judged"


def test_a_dropped_patch_inside_seen_skin_is_not_closed_again(grace_texture):
    """A small patch of hair that seen skin surrounds is a hole in W that ``blend_weight`` would
    close (W = 1 again); the texels ``foreign_photo`` dropped stay open."""
    _, chart = grace_texture
    masks = default_skin_masks(chart)
    settings = BlendSettings()
    rows, cols = np.nonzero(masks.head_skin & ~masks.face_outline & masks.face)
    r, c = int(rows[len(rows) // 2]), int(cols[len(cols) // 2])
    weight = torch.zeros(1, SIZE, SIZE)
    weight[0, r - 12:r + 12, c - 12:c + 12] = 1.0
    patch = np.zeros((SIZE, SIZE), bool)
    patch[r - 2:r + 2, c - 2:c + 2] = True
    dropped = weight * torch.from_numpy(~patch)
    assert float(blend_weight(dropped, chart, settings)[0][torch.from_numpy(patch)].min()) == 1.0, \
        "without keep_open the small hole is closed: the test keeps its meaning"
    kept = blend_weight(dropped, chart, settings, keep_open=patch)[0]
    assert float(kept[torch.from_numpy(patch)].max()) == 0.0


def test_skin_colour_needs_seen_skin(grace_texture):
    photo, chart = grace_texture
    masks = default_skin_masks(chart)
    unseen = type(photo)(photo.image, torch.zeros_like(photo.confidence))
    assert skin_colour(unseen, masks) is None
    assert default_skin_masks(torch.ones(1, SIZE, SIZE)) is None, "another layout has no such regions"


def test_blend_has_little_foreign_colour(grace, grace_texture):
    blended, photo = grace
    masks = default_skin_masks(grace_texture[1])
    before = foreign_colour(photo.texture, masks).share
    after = foreign_colour(blended.texture, masks).share
    assert before > 0.1, ("her hat is on the photo texture", before)
    assert after < 0.2 * before, (before, after)


def test_blend_weight_closes_small_holes_and_ramps_the_edge_inward(reconstructor: Reconstructor):
    chart = chart_mask(reconstructor._uv_texels(SIZE), SIZE)
    settings = BlendSettings()
    raw = torch.zeros(1, SIZE, SIZE)
    # A square of seen skin on the face chart (rows 40-110 of 256) with a nostril-sized hole
    # (3 x 3 texels) and a hole as large as a hat's shadow (30 x 30).
    raw[0, 40:110, 60:196] = 1.0
    raw[0, 60:63, 80:83] = 0.0
    raw[0, 70:100, 140:170] = 0.0
    eyes = eye_mouth_layout(SIZE)
    assert eyes is not None
    raw.view(-1)[eyes.index] = 0.3  # the eyes and mouth keep their weight as it is
    shaped = blend_weight(raw, chart, settings)[0]
    assert float(shaped[60:63, 80:83].min()) == 1.0, "a small hole is closed"
    assert float(shaped[75:95, 145:165].max()) == 0.0, "a large hole stays"
    ramp = settings.edge_ramp * SIZE
    column = shaped[40:40 + int(np.ceil(ramp)) + 2, 100]
    assert 0.0 < float(column[0]) <= 0.5, "the edge texel is half weight at most"
    assert bool((column[1:] >= column[:-1]).all()) and float(column[0]) < float(column[-1]), "rising inward"
    assert float(shaped[40 + int(np.ceil(ramp)) + 1, 100]) == 1.0, "full weight one ramp inside the edge"
    assert float(shaped[85, 139]) <= 0.5 and float(shaped[85, 140 - int(np.ceil(ramp)) - 1]) == 1.0, "around a hole too"
    assert torch.equal(shaped.view(-1)[eyes.index], raw.view(-1)[eyes.index])
    assert bool((shaped <= torch.clamp(raw[0], min=0) + (shaped == 1.0).float()).all()), "only holes gain weight"


def test_the_result_exposes_the_blend_weight(grace):
    blended, photo = grace
    assert photo.texture_weight is None
    w = blended.texture_weight
    assert w is not None and w.shape == (SIZE, SIZE) and w.dtype == np.float32
    assert 0.0 <= float(w.min()) and float(w.max()) <= 1.0 and 0.05 < float((w > 0.5).mean()) < 0.5


def test_grace_hat_is_replaced_by_skin(grace):
    blended, photo = grace
    assert blended.settings["appearance"]["texture_source"] == "blend"
    assert "blended with texture model texture_gan.npz" in blended.texture_model
    plain = photo.texture.astype(np.float32) / 255
    mixed = blended.texture.astype(np.float32) / 255
    # Her hat: dark texels in the top fifth of the face chart of the photo texture.
    top = np.zeros(plain.shape[:2], bool)
    top[: SIZE // 12, SIZE // 4 : 3 * SIZE // 4] = True
    hat = top & (plain.mean(-1) < 0.25)
    assert hat.sum() > 100
    # The skin colour: the cheeks (below the eyes, beside the nose).
    cheeks = mixed[int(SIZE * 0.28) : int(SIZE * 0.36), int(SIZE * 0.3) : int(SIZE * 0.7)].reshape(-1, 3)
    skin = np.median(cheeks, 0)
    assert np.abs(np.median(mixed[hat], 0) - skin).max() < 0.12, (np.median(mixed[hat], 0), skin)
    assert np.abs(np.median(plain[hat], 0) - skin).max() > 0.3


@pytest.mark.parametrize("args,needle", [
    (["--texture-source", "hair"], "--texture-source hair: expected photo or blend"),
    (["--texture-source", "blend", "--clean-texture"], "--clean-texture"),
    (["--texture-source", "blend", "--texture-model", "gan", "--texture-refine-steps", "3", "--mode", "ganfit"],
     "--texture-refine-steps"),
])
def test_bad_texture_source_options(grace_path: Path, tmp_path: Path, capsys, args, needle):
    assert main(["reconstruct", str(grace_path), "-o", str(tmp_path / "out"), *args]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("WARNING")]
    assert len(err) == 1 and err[0].startswith("ganfit: error: ") and needle in err[0], err


def test_protocol_option():
    assert build_settings({"texture_source": "blend"}, "protocol").appearance.texture_source == "blend"
    assert build_settings({}, "protocol").appearance.texture_source == "photo"
    for bad in ("Blend", 1, None, True):
        with pytest.raises(GanfitError, match="option texture_source"):
            build_settings({"texture_source": bad}, "protocol")


def test_cli_records_the_texture_source(grace_path: Path, tmp_path: Path):
    out = tmp_path / "blend"
    assert main(["reconstruct", str(grace_path), "-o", str(out), "--mode", "fast", "--texture-size", "128",
                 "--texture-source", "blend", "-q", "--no-exports"]) == 0
    meta = json.loads((out / "result.json").read_text())
    assert meta["settings"]["appearance"]["texture_source"] == "blend"
    assert Image.open(out / "texture.png").size == (128, 128)
