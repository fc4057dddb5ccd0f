"""The final albedo as the texture model and the photo together (issue 17, item 2).

Why: the photo projected into UV (``fit.texture_projection``) is sharp where it sees skin, but it
paints whatever the photo shows onto the head: hair or a hat on the scalp, glasses, sky on the
ears, smears at grazing angles. The texture model (paper 3.1, eq. 6: the texture is the
generator's output) is complete and clean but blurry (the shipped GAN is affine in its latent
over PCA-200's span, docs/texture-model.md). So the texture takes each where it is good:

1. **Photo weight** ``W`` per texel: the projection's confidence (seen, facing the camera; the
   mirror point where the texel itself is hidden) times "the photo shows skin there" (the
   segmentation's ``SKIN`` class, ``texture.segmentation``, looked up where the texel lands in
   the photo). Hidden sides, grazing angles, and skin under hair, hats or glasses get W = 0.
   Several photos of one person: their projections and weights are merged first (eq. 14).
   Outside the face outline, photo texels far from the seen skin's colour lose their weight
   (``foreign_photo``: hair or background the segmentation took for skin). On the skin
   charts W's small holes are then closed and its edge ramped inward (``blend_weight``), so
   that the boundary lies on plain skin, not on the photo's own edges.
2. **Model fit**: the texture model's decode fitted to the photo texture with W as weights
   (eq. 6 with the confidence as weights). Paper 3.1 minimises an L1 distance by gradient
   descent; the shipped GAN and PCA models are affine in their latent, so here the weighted
   least-squares problem (plus the model's prior) is solved in closed form on a 64 px copy of
   the components: one 256 x 256 solve, milliseconds instead of an inversion loop. Other
   models (a GAN with a convolutional synthesis) get a short weighted inversion.
3. **Colour match**: a per-channel gain and offset in linear light, fitted by weighted least
   squares where the photo is trusted (W > 0.5), so the model agrees with the photo where they
   meet; then locally. The model is cleaned of colours that are not the face's skin
   (``clean_model``: the hair it learned at the temples, the photo's fringe the match carried).
4. **Multi-band blending** (Burt and Adelson 1983): Laplacian pyramids of photo and model mixed
   with a Gaussian pyramid of W, so fine detail switches over a few texels and colour over
   many: no seam. Inside the UV charts only: both images are padded past the chart borders by
   push-pull first, and the weight's pyramid is normalised by the charts' own, so empty texels
   neither bleed in nor pull the weight down along chart edges.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..fit.texture_projection import UVTexels, UVTexture, frags_to_image, project_photo_to_uv, push_pull_fill
from ..render import Camera, PointLight
from ..render.shading import linear_to_srgb, srgb_to_linear
from .colour import SkinColour
from .model import TextureModel
from .uv_layout import SkinUVMasks, skin_uv_masks

__all__ = [
    "BlendSettings",
    "EyeMouthLayout",
    "TextureFitter",
    "blend_texture",
    "blend_weight",
    "chart_mask",
    "clean_model",
    "foreign_photo",
    "eye_mouth_layout",
    "fitted_model",
    "iris_colour",
    "match_colour",
    "multiband_blend",
    "paint_eyes_and_mouth",
    "photo_skin_texture",
    "robust_iris_colour",
    "skin_colour",
    "skin_mask",
]

log = logging.getLogger(__name__)

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, Tensor)


@dataclass(frozen=True)
class BlendSettings:
    """How photo and texture model are combined (chosen on grace_hopper and astronaut)."""

    #: Side of the copy of the model's components that the weighted least squares runs on: the
    #: components are smooth, and 64 px keeps the solve at ~20 ms on one core.
    fit_size: int = 64
    #: Weight of the model's prior against the weighted mean squared error (sRGB units).
    prior_weight: float = 1e-5
    #: Texels that count for the colour match: photo weight above this.
    match_threshold: float = 0.5
    #: Cells across the map for the local colour match (``match_colour_locally``; 0: off).
    local_match_cells: int = 32
    #: Pyramid levels of the multi-band blend at 512 px (the coarsest is 16 px); a larger texture
    #: gets one more per doubling, so colour still switches over the same share of the head.
    levels: int = 6
    #: The skin mask's edge is softened and pulled inward by this share of the face's height (in
    #: photo pixels), so the segmentation's border (a hairline pixel taken for skin) gets little
    #: weight. Before the model was cleaned and the edge ramped, 0.0075 was chosen (UTKFace 20,
    #: dlib turned 25 degrees on the face alone / foreign colour / seen skin's sharpness against
    #: the photo texture: 0.015: 0.3145 / 4.4% / 0.98x; 0.0075: 0.3136 / 4.8% / 1.00x; 0: 0.3127
    #: / 5.1% / 1.00x). With both, the ramp (``edge_ramp``) does this work, and softening too
    #: took a band of seen skin from the photo (public 8: 0.99x its sharpness, grace_hopper's
    #: glasses' rims 0.98x). With ``edge_ramp`` 4 texels, UTKFace 20 / public 8 (dlib on the face
    #: alone / foreign colour / seam / sharpness x1000): 0.0075 with a 5-texel ramp 0.3167 /
    #: 0.90% / 1.45 / 0.281 and 0.3135 / 0.97% / 1.14 / 0.773; 0 with 4 texels 0.3158 / 1.04% /
    #: 1.44 / 0.282 and 0.3134 / 1.02% / 1.18 / 0.781 (the photo texture: 0.280 and 0.778).
    edge_softness: float = 0.0
    #: Holes in the photo weight on the skin charts up to this share of the map are closed (W = 1):
    #: the nostrils, lid rims and lip line, which the projection sees at a grazing angle, come
    #: from the photo whole instead of half from the model (1500 texels at 512 px).
    hole_area: float = 1500 / 512**2
    #: On the skin charts W rises from 0 to 1 over this share of the map's side, measured inward
    #: from where the raw weight falls below 0.5 (4 texels at 512 px): the photo's last texels
    #: before hair, background or a grazing angle (a dark fringe, a step in colour) are left out.
    #: Measured on UTKFace 20 (seam ratio on W's contour / dlib turned 25 degrees on the face
    #: alone / seen skin's sharpness, x1000), with the holes closed, before the model was cleaned
    #: and with ``edge_softness`` 0.0075: no ramp 8.2 / 0.3155 / 0.279; 3 texels 2.6 / 0.3207 /
    #: 0.282; 4 texels 1.49 / 0.3158 / 0.282; 5 texels 1.42 / 0.3168 / 0.281; 6 texels 1.11 /
    #: 0.3165 / 0.279. Unclosed, 8.0 / 0.3146 / 0.279. With the model cleaned, see ``edge_softness``.
    edge_ramp: float = 4 / 512
    #: The model is cleaned of colours that are not the face's skin (``clean_model``): on the
    #: head's skin, a model texel whose colour lies beyond the first of these robust deviations
    #: of the seen skin's colour starts to be refilled from the skin-coloured model around it,
    #: wholly beyond the second, and no texel is left beyond the second.
    clean_sigmas: tuple[float, float] = (2.5, 3.5)
    #: The refill works on a copy this many times smaller than the map (the model's fine detail is
    #: kept): 128 px at 512, so a dark blob of hair is filled from skin a few cells away.
    clean_scale: int = 4
    #: Photo texels outside the face outline (temples, forehead top, ears, neck) whose colour lies
    #: beyond this many robust deviations of the seen skin get no photo weight: hair strands and
    #: background the segmentation took for skin. Inside the outline the photo stays (shadows,
    #: stubble and wrinkles there are the person).
    #: Measured on UTKFace 20 (foreign colour / seam / dlib turned 25 degrees on the face alone /
    #: seen skin's sharpness x1000) with ``clean_sigmas`` / this:
    #: neither 4.41% / 1.42 / 0.3178 / 0.281; (2, 3) / off 1.11% / 1.63 / 0.3191 / 0.281;
    #: (2, 3) / 3.5 0.88% / 1.53 / 0.3186 / 0.281; (2.5, 3.5) / 3.5 0.90% / 1.46 / 0.3177 / 0.281;
    #: (3, 4) / 4 1.00% / 1.43 / 0.3182 / 0.281; (2.5, 3.5) / 3 0.90% / 1.44 / 0.3171 / 0.281.
    #: Cleaning only outside the face outline: 1.76% / 1.40 / 0.3191.
    photo_foreign_sigmas: float = 3.0
    #: Of those dropped texels, patches of at least this share of the map stay open when
    #: ``blend_weight`` closes small holes (a tuft of hair that seen skin surrounds stays the
    #: model's); smaller specks are closed again with the hole around them.
    foreign_open_area: float = 64 / 512**2
    #: Photo weight from which the photo is kept exactly (ramping to it at weight 1).
    exact_from: float = 0.8
    #: Steps of the weighted inversion for texture models that are not affine in their latent.
    inversion_steps: int = 30


# --------------------------------------------------------------------------------------------
# 1. The photo's weight: seen squarely and skin


def skin_mask(skin: np.ndarray, landmarks: np.ndarray, softness: float) -> Tensor:
    """(H, W) float mask from the segmentation's boolean skin map, its edge softened and pulled
    inward by ``softness`` x the face's height (chin to brows)."""
    import cv2

    points = np.asarray(landmarks, dtype=np.float64)
    height = float(points[8, 1] - points[17:27, 1].mean())
    sigma = max(softness * abs(height), 0.5)
    soft = cv2.GaussianBlur(skin.astype(np.float32), (0, 0), sigma)
    # 0.5 -> 0 and 1 -> 1: the border moves about one sigma inward and fades over it.
    return torch.from_numpy(np.clip(soft * 2.0 - 1.0, 0.0, 1.0))


