"""The identity-network interface the identity and content losses use (paper 3.3.1, 3.3.2).

Why an interface: the paper notes (footnote 5) that the choice of face-recognition network is
orthogonal to the method. The engine ships dlib's ResNet (``face/dlib_identity.py``); insightface's
ArcFace models (``face/arcface.py``) are an optional back-end when the user has their files. The
losses only need what every such network has: an aligned chip of a fixed size, cut by a
similarity transform found from landmarks (each network was trained on chips aligned that way),
an embedding, and a few intermediate activations.

Coordinates (as ``face/alignment.py``'s ``ChipWarp``): a chip transform maps chip pixel
*indices* ``(u, v) = (column, row)`` (pixel centres on integers, as OpenCV and dlib count) to
image positions in the engine's convention (``docs/conventions.md``: origin at the top-left
*corner* of the top-left pixel, so pixel (i, j) is centred at (j + 0.5, i + 0.5)). Templates
published for OpenCV chips (insightface's ``arcface_dst``) are therefore used as published.

Also here, for every network to reuse: the least-squares similarity (Umeyama 1991) and the
five alignment points from iBUG-68 landmarks.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

__all__ = [
    "IdentityNetwork",
    "apply_affine",
    "five_points_from_ibug68",
    "invert_affine",
    "similarity_transform",
]

#: iBUG-68 indices of the eye contours: 36-41 lie on the image-left eye (the subject's right).
_IMAGE_LEFT_EYE = slice(36, 42)
_IMAGE_RIGHT_EYE = slice(42, 48)
_NOSE_TIP = 30
_IMAGE_LEFT_MOUTH_CORNER = 48
_IMAGE_RIGHT_MOUTH_CORNER = 54


@runtime_checkable
class IdentityNetwork(Protocol):
    """A frozen face-recognition network the fit can differentiate through.

    ``name`` identifies the network and its weights in results (e.g. ``"dlib-resnet-v1"``,
    ``"arcface:w600k_r50.onnx"``); ``chip_size`` is the side S of the square chip it takes.
    """

    name: str
    chip_size: int

    def chip_transform(self, landmarks68: np.ndarray) -> np.ndarray:
        """``(2, 3)`` affine mapping chip pixel indices ``(u, v, 1)`` to image positions (engine
        convention), found from the image's ``(68, 2)`` iBUG landmarks."""
        ...

    def embed(self, chips: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` embeddings of ``(B, 3, S, S)`` RGB chips with values in [0, 1]."""
        ...

    def features(self, chips: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The embedding and a few intermediate activations (``(B, C, h, w)``) for the content loss."""
        ...


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (scale, rotation, translation; no reflection) taking ``src`` to ``dst``.

    Umeyama's closed form (IEEE TPAMI 13(4), 1991): minimises ``sum |s R src_i + t - dst_i|^2``
    over s > 0, R a proper rotation. Returns the ``(2, 3)`` matrix ``[s R | t]`` (float64). It is
    the estimate OpenCV-based aligners (insightface's ``estimate_norm``, via scikit-image's
    ``SimilarityTransform``) use, so chips match theirs.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or src.shape[0] < 2:
        raise ValueError(f"expected two (N, 2) point sets with N >= 2, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = float((src_c**2).sum() / len(src))
    if not np.isfinite(src_var) or src_var <= 1e-12:
        raise ValueError("source points are all at one place (or not finite): no similarity is defined")
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    signs = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        signs[-1] = -1.0  # the best orthogonal map would reflect: take the best rotation instead
    rotation = u @ np.diag(signs) @ vt
    scale = float((singular * signs).sum() / src_var)
    translation = dst_mean - scale * rotation @ src_mean
    return np.concatenate([scale * rotation, translation[:, None]], axis=1)


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a ``(2, 3)`` affine map, as ``(2, 3)``."""
    matrix = np.asarray(matrix, dtype=np.float64)
    linear_inv = np.linalg.inv(matrix[:, :2])
    return np.concatenate([linear_inv, -linear_inv @ matrix[:, 2:]], axis=1)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(N, 2)`` points mapped by a ``(2, 3)`` affine matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    return np.asarray(points, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]


def five_points_from_ibug68(landmarks68: np.ndarray) -> np.ndarray:
    """The five alignment points most recognisers are trained with, from iBUG-68 landmarks.

    Order (image left to right, as insightface and MTCNN list them): image-left eye centre (mean of
    36-41, the subject's right eye), image-right eye centre (42-47), nose tip (30), image-left
    mouth corner (48), image-right mouth corner (54). ``(5, 2)`` float64.
    """
    points = np.asarray(landmarks68, dtype=np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {points.shape}")
    return np.stack(
        [
            points[_IMAGE_LEFT_EYE].mean(axis=0),
            points[_IMAGE_RIGHT_EYE].mean(axis=0),
            points[_NOSE_TIP],
            points[_IMAGE_LEFT_MOUTH_CORNER],
            points[_IMAGE_RIGHT_MOUTH_CORNER],
        ]
    )
