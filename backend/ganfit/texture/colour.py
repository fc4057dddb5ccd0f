"""Colour in CIELAB for the textures (issue 17): the conversions and a face's skin colour
distribution, shared by the blend (``blend.clean_model``, which cleans what is not skin) and the
foreign-colour measure (``metrics.foreign_colour``).

Why CIELAB: distances there are roughly what a person sees, so one threshold serves dark hair,
sky and white background alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MIN_LAB_SPREAD", "SkinColour", "lab_to_srgb", "srgb_to_lab"]

#: Smallest spread per CIELAB channel (L*, a*, b*): a smooth texture (a GAN fit) has a tiny MAD
#: in the cheeks, and ordinary skin variation (pinker ears, a darker neck) must not count.
MIN_LAB_SPREAD = (4.0, 2.0, 2.0)

#: sRGB (linear) -> CIE XYZ, each row divided by the D65 white's component.
_XYZ_OVER_WHITE = (np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
                   / np.array([0.95047, 1.0, 1.08883])[:, None]).astype(np.float32)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB colours (..., 3) in [0, 1]: a space where distances are roughly
    what a person sees, so one threshold serves dark hair, sky and white background alike.
    Computed in float32 (within 2e-4 of float64, 7x faster: the blend converts whole 2048 px
    maps)."""
    c = np.clip(np.asarray(rgb, dtype=np.float32), 0, 1)
    linear = np.where(c <= 0.04045, c / np.float32(12.92), ((c + np.float32(0.055)) / np.float32(1.055)) ** np.float32(2.4))
    xyz = linear @ _XYZ_OVER_WHITE.T
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """sRGB (..., 3) in [0, 1] of CIELAB (D65) colours: ``srgb_to_lab``'s inverse, clipped to
    the sRGB gamut."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
    xyz = np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29))
    linear = xyz @ np.linalg.inv(_XYZ_OVER_WHITE.astype(np.float64)).T
    linear = np.clip(linear, 0, 1)
    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)


@dataclass(frozen=True, eq=False)
class SkinColour:
    """A face's skin colour distribution: CIELAB ``median`` and per-channel ``spread`` (MAD x
    1.4826, floored at ``MIN_LAB_SPREAD``): robust to the moles, stubble and shadows among the
    samples. The foreign-colour measure and the blend's model cleaning share it."""

    median: np.ndarray
    spread: np.ndarray

    @classmethod
    def of(cls, rgb: np.ndarray) -> "SkinColour":
        """The distribution of the sRGB samples ``rgb`` (N, 3) in [0, 1]."""
        lab = srgb_to_lab(rgb)
        median = np.median(lab, 0)
        return cls(median, np.maximum(1.4826 * np.median(np.abs(lab - median), 0), MIN_LAB_SPREAD))

    def median_srgb(self) -> np.ndarray:
        """The median colour as sRGB (3,) in [0, 1]."""
        return lab_to_srgb(self.median)

    def distance(self, rgb: np.ndarray) -> np.ndarray:
        """Spread-normalised CIELAB distance of sRGB colours (..., 3) from the median."""
        return np.linalg.norm((srgb_to_lab(rgb) - self.median) / self.spread, axis=-1)