@torch.no_grad()
def photo_skin_texture(
    photo: Tensor,
    skin: Tensor,
    vertices: Tensor,
    faces: Tensor,
    camera: Camera,
    mirror_index: Tensor,
    texels: UVTexels,
    size: int,
    light: PointLight | None,
) -> UVTexture:
    """The photo (3, H, W) projected into UV (``project_photo_to_uv``: albedo with ``light``, the
    mirror point where a texel is hidden, push-pull filling) with every observation weighted by
    ``skin`` (H, W) at its photo position: ``confidence`` is the photo weight W, and the colour is
    a mean over skin only (a texel whose own view shows hair takes its mirror's skin)."""
    return project_photo_to_uv(photo, vertices, faces, None, None, camera, mirror_index, size, light,
                               texels=texels, photo_weight=skin)


def blend_weight(weight: Tensor, chart: Tensor, settings: BlendSettings, keep_open: np.ndarray | None = None) -> Tensor:
    """(1, S, S) the photo weight W as the blend uses it, from the projection's (``weight``) on the
    skin charts (``chart`` minus the eyes and mouth cavity, which ``paint_eyes_and_mouth`` lays
    over the photo's weight as it is): small holes closed and the edge ramped inward
    (``BlendSettings.hole_area``, ``edge_ramp``). Why: the seam between photo and model lies on
    W's edge, and the raw edge runs along what the photo shows there (nostrils, the hairline, the
    face's outline against the background), so the blend would show a step where the model
    meets it (seam ratio 8 on UTKFace 20; 1.4 shaped, docs/texture-quality.md). ``keep_open``
    (S, S) bool: texels no hole closing may give weight (``foreign_photo``'s: a patch of
    hair that seen skin surrounds stays the model's)."""
    import cv2

    size = weight.shape[-1]
    w = weight[0].detach().cpu().numpy().astype(np.float32)
    skin = chart[0].detach().cpu().numpy() > 0.5
    layout = eye_mouth_layout(size)
    if layout is not None and _is_default_layout(chart):
        skin.reshape(-1)[layout.index.numpy()] = False
    holes = _component_areas(w < 0.5)
    shaped = w.copy()
    closing = (holes > 0) & (holes <= settings.hole_area * size * size) & skin
    if keep_open is not None:
        closing &= ~keep_open
    shaped[closing] = 1.0
    if settings.edge_ramp > 0:
        # Distance (texels) to the nearest low texel on the skin charts; off-chart texels and the
        # eyes and mouth do not count as low, so the ramp does not start from the charts' borders.
        edge = ((shaped < 0.5) & skin).astype(np.uint8)
        distance = cv2.distanceTransform(1 - edge, cv2.DIST_L2, 5)
        ramp = np.clip(distance / max(settings.edge_ramp * size, 1e-6), 0.0, 1.0)
        shaped = np.where(skin, np.minimum(shaped, ramp), shaped)
    return torch.from_numpy(shaped)[None].to(weight)


def chart_mask(texels: UVTexels, size: int) -> Tensor:
    """(1, S, S) 1 on texels inside the UV charts, 0 elsewhere."""
    ones = torch.ones(texels.fragments.triangle.shape[0], 1, dtype=texels.fragments.bary.dtype,
                      device=texels.fragments.bary.device)
    return frags_to_image(texels.fragments, ones, size)


