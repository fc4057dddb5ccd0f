"""How good is a texture model: a distribution distance (KID) and a sharpness measure.

KID (Binkowski et al. 2018, "Demystifying MMD GANs"): the squared maximum mean discrepancy
between two feature sets under the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``,
estimated without bias and averaged over random subsets. Unlike FID it has no bias that depends
on the sample count, which matters for held-out sets of a few hundred UV maps; it can be
slightly negative when the sets come from one distribution.

Features: the paper's Table II uses Inception (FID), whose weights cannot be loaded offline
here. The project's own offline network is dlib's face-recognition ResNet
(``ganfit.face.recognition``); ``DlibFeatureExtractor`` resizes UV maps to its 150x150 input and
takes its 256-d globally average-pooled last block (the input of the final fc; ``"pooled"``) or
the 128-d descriptor (``"descriptor"``). These are features of a face-identity network looking at
UV maps, not Inception features: figures are comparable between models measured the same way,
not with published FID/KID values.

Sharpness (for the GAN-vs-PCA fitting comparison): the mean squared Laplacian of the luminance
inside a face-region mask, and the share of spectral energy above a frequency cut-off. Blurry
textures (what a PCA prior gives, paper 3.1) score low on both.

Artist-facing texture quality (issue 17, benchmarks/texture_quality.py, docs/texture-quality.md):
``foreign_colour`` (the share of head-skin texels whose colour is far from the face's own skin,
e.g. hair, a hat or sky painted onto the scalp or ears) and ``seam_ratio`` (is there a step where
the photo's part of a texture meets the model's). Both work on the shipped head's UV layout
through ``skin_uv_masks``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .colour import SkinColour, lab_to_srgb, srgb_to_lab
from .uv_layout import SkinUVMasks, skin_uv_masks

__all__ = [
    "FOREIGN_SIGMAS",
    "DlibFeatureExtractor",
    "ForeignColour",
    "SkinColour",
    "SkinUVMasks",
    "foreign_colour",
    "seam_ratio",
    "skin_uv_masks",
    "lab_to_srgb",
    "srgb_to_lab",
    "KidDifference",
    "KidResult",
    "high_frequency_ratio",
    "kid",
    "kid_difference",
    "laplacian_energy",
    "sharpness",
]

log = logging.getLogger(__name__)

FEATURE_NOTE = ("features: dlib face-recognition ResNet (ganfit.face.recognition) on UV maps resized to "
                "150x150 -- NOT Inception; not comparable with published FID/KID")


# --------------------------------------------------------------------------------------------
# KID


@dataclass(frozen=True)
class KidResult:
    """KID estimate: mean and standard deviation over ``subsets`` of ``subset_size`` each."""

    mean: float
    std: float
    subsets: int
    subset_size: int

    def __str__(self) -> str:
        return f"{self.mean:.5f} +- {self.std:.5f}"


def kid(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, subsets: int = 100,
        subset_size: int = 1000, seed: int = 0) -> KidResult:
    """Unbiased MMD^2 with the kernel ``(x.y / d + 1)^3`` between feature sets ``(m, d)`` and
    ``(n, d)``, averaged over ``subsets`` random subsets of ``min(subset_size, m, n)`` rows of
    each (drawn without replacement). Computed in float64."""
    x = _as_array(real)
    y = _as_array(fake)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sets must be (m, d) and (n, d), got {x.shape} and {y.shape}")
    size = min(subset_size, x.shape[0], y.shape[0])
    if size < 2:
        raise ValueError("KID needs at least two samples in each set")
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        a = x[rng.choice(x.shape[0], size, replace=False)]
        b = y[rng.choice(y.shape[0], size, replace=False)]
        k_aa, k_bb, k_ab = _kernel(a, a), _kernel(b, b), _kernel(a, b)
        off = size * (size - 1)
        values[i] = ((k_aa.sum() - np.trace(k_aa)) / off + (k_bb.sum() - np.trace(k_bb)) / off
                     - 2 * k_ab.mean())
    return KidResult(float(values.mean()), float(values.std()), subsets, size)


@dataclass(frozen=True)
class KidDifference:
    """``KID(real, a) - KID(real, b)``: its mean over bootstrap draws, a 95% interval, and the
    share of draws in which ``a`` is the closer of the two."""

    mean: float
    low: float
    high: float
    a_better: float
    draws: int

    def __str__(self) -> str:
        return (f"{self.mean:+.5f} (95% interval {self.low:+.5f} .. {self.high:+.5f}; "
                f"lower in {100 * self.a_better:.1f}% of {self.draws} draws)")


def kid_difference(real: np.ndarray | torch.Tensor, a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor,
                   draws: int = 1000, seed: int = 0) -> KidDifference:
    """Is model ``a`` closer to the real set than model ``b``, beyond chance? ``mean`` is the
    difference of the two unbiased KIDs on the full sets; the interval and the share come from
    a paired bootstrap: each draw resamples all three sets with replacement (the real set's
    finite size is the largest source of doubt when it holds only tens or hundreds of maps; the
    models' samples are finite too) and both KIDs share the real draw. Within a draw each KID
    stays unbiased: pairs made of one original sample twice are left out of the within-set
    means. Same kernel as ``kid``."""
    x, ya, yb = _as_array(real), _as_array(a), _as_array(b)
    if min(x.shape[0], ya.shape[0], yb.shape[0]) < 5:
        raise ValueError("a KID difference needs at least five samples in each set")
    k_xa, k_xb = _kernel(x, ya), _kernel(x, yb)
    k_aa, k_bb = _kernel(ya, ya), _kernel(yb, yb)
    rng = np.random.default_rng(seed)

    def within(k: np.ndarray, c: np.ndarray) -> float:
        """Mean of ``k`` over pairs of draws that are different original samples (weights ``c``)."""
        pairs = c.sum() ** 2 - (c**2).sum()
        return float((c @ k @ c - (c**2) @ np.diag(k)) / pairs) if pairs > 0 else float("nan")

    def difference(cr: np.ndarray, ca: np.ndarray, cb: np.ndarray) -> float:
        cross_a = cr @ k_xa @ ca / (cr.sum() * ca.sum())
        cross_b = cr @ k_xb @ cb / (cr.sum() * cb.sum())
        return within(k_aa, ca) - within(k_bb, cb) - 2 * (cross_a - cross_b)

    def counts(n: int) -> np.ndarray:
        return np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)

    estimate = difference(np.ones(x.shape[0]), np.ones(ya.shape[0]), np.ones(yb.shape[0]))
    values = np.array([difference(counts(x.shape[0]), counts(ya.shape[0]), counts(yb.shape[0])) for _ in range(draws)])
    values = values[np.isfinite(values)]  # a draw of one sample repeated has no pairs (n < ~10 only)
    low, high = np.percentile(values, [2.5, 97.5])
    return KidDifference(estimate, float(low), float(high), float((values < 0).mean()), int(values.size))


def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's cubic polynomial kernel ``(a.b / d + 1)^3`` between the rows of two feature sets."""
    return (a @ b.T / a.shape[1] + 1) ** 3


def _as_array(features: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    return np.asarray(features, dtype=np.float64)


class DlibFeatureExtractor:
    """Features of textures ``(B, 3, S, S)`` in [0, 1] from dlib's face-recognition ResNet.

    ``kind="pooled"``: the 256-d average-pooled output of the last residual block (the fc's
    input; ``network.fc(pooled)`` is the descriptor). ``kind="descriptor"``: the 128-d descriptor.
    The pooled features are computed with the network's own plain layers (``stem``, ``blocks``),
    the same function as its ``forward_reference`` up to the fc.
    """

    def __init__(self, device: str | torch.device = "cpu", kind: Literal["pooled", "descriptor"] = "pooled",
                 batch_size: int = 32) -> None:
        from ganfit.face.recognition import load_face_recognition_network

        if kind not in ("pooled", "descriptor"):
            raise ValueError(f"kind must be 'pooled' or 'descriptor', got {kind!r}")
        self.network = load_face_recognition_network(device)
        self.device = torch.device(device)
        self.kind = kind
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        return 256 if self.kind == "pooled" else 128

    @staticmethod
    def to_chip(textures: torch.Tensor) -> torch.Tensor:
        from ganfit.face.recognition import CHIP_SIZE

        return F.interpolate(textures.float(), size=(CHIP_SIZE, CHIP_SIZE), mode="bilinear", align_corners=False,
                             antialias=True).clamp(0, 1)

    def pooled(self, chips: torch.Tensor) -> torch.Tensor:
        net = self.network
        if net.stem.weight.is_contiguous(memory_format=torch.channels_last):
            chips = chips.contiguous(memory_format=torch.channels_last)
        x = F.max_pool2d(F.relu(net.stem(chips)), 3, 2)
        for block in net.blocks:
            x = block(x)
        return x.mean(dim=(2, 3))

    @torch.no_grad()
    def __call__(self, textures: torch.Tensor | Iterable[torch.Tensor]) -> np.ndarray:
        """``(N, dim)`` float64 features of a tensor ``(N, 3, S, S)`` or an iterable of batches."""
        batches = [textures] if isinstance(textures, torch.Tensor) else textures
        out = []
        for batch in batches:
            for start in range(0, batch.shape[0], self.batch_size):
                chips = self.to_chip(batch[start:start + self.batch_size].to(self.device))
                feats = self.pooled(chips) if self.kind == "pooled" else self.network(chips)
                out.append(feats.double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim))


# --------------------------------------------------------------------------------------------
# Sharpness

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
_LUMA = (0.299, 0.587, 0.114)


def _luma(textures: torch.Tensor) -> torch.Tensor:
    if textures.ndim != 4 or textures.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) textures, got {tuple(textures.shape)}")
    weights = torch.tensor(_LUMA, dtype=textures.dtype, device=textures.device)
    return (textures * weights[:, None, None]).sum(dim=1, keepdim=True)


