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
2. **Model fit**: the texture model's decode fitted to the photo texture with W as weights
   (eq. 6 with the confidence as weights). Paper 3.1 minimises an L1 distance by gradient
   descent; the shipped GAN and PCA models are affine in their latent, so here the weighted
   least-squares problem (plus the model's prior) is solved in closed form on a 64 px copy of
   the components: one 256 x 256 solve, milliseconds instead of an inversion loop. Other
   models (a GAN with a convolutional synthesis) get a short weighted inversion.
3. **Colour match**: a per-channel gain and offset in linear light, fitted by weighted least
   squares where the photo is trusted (W > 0.5), so the model agrees with the photo where they
   meet.
4. **Multi-band blending** (Burt and Adelson 1983): Laplacian pyramids of photo and model mixed
   with a Gaussian pyramid of W, so fine detail switches over a few texels and colour over
   many: no seam. Inside the UV charts only: both images are padded past the chart borders by
   push-pull first, and the weight's pyramid is normalised by the charts' own, so empty texels
   neither bleed in nor pull the weight down along chart edges.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..fit.texture_projection import UVTexels, UVTexture, _observe, frags_to_image, push_pull_fill
from ..render import Camera, PointLight, rasterize, vertex_normals
from ..render.shading import linear_to_srgb, srgb_to_linear
from .model import TextureModel

__all__ = [
    "BlendSettings",
    "TextureFitter",
    "blend_texture",
    "chart_mask",
    "fitted_model",
    "match_colour",
    "multiband_blend",
    "photo_skin_texture",
    "skin_mask",
]

log = logging.getLogger(__name__)


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
    #: Pyramid levels of the multi-band blend (at 512 px the coarsest is 16 px).
    levels: int = 6
    #: The skin mask's edge is softened and pulled inward by this share of the face's height (in
    #: photo pixels), so the segmentation's border (a hairline pixel taken for skin) gets little
    #: weight.
    edge_softness: float = 0.015
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


def _sample(image: Tensor, xy: Tensor) -> Tensor:
    """Bilinear values (N,) of a (H, W) map at pixel positions (N, 2); 0 outside."""
    h, w = image.shape
    grid = torch.stack([xy[:, 0] / w * 2 - 1, xy[:, 1] / h * 2 - 1], -1)
    return F.grid_sample(image[None, None], grid[None, None], mode="bilinear", align_corners=False)[0, 0, 0]


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
    """The photo (3, H, W) projected into UV as ``project_photo_to_uv`` does (albedo with
    ``light``, the mirror point where a texel is hidden, push-pull filling), with every
    observation weighted by ``skin`` (H, W) at its photo position: ``confidence`` is the photo
    weight W, and the colour is a mean over skin only (a texel whose own view shows hair takes
    its mirror's skin). Written here from the projection's own pieces rather than calling it
    twice (once for the colour, once for the mask): half the cost, and the colour mix can use
    the skin weights."""
    _, h, w = photo.shape
    skin = skin.to(photo)
    frags = rasterize(camera.project(vertices[None], w, h), faces, h, w, cull_backfaces=True)
    depth_map = frags.scatter(frags.depth[:, None])[0, 0]
    normals = vertex_normals(vertices[None], faces)[0]
    attributes = torch.cat([vertices, normals, vertices[mirror_index], normals[mirror_index]], -1)
    interpolated = texels.interpolate(attributes)
    own_p, own_n = interpolated[:, :3], interpolated[:, 3:6]

    own_c, own_w, own_xy = _observe(photo, depth_map, camera, own_p, own_n, light)
    own_w = own_w * _sample(skin, own_xy)
    # The mirror only where the texel itself is not seen as skin at full weight.
    partly = (own_w < 1).nonzero()[:, 0]
    seen_p, seen_n = interpolated[:, 6:].index_select(0, partly).split(3, -1)
    seen_c, seen_w, seen_xy = _observe(photo, depth_map, camera, seen_p, seen_n, light)
    seen_w = seen_w * _sample(skin, seen_xy)
    mir_c = torch.zeros_like(own_c).index_copy_(0, partly, seen_c)
    mir_w = torch.zeros_like(own_w).index_copy_(0, partly, seen_w) * (1 - own_w)
    total = own_w + mir_w
    colour = (own_c * own_w[:, None] + mir_c * mir_w[:, None]) / total.clamp_min(1e-8)[:, None]
    image, conf = frags_to_image(texels.fragments, torch.cat([colour, total[:, None].clamp(0, 1)], -1), size).split(
        [3, 1])
    log.debug("blend: %.1f%% of texels seen as skin", 100 * float((conf > 0.5).float().mean()))
    return UVTexture(image=push_pull_fill(image, conf).clamp(0, 1), confidence=conf)


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


def match_colour(model: Tensor, photo: Tensor, weight: Tensor, threshold: float = 0.5) -> Tensor:
    """``model`` (3, S, S) with a per-channel gain and offset in linear light fitted by weighted
    least squares to ``photo`` where ``weight`` > ``threshold``; unchanged if too few texels."""
    w = (weight * (weight > threshold)).flatten()
    if float(w.sum()) < 16:
        return model
    m, p = srgb_to_linear(model).flatten(1), srgb_to_linear(photo).flatten(1)
    total = w.sum()
    mm, pm = (m * w).sum(1) / total, (p * w).sum(1) / total
    cov = ((m - mm[:, None]) * (p - pm[:, None]) * w).sum(1) / total
    var = ((m - mm[:, None]).square() * w).sum(1) / total
    # A gain far from 1 would mean the fit failed: keep it within a factor 2.
    gain = (cov / var.clamp_min(1e-8)).clamp(0.5, 2.0)
    offset = pm - gain * mm
    log.debug("blend: colour gain %s offset %s", gain.tolist(), offset.tolist())
    return linear_to_srgb(m * gain[:, None] + offset[:, None]).view_as(model).clamp(0, 1)


_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: Tensor) -> Tensor:
    """Separable 5-tap binomial blur of (B, C, H, W), edges replicated."""
    c = x.shape[1]
    k = _BINOMIAL.to(x)
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def _down(x: Tensor) -> Tensor:
    return _blur(x)[..., ::2, ::2]


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
    return push_pull_fill(model, chart)  # past the chart borders: the charts' own colours


@torch.no_grad()
def blend_texture(
    photo: UVTexture, fitter: TextureFitter, chart: Tensor, start: Tensor | None = None,
) -> UVTexture:
    """The final albedo from the photo texture ``photo`` (its confidence is the photo weight W,
    ``photo_skin_texture``) and the texture model of ``fitter``: the model fitted to the photo
    where W is high, matched in colour, and the two blended band by band inside ``chart``.
    ``start``: a latent to start a non-affine model's inversion from. The result's confidence
    is W."""
    settings = fitter.settings
    size = photo.image.shape[-1]
    weight = photo.confidence
    model = fitted_model(photo, fitter, chart, start)
    levels = max(1, min(settings.levels, int(np.log2(size)) - 2))
    blended = multiband_blend(photo.image, model, weight, chart, levels)
    return UVTexture(image=push_pull_fill(blended.clamp(0, 1), chart), confidence=weight)