# --------------------------------------------------------------------------------------------
# 2. The texture model fitted to the seen skin (eq. 6, weighted)


class TextureFitter:
    """Fits a texture model's decode to a texture with per-texel weights (eq. 6 weighted).

    For models affine in their latent (the shipped GAN without a convolutional synthesis, PCA)
    it keeps the model as ``offset + latent @ jacobian`` at ``fit_size`` and solves the
    weighted least squares with the model's Gaussian prior in closed form; built once per model
    (~0.1 s), then ~20 ms a fit. Other models: a short weighted L1 inversion."""

    def __init__(self, model: TextureModel, settings: BlendSettings = BlendSettings()) -> None:
        self.model = model
        self.settings = settings
        self.affine = _affine_parts(model, settings.fit_size)

    @torch.no_grad()
    def fit(self, texture: Tensor, weight: Tensor, start: Tensor | None = None) -> Tensor:
        """The model's decode (3, R, R) closest to ``texture`` (3, S, S) where ``weight``
        (1, S, S) is high."""
        if self.affine is None:
            return self._invert(texture, weight, start)[0]
        offset, jacobian, prior_mean, prior_precision = self.affine
        size = self.settings.fit_size
        target = _resize(texture[None], size)[0].flatten()
        w = _resize(weight[None], size)[0].expand(3, -1, -1).flatten()
        total = float(w.sum())
        if total < 1e-6:
            log.debug("blend: no texel seen as skin; the model's mean texture")
            latent = self.model.initial_latent(1)
        else:
            jw = jacobian * (w / total)  # (L, D)
            lam = self.settings.prior_weight
            hessian = jw @ jacobian.T + lam * prior_precision
            gradient = jw @ (target - offset) + lam * prior_precision @ prior_mean
            latent = torch.linalg.solve(hessian.double(), gradient.double()).to(offset.dtype)[None]
        return self.model.decode(latent)[0]

    def _invert(self, texture: Tensor, weight: Tensor, start: Tensor | None) -> Tensor:
        from ..fit.optim import Adam

        model = self.model
        res = model.resolution
        target, w = _resize(texture[None], res), _resize(weight[None], res)
        w = w / w.sum().clamp_min(1e-6)
        latent = (start if start is not None else model.initial_latent(1)).detach().clone().requires_grad_(True)
        optimiser = Adam([latent], lr=0.05)
        with torch.enable_grad():
            for _ in range(self.settings.inversion_steps):
                loss = ((model.decode(latent) - target).abs().mean(1, keepdim=True) * w).sum()
                loss = loss + self.settings.prior_weight * model.prior(latent).sum()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        return model.decode(latent.detach())


def _resize(image: Tensor, size: int) -> Tensor:
    """(B, C, S, S) -> (B, C, size, size): area-averaged down, bilinear up."""
    if image.shape[-1] == size:
        return image
    if image.shape[-1] > size:
        return F.adaptive_avg_pool2d(image, size)
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)