def _face_mask(mask: torch.Tensor | None, like: torch.Tensor, erode: int) -> torch.Tensor:
    """``(B or 1, 1, H, W)`` float mask, shrunk by ``erode`` texels so the mask's edge (where
    the texture meets unrelated texels) does not count as detail."""
    h, w = like.shape[-2:]
    if mask is None:
        m = torch.ones(1, 1, h, w, dtype=like.dtype, device=like.device)
    else:
        m = mask.to(like.device, like.dtype)
        while m.ndim < 4:
            m = m[None]
        if m.shape[-2:] != (h, w):
            m = F.interpolate(m, size=(h, w), mode="nearest")
        m = (m > 0.5).to(like.dtype)
    # The Laplacian reads one texel around each texel: always drop the image border too.
    m = F.pad(m[..., 1:-1, 1:-1], (1, 1, 1, 1))
    if erode > 0:
        m = -F.max_pool2d(-m, 2 * erode + 1, stride=1, padding=erode)
    return m


def laplacian_energy(textures: torch.Tensor, mask: torch.Tensor | None = None, erode: int = 2) -> torch.Tensor:
    """Mean squared Laplacian of the luminance inside ``mask`` (``(H, W)`` or ``(B, 1, H, W)``,
    1 = face), per texture ``(B,)``; textures ``(B, 3, H, W)`` in [0, 1]. Depends on resolution:
    compare textures of one size."""
    luma = _luma(textures.float())
    lap = F.conv2d(luma, _LAPLACIAN.to(luma)[None, None], padding=1)
    m = _face_mask(mask, luma, erode)
    return (lap.square() * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3)).clamp_min(1.0)


