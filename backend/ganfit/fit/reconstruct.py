"""One reconstruction from one photo: detection, stage 1, stage 2, result (paper 3.4).

``Reconstructor`` keeps the models loaded between photos (the CLI's batch and the serve
protocol both reuse it).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import GanfitError
from ..face.detection import DetectedFace, FaceDetector, default_detector, find_face
from ..io.images import Photo, load_photo
from ..io.result import CameraParams, LightParams, Reconstruction
from ..models.shape_model import ShapeModel, load_default_shape_model
from ..render import MeshRenderer
from .appearance_stage import face_crop, fit_lighting
from .landmark_stage import LandmarkFit, fit_landmarks
from .progress import ProgressEvent, ProgressFn, no_progress
from .settings import FitSettings
from .texture_projection import mirror_vertex_index, project_photo_to_uv

log = logging.getLogger(__name__)

TEXTURE_MODEL = "photo-projection (albedo by dividing out the fitted light; mirrored filling)"


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then the CPU; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise GanfitError(f"--device {name}: not a device name; use cpu, cuda, cuda:N, mps or auto") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GanfitError(f"--device {name}: this torch build or machine has no CUDA; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise GanfitError(f"--device {name}: Apple MPS is not available here; use --device cpu")
    return device


# The diagonal of a 36 x 24 mm frame: "35 mm equivalent" focal lengths are defined by it.
FULL_FRAME_DIAGONAL_MM = 43.267


def photo_focal(photo: Photo, default: float) -> float:
    """Focal length / image width for a photo: from its EXIF 35 mm-equivalent focal length
    when present (scaled by the image diagonal, which also covers cropped aspect ratios),
    else ``default``."""
    if photo.focal_35mm is None:
        return default
    width, height = photo.size
    return photo.focal_35mm / FULL_FRAME_DIAGONAL_MM * float(np.hypot(width, height)) / width


def _to_image(tensor: torch.Tensor) -> np.ndarray:
    """(3, H, W) float [0, 1] -> (H, W, 3) uint8."""
    return (tensor.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


class Reconstructor:
    """Fits the default head model to photos with the interim (photo-projection) texture."""

    def __init__(
        self,
        settings: FitSettings = FitSettings(),
        shape_model: ShapeModel | None = None,
        detector: FaceDetector | None = None,
    ):
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = torch.float32
        self.model = (shape_model or load_default_shape_model()).to(self.device)
        self.detector = detector or default_detector()
        self.renderer = MeshRenderer(self.model.faces, self.model.uvs, self.model.uv_faces).to(self.device)
        self._mirror: torch.Tensor | None = None

    @property
    def mirror_index(self) -> torch.Tensor:
        if self._mirror is None:
            self._mirror = mirror_vertex_index(self.model.mean.to(self.dtype))
        return self._mirror

    def reconstruct(self, photo_path: str | Path, progress: ProgressFn = no_progress) -> Reconstruction:
        """Reconstruct the face in one photo file."""
        photo = load_photo(photo_path, max_side=self.settings.max_photo_side)
        return self.reconstruct_photo(photo, progress)

    def fit_landmark_stage(self, photo: Photo, progress: ProgressFn = no_progress) -> tuple[DetectedFace, LandmarkFit]:
        """Detection and stage 1 only (used by the landmark benchmarks and accuracy script)."""
        settings = self.settings
        torch.manual_seed(settings.seed)
        face = find_face(photo, settings.face_index, self.detector)
        progress(ProgressEvent("detect", 1, 1))
        width, height = photo.size
        landmarks = torch.as_tensor(face.landmarks, dtype=self.dtype, device=self.device)[None]
        image_size = torch.tensor([[width, height]], dtype=self.dtype, device=self.device)
        focal = torch.tensor([photo_focal(photo, settings.landmark.default_focal)], dtype=self.dtype, device=self.device)
        return face, fit_landmarks(self.model, landmarks, image_size, focal, settings.landmark, progress)

    def reconstruct_photo(self, photo: Photo, progress: ProgressFn = no_progress) -> Reconstruction:
        """Both stages on a loaded photo, returning everything the result folder holds."""
        settings = self.settings
        started = time.perf_counter()
        dev, dt = self.device, self.dtype
        width, height = photo.size
        face, stage1 = self.fit_landmark_stage(photo, progress)

        id_coeffs = stage1.identity * self.model.identity_std.to(dt)
        expression = stage1.expression
        with torch.no_grad():
            vertices = self.model.vertices(id_coeffs, expression)
            neutral = self.model.vertices(id_coeffs, torch.zeros_like(expression))
        camera = stage1.pose.camera()

        photo_t = torch.from_numpy(np.array(photo.pixels)).to(dev).permute(2, 0, 1).to(dt) / 255.0
        app = settings.appearance
        crop = face_crop(photo_t, face.landmarks, app.render_size)
        lighting = fit_lighting(self.renderer, vertices, camera, (width, height), crop, app, progress)

        progress(ProgressEvent("texture", 1, 2))
        texture = project_photo_to_uv(
            photo_t, vertices[0], self.model.faces, self.model.uvs, self.model.uv_faces,
            camera, self.mirror_index, app.texture_size, lighting.light,
        )
        with torch.no_grad():
            render = self.renderer(vertices, texture.image[None], camera, lighting.light, height, width)
            preview = render.image[0] * render.mask[0] + photo_t * (1 - render.mask[0])
        progress(ProgressEvent("texture", 2, 2))

        cam = camera
        light = lighting.light
        result = Reconstruction(
            photos=[str(photo.path)],
            vertices=vertices[0].cpu().numpy(),
            neutral_vertices=neutral[0].cpu().numpy(),
            faces=self.model.faces.cpu().numpy(),
            uvs=self.model.uvs.cpu().numpy(),
            uv_faces=self.model.uv_faces.cpu().numpy(),
            expression_names=list(self.model.expression_names),
            expression_weights=expression[0].cpu().numpy(),
            expression_deltas=self.model.expression_basis.cpu().numpy(),
            identity_names=list(self.model.identity_names),
            identity_coefficients=id_coeffs[0].cpu().numpy(),
            landmark_indices=self.model.landmark_indices.cpu().numpy(),
            landmarks_2d=face.landmarks,
            landmark_error_iod=float(stage1.error_iod[0]),
            camera=CameraParams(
                position=cam.position[0].cpu().numpy(),
                look_at=cam.look_at[0].cpu().numpy(),
                up=cam.up[0].cpu().numpy(),
                focal=float(cam.focal[0]),
                width=width,
                height=height,
            ),
            light=LightParams(
                position=light.position[0].cpu().numpy(),
                colour=light.colour[0].cpu().numpy(),
                ambient=light.ambient[0].cpu().numpy(),
            ),
            texture=_to_image(texture.image),
            preview=_to_image(preview),
            shape_model=self.model.name,
            texture_model=TEXTURE_MODEL,
            engine_version=__version__,
            losses={"landmarks": stage1.losses, "lighting": lighting.losses},
            settings={
                **settings.to_dict(),
                "device": str(dev),
                "face": face.index,
                "faces_found": face.num_faces,
                "focal_source": "exif" if photo.focal_35mm is not None else "default",
            },
        )
        log.info("%s: reconstructed in %.1f s", photo.name, time.perf_counter() - started)
        return result