def _affine_parts(model: TextureModel, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """(offset (D,), jacobian (L, D), prior mean (L,), prior precision (L, L)) of a model that is
    affine in its latent, at ``size`` px (D = 3 size^2), or None for any other model."""
    from .gan import GanTextureModel
    from .pca import PcaTextureModel

    if isinstance(model, PcaTextureModel):
        dim = model.latent_dim
        basis = _resize((model.basis * model.std[:, None]).view(dim, *model.mean.shape), size).flatten(1)
        offset = _resize(model.mean[None], size).flatten()
        return offset, basis, torch.zeros(dim, device=model.device), torch.eye(dim, device=model.device)
    if isinstance(model, GanTextureModel) and model.latent_space == "w" and model.detail is None:
        synthesis = model.generator.synthesis
        config = model.config
        if config.detail or not config.pca_base or not config.mean_offset:
            return None
        # decode(w) = 0.5 (mean + coefficients(w) . components) + 0.5, coefficients(w) = A w + b
        linear = synthesis.pca_coefficients
        a = linear.weight * linear.weight_gain  # (K, L)
        b = linear.bias * linear.bias_gain  # (K,)
        components = _resize(synthesis.pca_basis, size).flatten(1)  # (K, D)
        offset = 0.5 * (_resize(synthesis.mean_image[None], size).flatten() + b @ components) + 0.5
        jacobian = 0.5 * a.T @ components  # (L, D)
        precision = model.w_whitening @ model.w_whitening.T
        return offset, jacobian, model.w_mean.clone(), precision
    return None


# --------------------------------------------------------------------------------------------
# 3. Colour match, 4. multi-band blend


#: Rec. 709 luminance weights (linear light).
_LUMA = torch.tensor([0.2126, 0.7152, 0.0722])
#: Mean saturation ((max - min) / max, linear light) of the trusted photo texels below which a
#: photo counts as black and white: 0.30 and 0.31 on the two toned scans of Einstein, 0.59-0.88 on
#: the colour photos (the public 8 and 20 UTKFace photos).
MONOCHROME_SATURATION = 0.45


def monochrome_tone(photo: Tensor, weight: Tensor, threshold: float = 0.5) -> Tensor | None:
    """(3,) the tone of a black-and-white or toned photo texture (3, S, S): its trusted texels'
    (``weight`` > ``threshold``) mean colour over their mean luminance, in linear light; None for
    a colour photo (mean saturation, (max - min) / max, at or above ``MONOCHROME_SATURATION``) or
    too few trusted texels."""
    w = (weight * (weight > threshold)).flatten()
    if float(w.sum()) < 16:
        return None
    return _monochrome_tone(srgb_to_linear(photo).flatten(1), w)


def _monochrome_tone(linear: Tensor, w: Tensor) -> Tensor | None:
    """``monochrome_tone`` of the photo's texels already in linear light (3, N) with their
    weights (N,) (at least 16 in all)."""
    total = w.sum()
    brightest = linear.max(0).values
    saturation = float((((brightest - linear.min(0).values) / brightest.clamp_min(1e-3)) * w).sum() / total)
    if saturation >= MONOCHROME_SATURATION:
        return None
    mean = (linear * w).sum(1) / total
    return mean / (_LUMA.to(mean) @ mean).clamp_min(1e-4)


def match_colour(model: Tensor, photo: Tensor, weight: Tensor, threshold: float = 0.5) -> Tensor:
    """``model`` (3, S, S) with a per-channel gain and offset in linear light fitted by weighted
    least squares to ``photo`` where ``weight`` > ``threshold``; unchanged if too few texels.
    A black-and-white or toned photo (its trusted texels' mean saturation below
    ``MONOCHROME_SATURATION``) gets the model's luminance only, which the per-channel gains then
    give the photo's tone: the gains alone make the model's mean match, but its colour variations
    (pinker ears, a bluish neck) would stay on a monochrome head."""
    w = (weight * (weight > threshold)).flatten()
    if float(w.sum()) < 16:
        return model
    m, p = srgb_to_linear(model).flatten(1), srgb_to_linear(photo).flatten(1)
    total = w.sum()
    if _monochrome_tone(p, w) is not None:  # (the photo in linear light once, for both)
        m = (_LUMA.to(m) @ m)[None].expand_as(m)
    mm, pm = (m * w).sum(1) / total, (p * w).sum(1) / total
    cov = ((m - mm[:, None]) * (p - pm[:, None]) * w).sum(1) / total
    var = ((m - mm[:, None]).square() * w).sum(1) / total
    # A gain far from 1 would mean the fit failed: keep it within a factor 2.
    gain = (cov / var.clamp_min(1e-8)).clamp(0.5, 2.0)
    offset = pm - gain * mm
    log.debug("blend: colour gain %s offset %s", gain.tolist(), offset.tolist())
    return linear_to_srgb(m * gain[:, None] + offset[:, None]).view_as(model).clamp(0, 1)


def match_colour_locally(model: Tensor, photo: Tensor, weight: Tensor, chart: Tensor, cells: int) -> Tensor:
    """``model`` (3, S, S) plus the photo's low-frequency difference from it where the photo is
    trusted, carried outward from there: the colour of the skin around the seen face, at the scale
    of ``cells`` cells across the map. Why: one gain and offset per channel (``match_colour``)
    leaves the model's regional tone (an orange ring where glasses were, a paler jaw), and the
    blend's coarse bands then show the face as a patch of another tone. Computed on a
    ``cells``-cell copy (area averages weighted by ``weight``), filled by push-pull, and scaled
    back up bilinearly, so it costs the same at any texture size."""
    if cells < 2:
        return model
    w = (weight * chart)[None]
    small = _resize(torch.cat([(photo - model)[None] * w, w], 1), cells)[0]
    known = small[3:]
    difference = small[:3] / known.clamp_min(1e-6)
    filled = push_pull_fill(difference, (known > 0.3).to(known))
    return (model + _resize(filled[None], model.shape[-1])[0]).clamp(0, 1)


# --------------------------------------------------------------------------------------------
# 3b. Cleaning the model of what is not skin
#
# Why: the texture model learned from projected photos, so its decode paints what those photos
# often showed beside the face: dark blobs of hair at the temples and forehead corners, shadow
# under the jaw, dark ear rims. The colour match then carries the photo's own fringe (a hair
# strand, the background at the face's edge) into the model around it. On the head's skin (the
# skin charts less brows, eyes and lips, ``uv_layout.skin_uv_masks``) every texel the model paints
# should be skin, so its colours far from the seen skin's are refilled from the skin around them.
# Foreign colour on UTKFace 20 (docs/texture-quality.md): 4.4% -> 1.0%, the face's identity
# unchanged.


def skin_colour(photo: UVTexture, masks: SkinUVMasks, trusted: float = 0.8, least: int = 50) -> SkinColour | None:
    """The seen skin's colour distribution: the photo texels seen squarely (weight above
    ``trusted``) on the cheeks and nose, or anywhere on the face when fewer than ``least`` of those
    were seen (brows, eyes and lips left out); None when neither has ``least`` texels (nothing
    to measure skin by)."""
    image = photo.image.detach().cpu().permute(1, 2, 0).numpy()
    seen = photo.confidence[0].detach().cpu().numpy() > trusted
    for region in (masks.inner_face, masks.face & masks.head_skin):
        picked = seen & region
        if int(picked.sum()) >= least:
            return SkinColour.of(image[picked])
    return None


def default_skin_masks(chart: Tensor) -> SkinUVMasks | None:
    """The default head's skin masks at ``chart``'s size, or None when ``chart`` (1, S, S) is
    another layout (a user's own shape model), whose regions these masks would not name."""
    return skin_uv_masks(chart.shape[-1]) if _is_default_layout(chart) else None


def foreign_photo(weight: Tensor, photo: Tensor, skin: SkinColour, masks: SkinUVMasks, sigmas: float) -> np.ndarray:
    """(S, S) bool: the seen (``weight`` (1, S, S) > 0) head-skin texels outside the face outline
    whose photo colour (``photo`` (3, S, S)) lies beyond ``sigmas`` of ``skin``: the hair, hat
    brim or background there that the segmentation took for skin
    (``BlendSettings.photo_foreign_sigmas``). The blend gives them no photo weight."""
    candidates = masks.head_skin & ~masks.face_outline & (weight[0].detach().cpu().numpy() > 0)
    colours = photo.detach().cpu().permute(1, 2, 0).numpy()[candidates]  # (only where it matters: fast at 2048)
    foreign = np.zeros_like(candidates)
    foreign[candidates] = skin.distance(colours) > sigmas
    return foreign


def _component_areas(mask: np.ndarray) -> np.ndarray:
    """(S, S) int: each texel of ``mask`` (S, S) bool given the texel count of its 4-connected
    component; 0 outside ``mask``."""
    import cv2

    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    areas = stats[:, cv2.CC_STAT_AREA].copy()
    areas[0] = 0  # (label 0: the texels outside the mask)
    return areas[labels]


def _patches(mask: np.ndarray | None, area: float) -> np.ndarray | None:
    """The 4-connected components of ``mask`` (S, S) of at least ``area`` x S^2 texels."""
    if mask is None or area <= 0:
        return mask
    return _component_areas(mask) >= area * mask.size


def _skin_likeness(distance: ArrayOrTensor, near: float, far: float) -> ArrayOrTensor:
    """1 up to ``near`` robust deviations from the skin, falling to 0 at ``far``."""
    likeness = (far - distance) / max(far - near, 1e-6)
    return likeness.clamp(0, 1) if isinstance(likeness, Tensor) else np.clip(likeness, 0, 1)


def clean_model(model: Tensor, skin: SkinColour, masks: SkinUVMasks, chart: Tensor,
                sigmas: tuple[float, float], scale: int) -> Tensor:
    """``model`` (3, S, S) with its head-skin colours far from ``skin`` replaced by skin.

    1. On a copy ``scale`` times smaller, texels beyond ``sigmas[0]`` robust deviations lose their
       weight (all of it beyond ``sigmas[1]``) and are refilled by push-pull from the skin-coloured
       texels around them; the model's own fine detail (the full map less its small copy) is added
       back where the texel itself is skin-coloured, so the refill is as sharp as the model.
    2. Any head-skin texel still beyond ``sigmas[1]`` is pulled straight toward the skin's median
       colour until it is within it: a patch with no skin around it to fill from (a dark scalp
       from ear to ear) becomes skin of the darkest plausible shade, not a smear of hair."""
    near, far = sigmas
    size = model.shape[-1]
    small_size = max(size // max(scale, 1), 8)
    region = torch.tensor(masks.head_skin).to(model)
    small = _resize(model[None], small_size)[0]
    distance = torch.from_numpy(skin.distance(small.detach().cpu().permute(1, 2, 0).numpy())).to(model)
    inlier = _skin_likeness(distance, near, far)
    on_chart = (_resize(chart[None], small_size)[0, 0] > 0.5).to(model)
    keep = (1 - _resize(region[None, None], small_size)[0, 0] * (1 - inlier)) * on_chart
    filled = push_pull_fill(small, keep[None])
    refill = _resize(((1 - keep) * on_chart)[None, None], size)[0] * region  # (brows, eyes, lips stay)
    # The model's fine detail, but not a foreign texel's own: a dark blob's edges are "detail" at
    # the small copy's scale, and would come back as a dark outline around the refill.
    texels = np.flatnonzero(masks.head_skin.reshape(-1))
    own = np.ones(size * size, np.float32)
    own[texels] = _skin_likeness(skin.distance(model.detach().cpu().permute(1, 2, 0).numpy().reshape(-1, 3)[texels]),
                                 near, far)
    detail = (model - _resize(small[None], size)[0]) * torch.from_numpy(own.reshape(1, size, size)).to(model)
    cleaned = (model * (1 - refill) + (_resize(filled[None], size)[0] + detail) * refill).clamp(0, 1)
    # 2. What is still far, pulled toward the median (a few steps of a line search per texel).
    rgb = cleaned.detach().cpu().permute(1, 2, 0).numpy().reshape(-1, 3).astype(np.float64)
    index = texels[skin.distance(rgb[texels]) > far]
    if index.size:
        centre = skin.median_srgb()
        offset = rgb[index] - centre
        keep_share = np.zeros(index.size)
        for share in np.linspace(0.1, 1.0, 10):
            keep_share = np.where(skin.distance(centre + offset * share) <= far, share, keep_share)
        rgb[index] = centre + offset * keep_share[:, None]
        cleaned = torch.from_numpy(rgb.reshape(size, size, 3)).permute(2, 0, 1).to(model)
    log.debug("blend: model cleaned; %d head-skin texels refilled in part, %d pulled toward skin",
              int((refill[0] > 0.01).sum()), int(index.size))
    return cleaned


_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: Tensor) -> Tensor:
    """Separable 5-tap binomial blur of (B, C, H, W), edges replicated."""
    c = x.shape[1]
    k = _BINOMIAL.to(x)
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def _down(x: Tensor) -> Tensor:
    """``_blur(x)[..., ::2, ::2]`` computed at the output's texels only (strided convolutions): a
    quarter of the work, which at 2048 px was most of the blend's time."""
    c = x.shape[1]
    k = _BINOMIAL.to(x)
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5).expand(c, 1, 1, 5), stride=(1, 2),
                 groups=c)
    return F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1).expand(c, 1, 5, 1), stride=(2, 1),
                    groups=c)