def high_frequency_ratio(textures: torch.Tensor, mask: torch.Tensor | None = None, cutoff: float = 0.25,
                         erode: int = 2) -> torch.Tensor:
    """Share of the luminance's spectral energy above ``cutoff`` (in cycles per texel, Nyquist is
    0.5), inside ``mask``, per texture ``(B,)``. Contrast-invariant, unlike ``laplacian_energy``.
    The masked luminance is mean-subtracted within the mask and tapered at its edge first."""
    luma = _luma(textures.float())
    m = _face_mask(mask, luma, erode)
    # Soft edge: a hard mask edge would itself be high-frequency energy.
    soft = F.avg_pool2d(m, 2 * erode + 1, stride=1, padding=erode) * m if erode > 0 else m
    mean = (luma * soft).sum(dim=(2, 3), keepdim=True) / soft.sum(dim=(2, 3), keepdim=True).clamp_min(1e-8)
    signal = (luma - mean) * soft
    power = torch.fft.rfft2(signal[:, 0]).abs().square()
    fy = torch.fft.fftfreq(signal.shape[-2], device=signal.device)[:, None]
    fx = torch.fft.rfftfreq(signal.shape[-1], device=signal.device)[None, :]
    high = (fx.square() + fy.square()).sqrt() > cutoff
    return (power * high).sum(dim=(1, 2)) / power.sum(dim=(1, 2)).clamp_min(1e-20)


