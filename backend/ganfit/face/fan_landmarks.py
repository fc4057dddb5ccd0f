"""face-alignment's FAN (2DFAN4) as an optional 68-point landmark detector.

Why optional: the paper's landmark loss (3.3.4) uses a deep face-alignment network [13], which
is more accurate than dlib's regression trees on hard poses. face-alignment downloads its
TorchScript weights at run time, so the engine uses them only when the user points at the file
(``2DFAN4-cd938726ad.zip`` or a versioned ``2DFAN4_1.x-*.zip``; ``docs/backends.md``).

face-alignment's recipe (``FaceAlignment.get_landmarks_from_image``, ``utils.crop``,
``utils.get_preds_fromhm``), which this follows:
- From a face box ``[x1, y1, x2, y2]``: centre = box centre moved up by 0.12 of the box
  height; ``scale = (width + height) / 195`` (the S3FD detector's ``reference_scale``); the crop
  is the square of side ``200 * scale`` around the centre, resized to 256x256, black outside
  the image, RGB scaled to [0, 1].
- The network maps ``(1, 3, 256, 256)`` to ``(1, 68, 64, 64)`` heatmaps, iBUG-68 order.
- Each landmark is its heatmap's argmax, moved a quarter pixel toward the higher neighbour in
  x and in y (only away from the heatmap border), then mapped back through the crop.

Differences, on purpose: face-alignment rounds its crop corners and truncates the returned
landmarks to whole pixels; here the crop is sampled bilinearly at exact positions and the
landmarks keep their fractions (heatmap cell centres map to ``centre - side/2 + (j + 0.5) *
side/64``, engine pixel convention). That moves points by at most about a pixel.

Boxes: FAN was run on S3FD boxes; the engine's boxes come from dlib's HOG detector, which
face-alignment also accepted (its dlib back-end) with the same constants. ``reference_scale``
and ``center_shift`` are settings in case another box source needs them.

Security: ``torch.jit.load`` runs the TorchScript program stored in the file (not a Python
pickle); load only files from face-alignment's own download.
"""

from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ganfit.errors import ModelDataError
from ganfit.face.detection import NUM_LANDMARKS, FaceBox
from ganfit.models.limits import check_file_size, check_zip_members

__all__ = ["FAN_INPUT_SIZE", "FanCrop", "FanLandmarks", "fan_crop", "heatmap_peaks"]

log = logging.getLogger(__name__)

#: Side of the crop FAN takes.
FAN_INPUT_SIZE = 256
#: face-alignment's S3FD ``reference_scale``: crop side = 200 * (box width + height) / 195.
REFERENCE_SCALE = 195.0
#: face-alignment moves the crop centre up by this fraction of the box height.
CENTER_SHIFT = 0.12


@dataclass(frozen=True)
class FanCrop:
    """The square FAN looks at: centre and side in image pixels (engine convention)."""

    center_x: float
    center_y: float
    side: float

    def to_image(self, points: np.ndarray, resolution: int) -> np.ndarray:
        """``(N, 2)`` points in a ``resolution``-px grid over the crop (corner origin) to image pixels."""
        origin = np.array([self.center_x, self.center_y]) - 0.5 * self.side
        return origin + np.asarray(points, dtype=np.float64) * (self.side / resolution)


def fan_crop(box: FaceBox, reference_scale: float = REFERENCE_SCALE, center_shift: float = CENTER_SHIFT) -> FanCrop:
    """face-alignment's crop square for a face box."""
    center_x, center_y = box.center
    scale = (box.width + box.height) / reference_scale
    return FanCrop(center_x, center_y - center_shift * box.height, 200.0 * scale)