def _up(x: Tensor, shape: torch.Size) -> Tensor:
    return F.interpolate(x, size=shape[-2:], mode="bilinear", align_corners=False)


def multiband_blend(photo: Tensor, model: Tensor, weight: Tensor, chart: Tensor, levels: int = 6) -> Tensor:
    """(3, S, S): ``photo`` where ``weight`` (1, S, S) is 1, ``model`` where it is 0, each
    frequency band mixed with the weight blurred to that band's scale. Both images must be
    filled past the chart borders (push-pull); the weight's pyramid is taken inside ``chart``
    (1, S, S) only."""
    # One pyramid for the stacked images and one for weight x chart with the chart.
    images = torch.cat([photo, model])[None]
    masks = torch.cat([weight * chart, chart])[None]
    laplacian: list[Tensor] = []
    mixes: list[Tensor] = []
    for _ in range(max(levels - 1, 0)):
        if min(images.shape[-2:]) < 4:
            break
        mixes.append(masks[:, :1] / masks[:, 1:].clamp_min(1e-6))
        smaller = _down(images)
        laplacian.append(images - _up(smaller, images.shape))
        images = smaller
        masks = _down(masks)
    mix = masks[:, :1] / masks[:, 1:].clamp_min(1e-6)
    out = images[:, :3] * mix + images[:, 3:] * (1 - mix)
    for band, mix in zip(reversed(laplacian), reversed(mixes)):
        out = _up(out, band.shape) + band[:, :3] * mix + band[:, 3:] * (1 - mix)
    return out[0]


# --------------------------------------------------------------------------------------------
# The whole


@torch.no_grad()
def fitted_model(photo: UVTexture, fitter: TextureFitter, chart: Tensor, start: Tensor | None = None) -> Tensor:
    """(3, S, S) the texture model fitted to ``photo`` with its confidence as weights, matched in
    colour to it and padded past the chart borders: what ``blend_texture`` blends the photo with."""
    size = photo.image.shape[-1]
    decoded = fitter.fit(photo.image, photo.confidence, start)
    model = _resize(decoded[None], size)[0].clamp(0, 1)
    model = match_colour(model, photo.image, photo.confidence, fitter.settings.match_threshold)
    model = match_colour_locally(model, photo.image, photo.confidence, chart, fitter.settings.local_match_cells)
    return push_pull_fill(model, chart)  # past the chart borders: the charts' own colours