def sharpness(textures: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The project's sharpness measure: ``laplacian_energy`` (mean squared Laplacian of the
    luminance in the face region), ``(B,)``."""
    return laplacian_energy(textures, mask)


# --------------------------------------------------------------------------------------------
# Foreign colour and seams (issue 17)

#: A texel is foreign beyond this many robust standard deviations of the inner face's colour.
FOREIGN_SIGMAS = 4.0


def _unit_rgb(texture: np.ndarray) -> np.ndarray:
    t = np.asarray(texture)
    if t.ndim != 3 or t.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) texture, got {t.shape}")
    return t.astype(np.float64) / 255.0 if t.dtype == np.uint8 else t.astype(np.float64)


@dataclass(frozen=True, eq=False)
class ForeignColour:
    """``share``: foreign texels / head-skin texels; ``far``: (S, S) bool map of them; the
    reference's CIELAB ``median`` and per-channel ``spread`` (robust standard deviations)."""

    share: float
    far: np.ndarray
    median: np.ndarray
    spread: np.ndarray


def foreign_colour(texture: np.ndarray, masks: SkinUVMasks, sigmas: float = FOREIGN_SIGMAS) -> ForeignColour:
    """How much of the head's skin is painted in a colour that is not the face's skin.

    ``texture`` (S, S, 3), uint8 or float in [0, 1], sRGB; ``masks`` from ``skin_uv_masks(S)``.
    The face's skin distribution is ``SkinColour`` of the inner face's texels; a head-skin
    texel is foreign when its spread-normalised distance from the median exceeds ``sigmas``."""
    rgb = _unit_rgb(texture)
    if rgb.shape[:2] != masks.head_skin.shape:
        raise ValueError(f"texture is {rgb.shape[:2]} but the masks are {masks.head_skin.shape}")
    skin = SkinColour.of(rgb[masks.inner_face])
    far = (skin.distance(rgb) > sigmas) & masks.head_skin
    return ForeignColour(float(far.sum() / max(int(masks.head_skin.sum()), 1)), far, skin.median, skin.spread)


def seam_ratio(texture: np.ndarray, photo_weight: np.ndarray, region: np.ndarray, band: int | None = None) -> float:
    """The gradient energy across the photo/model boundary over that inside each side.

    ``photo_weight`` (S, S) in [0, 1]: how much of each texel comes from the photo (the boundary
    is its 0.5 contour); ``region`` (S, S) bool: where to look (head skin). Energy: the squared
    CIELAB difference of two 4-neighbours, both in ``region``. Across: the pairs with one texel
    on each side of the contour. Inside: the pairs with both texels on one side, 1.5 to 5
    ``band`` (default 2 per 512 texels) from the contour. Returns the mean energy across over
    the mean of the two sides' means: about 1 when the blend leaves no step, above 1 for a
    step; NaN when there is no contour or a side has fewer than 10 pairs."""
    rgb = _unit_rgb(texture)
    size = rgb.shape[0]
    band = band if band is not None else max(1, round(2 * size / 512))
    from scipy.ndimage import distance_transform_edt

    lab = srgb_to_lab(rgb)
    region = np.asarray(region, bool)
    photo = np.asarray(photo_weight, np.float64) >= 0.5
    pairs = []  # (energy, valid, crossing, photo side, first index slices)
    edge = np.zeros(region.shape, bool)
    for a, b in (((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
                 ((slice(None), slice(None, -1)), (slice(None), slice(1, None)))):
        valid = region[a] & region[b]
        crossing = valid & (photo[a] != photo[b])
        edge[a] |= crossing
        edge[b] |= crossing
        pairs.append((((lab[a] - lab[b]) ** 2).sum(-1), valid, crossing, a, b))
    if not edge.any():
        return float("nan")
    distance = distance_transform_edt(~edge)
    near = (distance >= 1.5 * band) & (distance <= 5 * band)
    across = np.concatenate([e[c] for e, _, c, _, _ in pairs])
    sides = []
    for side in (photo, ~photo):
        inside = [e[v & side[a] & side[b] & near[a] & near[b]] for e, v, _, a, b in pairs]
        values = np.concatenate(inside)
        if values.size < 10:
            return float("nan")
        sides.append(values.mean())
    return float(across.mean() / max(float(np.mean(sides)), 1e-12))
