"""dlib's face-recognition ResNet as the identity network of the objective (paper 3.3).

The network itself is ``face.recognition`` (PyTorch, weights from the .dat). Here it meets the
fitting code: dlib's own alignment rule gives the chip for a set of 68 landmarks (the mean-face
similarity of ``dlib.get_face_chip_details``, size 150, padding 0.25: exactly the chips the
descriptor was trained and tested on), and ``features`` adds the activations for the content loss.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .alignment import ChipWarp
from .recognition import CHIP_SIZE, FaceRecognitionNetwork, load_face_recognition_network

#: dlib's padding around the mean face in its chips (``get_face_chip(..., padding=0.25)``).
CHIP_PADDING = 0.25


def dlib_chip_warp(landmarks68: np.ndarray, chip_size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> ChipWarp:
    """The similarity dlib uses to cut a chip from an image with these (68, 2) landmarks.

    dlib wants integer pixel indices (centres on integers): points are shifted by -0.5 and
    rounded, and the +0.5 is added back to the mapping's output.
    """
    import dlib

    points = np.asarray(landmarks68, dtype=np.float64) - 0.5
    if points.shape != (68, 2) or not np.isfinite(points).all():
        raise ValueError(f"expected (68, 2) finite landmarks, got {points.shape}")
    parts = [dlib.point(int(round(x)), int(round(y))) for x, y in points]
    det = dlib.full_object_detection(dlib.rectangle(0, 0, 1, 1), parts)
    details = dlib.get_face_chip_details(det, chip_size, padding)
    rect = details.rect
    left, top, right, bottom = rect.left(), rect.top(), rect.right(), rect.bottom()
    centre = np.array([(left + right) / 2, (top + bottom) / 2])
    step = np.array([(right - left) / (details.cols - 1), (bottom - top) / (details.rows - 1)])
    c, s = np.cos(details.angle), np.sin(details.angle)
    rotation = np.array([[c, -s], [s, c]])
    # image = centre + R (top_left + step * uv - centre) + 0.5
    linear = rotation @ np.diag(step)
    offset = centre + rotation @ (np.array([left, top]) - centre) + 0.5
    return ChipWarp(transform=np.concatenate([linear, offset[:, None]], 1), chip_size=chip_size)


class DlibIdentity:
    """The default identity network: 128-D dlib descriptors (same person below 0.6 distance)."""

    name = "dlib-resnet-v1"
    chip_size = CHIP_SIZE

    def __init__(self, device: str | torch.device = "cpu", network: FaceRecognitionNetwork | None = None):
        self._device = device
        self._network = network

    @property
    def network(self) -> FaceRecognitionNetwork:
        """Read (0.4 s) on first use: the chip warp alone, all a landmark-only fit asks for,
        needs only dlib."""
        if self._network is None:
            self._network = load_face_recognition_network(self._device)
        return self._network

    def chip_transform(self, landmarks68: np.ndarray) -> np.ndarray:
        """(2, 3) map from chip pixel indices to image positions (see ``face.alignment``)."""
        return dlib_chip_warp(landmarks68).transform

    def embed(self, chips: Tensor) -> Tensor:
        """(B, 128) descriptors of (B, 3, 150, 150) RGB chips in [0, 1]."""
        return self.network(chips)

    def features(self, chips: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Descriptors and four intermediate activations (one per resolution)."""
        return self.network.features(chips)