def heatmap_peaks(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of ``(N, H, W)`` heatmaps as ``(N, 2)`` grid coordinates (corner origin) and ``(N,)`` scores.

    The argmax cell's centre, moved 0.25 toward the higher of its two neighbours in x and in y
    (no move on a tie, or when the peak is on the heatmap's border), as face-alignment does.
    """
    maps = np.asarray(heatmaps, dtype=np.float32)
    count, height, width = maps.shape
    flat = maps.reshape(count, -1)
    index = flat.argmax(axis=1)
    rows, cols = np.divmod(index, width)
    scores = flat[np.arange(count), index]
    points = np.stack([cols, rows], axis=1).astype(np.float64) + 0.5
    inside = (cols > 0) & (cols < width - 1) & (rows > 0) & (rows < height - 1)
    for k in np.flatnonzero(inside):
        r, c, m = rows[k], cols[k], maps[k]
        points[k, 0] += 0.25 * np.sign(m[r, c + 1] - m[r, c - 1])
        points[k, 1] += 0.25 * np.sign(m[r + 1, c] - m[r - 1, c])
    return points, scores


class FanLandmarks:
    """face-alignment's 2D FAN from its TorchScript file: ``landmarks(pixels, box) -> (68, 2)``.

    Loads on construction (a ``ModelDataError`` for a missing or non-TorchScript file). Calls are
    serialised by a lock so one instance can serve several threads.
    """

    def __init__(self, path: str | Path, *, device: str | torch.device = "cpu",
                 reference_scale: float = REFERENCE_SCALE, center_shift: float = CENTER_SHIFT) -> None:
        self.path = Path(path)
        self.device = torch.device(device)
        self.reference_scale = float(reference_scale)
        self.center_shift = float(center_shift)
        if not self.path.is_file():
            raise ModelDataError(f"FAN landmark model {self.path} not found: pass the path of face-alignment's 2DFAN4 .zip file")
        # torch allocates each archive member's declared size before inflating it: check first
        # (the real 2DFAN4 archive is ~95 MB).
        hint = "pass face-alignment's 2DFAN4 .zip file"
        check_file_size(self.path, "FAN landmark model", hint)
        check_zip_members(self.path, "FAN landmark model", hint)
        try:
            with warnings.catch_warnings():  # recent torch deprecates TorchScript; FAN ships as one
                warnings.simplefilter("ignore", DeprecationWarning)
                self._net = torch.jit.load(str(self.path), map_location=self.device)
        except Exception as error:
            raise ModelDataError(
                f"{self.path} is not a TorchScript model ({type(error).__name__}); expected face-alignment's 2DFAN4 .zip"
            ) from error
        self._net.eval()
        self._lock = threading.Lock()
        log.info("FAN landmark model %s on %s", self.path.name, self.device)

    def crop(self, pixels: np.ndarray, box: FaceBox) -> tuple[torch.Tensor, FanCrop]:
        """The ``(1, 3, 256, 256)`` RGB [0, 1] input FAN takes for this face, and its crop square."""
        image = np.asarray(pixels)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected (H, W, 3) uint8 RGB pixels, got {image.dtype} {image.shape}")
        square = fan_crop(box, self.reference_scale, self.center_shift)
        height, width = image.shape[:2]
        tensor = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        centres = torch.arange(FAN_INPUT_SIZE, dtype=torch.float64) + 0.5
        xs = square.center_x - 0.5 * square.side + centres * (square.side / FAN_INPUT_SIZE)
        ys = square.center_y - 0.5 * square.side + centres * (square.side / FAN_INPUT_SIZE)
        grid_y, grid_x = torch.meshgrid(2.0 * ys / height - 1.0, 2.0 * xs / width - 1.0, indexing="ij")
        grid = torch.stack([grid_x, grid_y], dim=-1)[None].to(device=self.device, dtype=torch.float32)
        return F.grid_sample(tensor, grid, mode="bilinear", padding_mode="zeros", align_corners=False), square

    def heatmaps(self, pixels: np.ndarray, box: FaceBox) -> tuple[np.ndarray, FanCrop]:
        """FAN's ``(68, h, w)`` heatmaps for this face (float32) and the crop they cover."""
        inputs, square = self.crop(pixels, box)
        with self._lock, torch.inference_mode():
            output = self._net(inputs)
        if isinstance(output, (list, tuple)):  # pre-TorchScript FAN returned one map per hourglass
            output = output[-1]
        if not isinstance(output, torch.Tensor) or output.ndim != 4 or tuple(output.shape[:2]) != (1, NUM_LANDMARKS):
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ModelDataError(f"{self.path}: expected (1, {NUM_LANDMARKS}, h, w) heatmaps from FAN, got {got}")
        return output[0].float().cpu().numpy(), square

    def landmarks_with_scores(self, pixels: np.ndarray, box: FaceBox) -> tuple[np.ndarray, np.ndarray]:
        """``(68, 2)`` float32 landmarks in image pixels and ``(68,)`` heatmap peak values."""
        maps, square = self.heatmaps(pixels, box)
        points, scores = heatmap_peaks(maps)
        return square.to_image(points, maps.shape[-1]).astype(np.float32), scores

    def landmarks(self, pixels: np.ndarray, box: FaceBox) -> np.ndarray:
        """``(68, 2)`` float32 iBUG-68 landmarks in image pixels (engine convention) for the face in ``box``."""
        return self.landmarks_with_scores(pixels, box)[0]