@torch.no_grad()
def blend_texture(
    photo: UVTexture, fitter: TextureFitter, chart: Tensor, start: Tensor | None = None,
    iris: Tensor | None = None,
) -> UVTexture:
    """The final albedo from the photo texture ``photo`` (its confidence is the photo weight W,
    ``photo_skin_texture``) and the texture model of ``fitter``: the model fitted to the photo
    where W is high, matched in colour, and the two blended band by band inside ``chart``.
    ``start``: a latent to start a non-affine model's inversion from. The eyes and mouth get
    their own albedo (``paint_eyes_and_mouth``; ``iris``: the photo's iris colour, else estimated
    from the eye texels the photo saw). The result's confidence is W."""
    settings = fitter.settings
    size = photo.image.shape[-1]
    masks = default_skin_masks(chart)
    skin = skin_colour(photo, masks) if masks is not None else None
    weight, foreign = photo.confidence, None
    if masks is not None and skin is not None:
        foreign = foreign_photo(weight, photo.image, skin, masks, settings.photo_foreign_sigmas)
        weight = weight * torch.from_numpy(~foreign).to(weight)
    weight = blend_weight(weight, chart, settings, keep_open=_patches(foreign, settings.foreign_open_area))
    photo = UVTexture(photo.image, weight)
    model = fitted_model(photo, fitter, chart, start)
    if masks is not None and skin is not None:
        model = clean_model(model, skin, masks, chart, settings.clean_sigmas, settings.clean_scale)
    levels = max(1, min(settings.levels + max(int(np.log2(size)) - 9, 0), int(np.log2(size)) - 2))
    # A texel the photo barely trusts still has its own observation's colour (the projection
    # normalises by the weight): hair or background just past the skin border. The bands take the
    # photo from around instead where its weight is low (push-pull with the weight squared), so the
    # border's edge does not reach the fine bands at the boundary (seam ratio 10.5 -> 8.1, UTKFace 20).
    trusted = push_pull_fill(photo.image, weight * weight)
    blended = multiband_blend(trusted, model, weight, chart, levels)
    # Skin seen squarely keeps the photo exactly: the pyramid's coarse bands mix in a little of the
    # model even where W is 1 near its edge (seen skin was 0.97x the photo's sharpness without this).
    exact = ((weight - settings.exact_from) / (1.0 - settings.exact_from)).clamp(0, 1) * chart
    blended = photo.image * exact + blended * (1 - exact)
    blended = paint_eyes_and_mouth(blended, photo, chart, iris)
    return UVTexture(image=push_pull_fill(blended.clamp(0, 1), chart), confidence=weight)


# --------------------------------------------------------------------------------------------
# 5. Eyes and mouth (issue 17, item 4)
#
# Why: the texture model was trained on skin; on the eyeballs and inside the mouth its decode is
# skin too, so a blended head has skin-coloured eyes wherever the photo did not see them (behind
# the lids, behind glasses) and a skin-coloured mouth. These charts get a procedural albedo laid
# in the mean head's 3D coordinates instead: a radial pupil / iris / sclera pattern around each
# eyeball's front pole (the iris colour estimated from the photo), off-white teeth in a band
# behind the lip line and a dark red cavity. The photo replaces it where it saw these texels
# (the photo weight W), and on the eyeballs also just beside them (``EYE_FILL_REACH``), where a
# turned view looks through the lids. The tongue keeps the blend: in fitted smiles its
# tip pokes through the chin, where a red tongue would show and a skin-coloured one hides.

#: sRGB albedos of what the photo rarely shows: a slightly warm off-white sclera, a near-black
#: pupil, off-white teeth, the mouth's dark red, darkening to the throat's near black.
SCLERA = (0.86, 0.82, 0.78)
PUPIL = (0.04, 0.035, 0.035)
TEETH = (0.86, 0.82, 0.72)
MOUTH = (0.36, 0.12, 0.11)
THROAT = (0.09, 0.035, 0.035)
#: The cavity darkens from MOUTH to THROAT between these depths behind its front (m). Why: the
#: cavity reaches 10.7 cm back, and from behind the head the neck opening shows its back part
#: (beyond 7 cm), which a red albedo turned into a red patch under the skull; dark, it reads as
#: the shadow inside the neck. Not shallower: darkening from 3 cm cost dlib 0.005 on the turned
#: views of open mouths (UTKFace 20, on the face alone), which look 3-5 cm in.
THROAT_DEPTH = (0.06, 0.075)
#: Iris colour when no photo shows an eye (a mid brown, the commonest).
DEFAULT_IRIS = (0.36, 0.24, 0.15)
#: Eyeball texels this far (a share of the map's side) from those the photo saw take its colours.
EYE_FILL_REACH = 0.015
#: Iris radius as a share of the eye's width (corner to corner): 11.7 mm of a 30 mm opening.
IRIS_TO_EYE_WIDTH = 0.195
#: Pupil radius as a share of the iris radius.
PUPIL_TO_IRIS = 0.36
#: Teeth: mouth-cavity points at most this far behind the cavity's front (m) and this far above
#: or below the lip line (m); a crown shows about 10 mm.
TEETH_DEPTH = 0.014
TEETH_HEIGHT = 0.010

_EYE_CHARTS = ("eye_front.L", "eye_front.R")
_MOUTH_CHARTS = ("mouth_cavity.L", "mouth_cavity.R")


@dataclass(frozen=True)
class EyeMouthLayout:
    """The eye-front and mouth-cavity texels of a ``size`` px map of the default head, with
    their procedural albedo. Texel ``k`` is ``index[k]`` in the flattened map."""

    size: int
    index: Tensor  # (N,) long
    base: Tensor  # (3, N) sRGB albedo with the iris left black
    iris: Tensor  # (N,) how much iris colour each texel takes (0..1 times its radial shade)
    iris_disc: Tensor  # (N,) bool: within 1.3 iris radii of an eye's front pole (the gaze may be off)
    sclera: Tensor  # (N,) bool: the eyeball outside 1.2 iris radii
    teeth: Tensor  # (N,) bool: the tooth band
    interior: Tensor  # (N,) bool: the mouth cavity away from the teeth
    charts: Tensor  # (N,) long: 0 eyes, 1 mouth cavity
    crop: tuple[int, int, int, int]  # rows and columns (r0, r1, c0, c1) that hold all of them
    coverage: float  # share of the map inside any chart (recognises the layout)


def _smoothstep(edge0: float, edge1: float, x: Tensor) -> Tensor:
    t = ((x - edge0) / (edge1 - edge0)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def eye_mouth_layout(size: int) -> EyeMouthLayout | None:
    """The default head's ``EyeMouthLayout`` at ``size`` px (cached), or None when its model has
    no such charts."""
    return _eye_mouth_layout(int(size))


@lru_cache(maxsize=4)
def _eye_mouth_layout(size: int) -> EyeMouthLayout | None:
    from ..fit.texture_projection import uv_fragments
    from ..models.shape_model import load_default_shape_model
    from .uv_layout import chart_triangles

    model = load_default_shape_model()
    wanted = _EYE_CHARTS + _MOUTH_CHARTS
    if any(name not in model.uv_chart_names for name in wanted):
        return None
    verts = model.mean.float()
    faces = model.faces.long()
    tris = [chart_triangles(model, name) for name in wanted]
    label = torch.cat([torch.full_like(t, 0 if i < 2 else 1) for i, t in enumerate(tris)])
    side = torch.cat([torch.full_like(t, i % 2) for i, t in enumerate(tris)])  # 0 .L, 1 .R
    tris = torch.cat(tris)
    frags = uv_fragments(model.uvs.float(), model.uv_faces[tris].long(), size)
    index = frags.pixel_index
    corners = faces[tris[frags.triangle]]
    p = (frags.bary.detach()[..., None] * verts[corners]).sum(1)  # (N, 3) on the mean head
    charts = label[frags.triangle]
    n = p.shape[0]
    base = torch.zeros(3, n)
    iris = torch.zeros(n)
    iris_disc = torch.zeros(n, dtype=torch.bool)
    sclera = torch.zeros(n, dtype=torch.bool)

    # Eyes: the angle from the eyeball's front pole, in iris radii.
    marks = model.landmark_indices.long()
    for s, (name, corner_a, corner_b) in enumerate(((_EYE_CHARTS[0], 42, 45), (_EYE_CHARTS[1], 36, 39))):
        sel = (charts == 0) & (side[frags.triangle] == s)
        ball = torch.unique(faces[chart_triangles(model, name)])
        centre, radius = _sphere(verts[ball].double())
        pole = verts[ball][verts[ball][:, 2].argmax()].double()
        axis = (pole - centre) / (pole - centre).norm()
        width = float((verts[marks[corner_a]] - verts[marks[corner_b]]).norm())
        iris_angle = float(np.arcsin(min(IRIS_TO_EYE_WIDTH * width / radius, 0.9)))
        d = p[sel].double() - centre
        cos = (d @ axis) / d.norm(dim=1).clamp_min(1e-9)
        t = (torch.arccos(cos.clamp(-1, 1)) / iris_angle).float()  # 0 at the pole, 1 at the limbus
        # Fibres: a faint angular modulation; the limbal ring darker, the collarette lighter.
        e1 = torch.linalg.cross(axis, torch.tensor([0.0, 1.0, 0.0], dtype=axis.dtype))
        e1 = e1 / e1.norm()
        e2 = torch.linalg.cross(axis, e1)
        phi = torch.atan2(d @ e2, d @ e1).float()
        fibres = 1 + 0.08 * torch.sin(phi * 29) * torch.sin(phi * 11 + 1.3)
        shade = (1.15 - 0.55 * _smoothstep(0.55, 1.0, t)) * fibres
        pupil_a = 1 - _smoothstep(PUPIL_TO_IRIS - 0.05, PUPIL_TO_IRIS + 0.04, t)
        sclera_a = _smoothstep(0.96, 1.12, t)
        iris_a = (1 - pupil_a - sclera_a).clamp(0, 1)
        # The sclera a little darker toward the eye's sides (the canthi), as real ones are.
        white = torch.tensor(SCLERA)[:, None] * (1 - 0.08 * _smoothstep(1.5, 3.5, t))
        base[:, sel] = torch.tensor(PUPIL)[:, None] * pupil_a + white * sclera_a
        iris[sel] = iris_a * shade
        iris_disc[sel] = t < 1.3
        sclera[sel] = t > 1.2

    # Mouth: teeth in a band behind the lip line, dark red elsewhere.
    cavity = torch.unique(faces[torch.cat([chart_triangles(model, n_) for n_ in _MOUTH_CHARTS])])
    front = verts[cavity][verts[cavity][:, 2].argmax()]
    sel = charts == 1
    q = p[sel]
    tooth = ((1 - _smoothstep(TEETH_DEPTH * 0.8, TEETH_DEPTH, front[2] - q[:, 2]))
             * (1 - _smoothstep(TEETH_HEIGHT * 0.8, TEETH_HEIGHT, (q[:, 1] - front[1]).abs())))
    deep = _smoothstep(THROAT_DEPTH[0], THROAT_DEPTH[1], front[2] - q[:, 2])
    cavity_colour = torch.tensor(MOUTH)[:, None] * (1 - deep) + torch.tensor(THROAT)[:, None] * deep
    base[:, sel] = torch.tensor(TEETH)[:, None] * tooth + cavity_colour * (1 - tooth)
    teeth = torch.zeros(n, dtype=torch.bool)
    teeth[sel] = tooth > 0.99
    interior = torch.zeros(n, dtype=torch.bool)
    interior[sel] = tooth < 0.01

    rows, cols = index // size, index % size
    crop = (int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1)
    full = uv_fragments(model.uvs.float(), model.uv_faces.long(), size)
    coverage = float(torch.unique(full.pixel_index).numel()) / size**2
    return EyeMouthLayout(size, index, base.clamp(0, 1), iris, iris_disc, sclera, teeth, interior, charts, crop,
                          coverage)


def _sphere(points: Tensor) -> tuple[Tensor, float]:
    """Least-squares sphere (centre (3,), radius) through ``points`` (N, 3)."""
    a = torch.cat([2 * points, torch.ones_like(points[:, :1])], 1)
    b = points.square().sum(1, keepdim=True)
    sol = torch.linalg.lstsq(a, b).solution[:, 0]
    centre = sol[:3]
    return centre, float(torch.sqrt(sol[3] + centre.square().sum()))


def robust_iris_colour(colours: Tensor) -> Tensor | None:
    """(3,) the iris colour among an eye opening's colours (N, 3): the darker half without the
    darkest tenth (the pupil, lash shadows) -- the brighter half is sclera, lids and glints; the
    median per channel. None with fewer than 12 colours."""
    if colours.shape[0] < 12:
        return None
    lum = colours @ _LUMA.to(colours)
    order = lum.argsort()
    n = order.numel()
    band = order[int(0.1 * n): max(int(0.5 * n), int(0.1 * n) + 1)]
    return colours[band].median(0).values


def eye_openings(shape: tuple[int, int], landmarks: np.ndarray) -> np.ndarray:
    """(H, W) bool: the two eye openings (dlib points 36-41, 42-47) grown by a fifth of the eye's
    width. Behind glasses the segmentation calls the eyes headwear-or-glasses; the eyes still show
    through the lenses, and a painted eye is less like the person than the photo's (dlib, turned
    25 degrees, masked: 0.338 against 0.317 on the 8 public photos)."""
    import cv2

    mask = np.zeros(shape, np.uint8)
    points = np.asarray(landmarks, dtype=np.float64)
    for lo in (36, 42):
        cv2.fillPoly(mask, [np.round(points[lo: lo + 6]).astype(np.int32)], 1)
    grow = max(1, int(round(0.2 * float(np.linalg.norm(points[39] - points[36])))))
    return cv2.dilate(mask, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)) > 0


def iris_colour(pixels: np.ndarray, landmarks: np.ndarray) -> Tensor | None:
    """(3,) sRGB iris colour of a photo (H, W, 3 uint8) from the pixels inside the two eye outlines
    (dlib points 36-41, 42-47), by ``robust_iris_colour``; None if the outlines hold too few."""
    import cv2

    mask = np.zeros(pixels.shape[:2], np.uint8)
    points = np.asarray(landmarks, dtype=np.float64)
    for lo in (36, 42):
        cv2.fillPoly(mask, [np.round(points[lo: lo + 6]).astype(np.int32)], 1)
    colours = torch.from_numpy(np.asarray(pixels)[mask > 0].astype(np.float32) / 255.0)
    return robust_iris_colour(colours)


def _near_seen_eyes_from_photo(painted: Tensor, colours: Tensor, w: Tensor, eyes: Tensor,
                                layout: EyeMouthLayout) -> Tensor:
    """``painted`` (3, N) with the eyeball texels within ``EYE_FILL_REACH`` of those the photo saw
    (``w`` > 0.5) taking the seen ones' colours, spread over the eyeball (push-pull): fully within
    half the reach, fading out by one and a half. Why: the photo sees a sliver of each eyeball,
    and a turned view looks through the lids at eyeball beside it (parallax); painted sclera there
    has no lid shadow (the renderer has none) and shows as a white glare (dlib, turned 25 degrees,
    face alone: 0.353 against 0.311 with the photo's colours, UTKFace 20). The rest keeps the
    paint."""
    seen = ((w > 0.5) & eyes).to(painted.dtype)
    if float(seen.sum()) < 1:
        return painted
    size = layout.size
    r0, r1, c0, c1 = layout.crop
    index = layout.index.to(painted.device)
    local = (index // size - r0) * (c1 - c0) + (index % size - c0)

    def to_map(values: Tensor) -> Tensor:  # (C, N) -> (C, rows, cols) of the crop
        out = values.new_zeros(values.shape[0], (r1 - r0) * (c1 - c0))
        out[:, local] = values
        return out.view(values.shape[0], r1 - r0, c1 - c0)

    seen_map = to_map(seen[None])
    filled = push_pull_fill(to_map(colours * seen), seen_map).reshape(3, -1)[:, local]
    reach = max(1, round(EYE_FILL_REACH * size))
    # 1 within half the reach, fading to 0 at one and a half.
    # (A square max filter as two 1-D passes: the same result, 0.02 s instead of 0.6 s at 2048 px.)
    near = F.max_pool2d(seen_map[None], (2 * reach + 1, 1), 1, (reach, 0))
    near = F.max_pool2d(near, (1, 2 * reach + 1), 1, (0, reach))
    soft = max(1, reach // 2)
    near = F.avg_pool2d(near, 2 * soft + 1, 1, soft, count_include_pad=False)[0].reshape(-1)[local]
    near = near * eyes
    return painted * (1 - near) + filled * near


def _is_default_layout(chart: Tensor) -> bool:
    """Whether ``chart`` (1, S, S) is the default head's layout (a user's own shape model has its
    own charts, which the procedural eyes and the skin regions do not name)."""
    layout = eye_mouth_layout(chart.shape[-1])
    if layout is None:
        return False
    flat = chart.reshape(-1)
    return (abs(float((flat > 0.5).float().mean()) - layout.coverage) < 0.002
            and bool((flat.index_select(0, layout.index.to(flat.device)) > 0.5).all()))


@torch.no_grad()
def paint_eyes_and_mouth(image: Tensor, photo: UVTexture, chart: Tensor, iris: Tensor | None = None) -> Tensor:
    """``image`` (3, S, S) with the eye-front and mouth-cavity charts replaced by the
    procedural albedo, the photo laid over it where the photo weight (``photo.confidence``) is
    high. ``iris`` (3,) sRGB: the iris colour (``iris_colour`` of the photo); None estimates it
    from the eye texels the photo saw, else ``DEFAULT_IRIS``. Unchanged for other layouts."""
    size = image.shape[-1]
    layout = eye_mouth_layout(size)
    if layout is None or not _is_default_layout(chart):
        return image
    dev, dtype = image.device, image.dtype
    index = layout.index.to(dev)
    # The photo weight as it is, not eroded: an earlier version eroded it on the eyes by a texel or
    # two (lid colour at the opening's rim); the photo sees only a sliver of each eyeball, the
    # erosion took most of it, and the turned view showed paint (+0.02 dlib distance, UTKFace 20).
    w = photo.confidence.reshape(-1).index_select(0, index)
    eyes = layout.charts.to(dev) == 0
    colours = photo.image.reshape(3, -1).index_select(1, index)
    if iris is None:
        seen = (w > 0.5) & layout.iris_disc.to(dev)
        iris = robust_iris_colour(colours[:, seen].T)
        log.debug("blend: iris colour from %d seen eye texels: %s", int(seen.sum()),
                  None if iris is None else iris.tolist())
    if iris is None:
        iris = torch.tensor(DEFAULT_IRIS)
    painted = layout.base.to(dev, dtype) + layout.iris.to(dev, dtype) * iris.to(dev, dtype)[:, None]
    tone = monochrome_tone(photo.image, photo.confidence)
    if tone is not None:  # a black-and-white photo: the paint in its tone, not coloured
        grey = _LUMA.to(painted) @ srgb_to_linear(painted)
        painted = linear_to_srgb(grey[None] * tone.to(painted)[:, None]).clamp(0, 1)
    painted = _near_seen_eyes_from_photo(painted, colours, w, eyes, layout)
    mixed = painted * (1 - w) + colours * w
    out = image.reshape(3, -1).clone()
    out[:, index] = mixed
    return out.view_as(image)
