"""One reconstruction from one or more photos of a person: detection, stage 1 (landmarks),
lighting and texture initialisation, stage 2 (the full objective), result (paper 3.4-3.5).

``Reconstructor`` keeps the models loaded between photos (the CLI's batch and the serve
protocol both reuse it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..errors import GanfitError, InputImageError
from ..face.detection import DetectedFace, FaceDetector, default_detector, find_face
from ..io.images import Photo, load_photo
from ..io.result import CameraParams, LightParams, Reconstruction
from ..models.shape_model import ShapeModel, load_default_shape_model

if TYPE_CHECKING:
    from ..face.identity import IdentityNetwork
    from ..regress.encoder import RegressionEncoder
    from ..texture.blend import TextureFitter
    from ..texture.model import TextureModel
from ..render import MeshRenderer
from ..threads import apply_threads
from ..timing import Timings
from ..face.dlib_identity import DlibIdentity
from ..render import Camera, PointLight
from .appearance_stage import FaceCrop, fit_lighting
from .joint_stage import PhotoTarget, fit_joint, prepare_target, refine_texture
from .landmark_stage import LandmarkFit, fit_landmarks, solve_landmarks
from .pose import HeadPose
from .progress import ProgressEvent, ProgressFn, no_progress
from .settings import FitSettings
from .texture_projection import (UVTexels, UVTexture, merge_textures, mirror_vertex_index, project_photo_to_uv,
                                 skin_outline, uv_texels)

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
    """Fits the head model to photos: landmarks, then the full objective, with the interim
    (photo-projection) texture."""

    def __init__(
        self,
        settings: FitSettings = FitSettings(),
        shape_model: ShapeModel | None = None,
        detector: FaceDetector | None = None,
        identity: "IdentityNetwork | None" = None,
    ):
        self.settings = settings
        apply_threads()  # torch's default thread count collapses on a busy CPU (ganfit.threads)
        self.device = resolve_device(settings.device)
        self.dtype = torch.float32
        self.model = (shape_model or load_default_shape_model()).to(self.device)
        self.detector = detector or default_detector()
        self.renderer = MeshRenderer(self.model.faces, self.model.uvs, self.model.uv_faces).to(self.device)
        self._identity = identity
        self._mirror: torch.Tensor | None = None
        self._texture_models: dict[str, "TextureModel"] = {}
        self._regressor: "RegressionEncoder | None" = None
        self._texels: dict[int, UVTexels] = {}
        self._fitters: dict[str, "TextureFitter"] = {}
        self._seen_expressions: torch.Tensor | None = None
        self._charts: dict[int, torch.Tensor] = {}
        #: Seconds per stage of the last reconstruction (detection, landmarks, identity network,
        #: regression, landmark fit, lighting, fitting, texture): the speed benchmarks read it.
        self.timings = Timings()

    def regressor(self) -> "RegressionEncoder":
        """The regression network of paper 4 (modes fast and ganfit++), loaded on first use."""
        if self._regressor is None:
            from ..regress.weights import load_regressor

            self._regressor = load_regressor(self.model, self.settings.regressor, self.device)
        return self._regressor

    def texture_model(self) -> "TextureModel | None":
        """The settings' texture model (loaded once per file), or None for the projected photo."""
        path = self.settings.texture_model
        return None if path is None else self._load_texture_model(path)

    def _load_texture_model(self, path: str) -> "TextureModel":
        """A texture model file, loaded once per file."""
        if path not in self._texture_models:
            from ..texture.model import load_texture_model

            self._texture_models[path] = load_texture_model(path, device=self.device)
        return self._texture_models[path]

    @property
    def identity_network(self) -> "IdentityNetwork":
        """The identity network of the objective (dlib's ResNet unless another was given);
        loaded on first use, so landmark-only fits never pay for it."""
        if self._identity is None:
            self._identity = DlibIdentity(self.device)
        return self._identity

    @property
    def mirror_index(self) -> torch.Tensor:
        if self._mirror is None:
            self._mirror = mirror_vertex_index(self.model.mean.to(self.dtype))
        return self._mirror

    def reconstruct(self, photo_paths: str | Path | list[str | Path], progress: ProgressFn = no_progress) -> Reconstruction:
        """Reconstruct the face in one photo file, or one person from several (paper 3.5)."""
        paths = [photo_paths] if isinstance(photo_paths, (str, Path)) else list(photo_paths)
        photos = [load_photo(path, max_side=self.settings.max_photo_side) for path in paths]
        return self.reconstruct_photos(photos, progress)

    def reconstruct_photo(self, photo: Photo, progress: ProgressFn = no_progress) -> Reconstruction:
        """Both stages on one loaded photo."""
        return self.reconstruct_photos([photo], progress)

    def _detect(self, photos: list[Photo], progress: ProgressFn) -> list[DetectedFace]:
        faces = []
        for i, photo in enumerate(photos):
            faces.append(find_face(photo, self.settings.face_index, self.detector, self.timings))
            progress(ProgressEvent("detect", i + 1, len(photos)))
        return faces

    def _landmark_fit(self, photos: list[Photo], faces: list[DetectedFace], progress: ProgressFn) -> LandmarkFit:
        settings = self.settings
        dev, dt = self.device, self.dtype
        landmarks = torch.as_tensor(np.stack([f.landmarks for f in faces]), dtype=dt, device=dev)
        image_size = torch.tensor([list(p.size) for p in photos], dtype=dt, device=dev)
        focal = torch.tensor([photo_focal(p, settings.landmark.default_focal) for p in photos], dtype=dt, device=dev)
        return fit_landmarks(self.model, landmarks, image_size, focal, settings.landmark, progress,
                             shared_identity=len(photos) > 1)

    def fit_landmark_stage(self, photo: Photo, progress: ProgressFn = no_progress) -> tuple[DetectedFace, LandmarkFit]:
        """Detection and stage 1 only (used by the landmark benchmarks and accuracy script)."""
        torch.manual_seed(self.settings.seed)
        faces = self._detect([photo], progress)
        return faces[0], self._landmark_fit([photo], faces, progress)

    def reconstruct_photos(self, photos: list[Photo], progress: ProgressFn = no_progress) -> Reconstruction:
        """Everything on loaded photos of one person; the result's camera and light are the
        first photo's, ``views`` holds every photo's."""
        if not photos:
            raise GanfitError("no photos given; pass at least one photo file")
        started = time.perf_counter()
        torch.manual_seed(self.settings.seed)
        self.timings = Timings()
        prepared = self._prepare(photos, progress)
        if self.settings.mode == "ganfit":
            start = self._optimised_start(prepared, progress)
        else:
            start = self._regress([prepared])[0]
            progress(ProgressEvent("regress", 1, 1))
        result = self._complete(prepared, start, progress)
        log.info("%s: reconstructed in %.1f s", ", ".join(p.name for p in photos), time.perf_counter() - started)
        return result

    def reconstruct_each(self, photos: list[Photo], progress: Callable[[int], ProgressFn] = lambda i: no_progress,
                         ) -> list["Reconstruction | GanfitError"]:
        """Fast mode over many photos, each its own person (``reconstruct --each``): the regression
        network runs once on the whole batch. A photo that fails gives its error in its place."""
        if self.settings.mode != "fast":
            raise GanfitError("reconstruct_each batches the regression network: use it in mode fast")
        torch.manual_seed(self.settings.seed)
        self.timings = Timings()
        ready: list[tuple[int, _Prepared]] = []
        results: list["Reconstruction | GanfitError"] = []
        for i, photo in enumerate(photos):
            try:
                ready.append((i, self._prepare([photo], progress(i))))
                results.append(GanfitError("not reconstructed"))
            except GanfitError as exc:
                results.append(exc)
        starts = self._regress([prepared for _, prepared in ready]) if ready else []
        for (i, prepared), start in zip(ready, starts):
            progress(i)(ProgressEvent("regress", 1, 1))
            try:
                results[i] = self._complete(prepared, start, progress(i))
            except GanfitError as exc:
                results[i] = exc
        return results

    def _prepare(self, photos: list[Photo], progress: ProgressFn) -> "_Prepared":
        """Detection, landmarks, and each photo's target: the window around the face (the identity
        network's chip plus the face outline) that the encoder, the lighting fit, the pixel loss
        and the objective's renders use, with its identity features when something needs them."""
        dev, dt = self.device, self.dtype
        faces = self._detect(photos, progress)
        pixels = [torch.from_numpy(np.array(p.pixels)).to(dev).permute(2, 0, 1).to(dt) / 255.0 for p in photos]
        with self.timings.timed("identity network"):
            targets = [
                prepare_target(px, f.landmarks, self.identity_network, self.settings.joint.render_size,
                               with_features=self._fits() or self.settings.mode != "ganfit")
                for px, f in zip(pixels, faces)
            ]
        return _Prepared(photos, faces, pixels, targets)

    def _fits(self) -> bool:
        """Whether the full objective is optimised: fast mode runs no fit (paper 4)."""
        return self.settings.joint.steps > 0 and self.settings.mode != "fast"

    def _optimised_start(self, prepared: "_Prepared", progress: ProgressFn) -> "_Start":
        """GANFit's start (paper 3.4): stage 1 on the landmarks, then each photo's light."""
        photos = prepared.photos
        with self.timings.timed("landmark fit"):
            stage1 = self._landmark_fit(photos, prepared.faces, progress)
        pose, identity, expression = stage1.pose, stage1.identity[:1], stage1.expression
        with self.timings.timed("lighting"):
            light, lighting_losses = self._fit_lights(photos, prepared.targets, pose, identity, expression, progress)
        return _Start(pose, identity, expression, light, {"landmarks": stage1.losses, "lighting": lighting_losses})

    def _complete(self, prepared: "_Prepared", start: "_Start", progress: ProgressFn) -> Reconstruction:
        """From a start (fitted or regressed): the texture, the full-objective fit unless the
        mode skips it, and the result."""
        settings = self.settings
        dev, dt = self.device, self.dtype
        app, joint = settings.appearance, settings.joint
        timings = self.timings
        photos, faces, pixels, targets = prepared.photos, prepared.faces, prepared.pixels, prepared.targets
        count = len(photos)
        regressed = settings.mode != "ganfit"
        use_identity = self._fits()
        pose, identity, expression, light = start.pose, start.identity, start.expression, start.light
        losses = dict(start.losses)
        id_std = self.model.identity_std.to(dt)
        vertices = self.model.vertices(identity.expand(count, -1) * id_std, expression).detach()
        camera = pose.camera()
        texture_model = self.texture_model()
        # A texture model starts from its code closest to the photo projected into UV where it
        # can project (PCA: least squares; GAN: a short inversion -- paper 3.4 starts the GAN from
        # its mean latent, which 60 joint steps could not move to the photo's colouring), else
        # from its mean.
        # Without a texture model the projection is the fit's fixed texture, so a fit-less mode skips it.
        project = getattr(texture_model, "project", None)
        latent = None
        blend_model = ""
        with timings.timed("texture"):
            if (texture_model is None and use_identity) or callable(project):
                size = texture_model.resolution if texture_model is not None else min(app.texture_size, 1024)
                texture_image = self._texture(pixels, vertices, camera, light, size=size).image[None]
            if texture_model is not None:
                with torch.no_grad():
                    latent = project(texture_image) if callable(project) else texture_model.initial_latent(1)
                    texture_image = texture_model.decode(latent)

        if use_identity:
            with timings.timed("fitting"):
                fit = fit_joint(
                    self.model, self.renderer, self.identity_network, targets, pose, identity, expression, light,
                    texture_image, joint, progress, seed=settings.seed,
                    texture_model=texture_model, texture_latent=latent,
                )
                pose, identity, expression, light = fit.pose, fit.identity, fit.expression, fit.light
                latent = fit.texture_latent if fit.texture_latent is not None else latent
                losses.update({f"joint_{k}": v for k, v in fit.losses.items()})

        progress(ProgressEvent("texture", 1, 2))
        with torch.no_grad(), timings.timed("texture"):
            vertices = self.model.vertices(identity.expand(count, -1) * id_std, expression)
            neutral = self.model.vertices(identity * id_std, torch.zeros_like(expression[:1]))
            camera = pose.camera()
            if app.texture_source == "blend":
                texture, blend_model = self._blended_texture(prepared, vertices, camera, light, app.texture_size,
                                                             texture_model, latent)
            elif texture_model is not None and latent is not None:
                decoded = texture_model.decode(latent)
                if joint.texture_refine_steps > 0 and use_identity:
                    with torch.enable_grad():
                        decoded, refine_losses = refine_texture(
                            self.renderer, self.identity_network, targets, vertices, camera, light, decoded,
                            joint, progress)
                    losses.update({f"refine_{k}": v for k, v in refine_losses.items()})
                if decoded.shape[-1] != app.texture_size:
                    decoded = F.interpolate(decoded, size=(app.texture_size, app.texture_size), mode="bilinear",
                                            align_corners=False, antialias=decoded.shape[-1] > app.texture_size)
                texture = UVTexture(image=decoded[0].clamp(0, 1), confidence=torch.ones_like(decoded[0, :1]))
            else:
                outlines = [skin_outline(f.landmarks) for f in faces] if app.skin_only_outside_face else None
                texture = self._texture(pixels, vertices, camera, light, size=app.texture_size, outlines=outlines)
            errors = _landmark_errors(self.model, vertices, camera, photos, faces)
            width, height = photos[0].size
            render = self.renderer(vertices[:1], texture.image[None], camera.view(0), light.view(0), height, width)
            preview = render.image[0] * render.mask[0] + pixels[0] * (1 - render.mask[0])
        progress(ProgressEvent("texture", 2, 2))

        views = [
            {
                "photo": str(photo.path),
                "camera": _camera_params(camera.view(i), photo.size).to_json(),
                "light": _light_params(light.view(i)).to_json(),
                "expression_weights": [float(x) for x in expression[i].cpu()],
                "landmark_error_iod": errors[i],
                "face": face.index,
            }
            for i, (photo, face) in enumerate(zip(photos, faces))
        ]
        result = Reconstruction(
            photos=[str(photo.path) for photo in photos],
            vertices=vertices[0].cpu().numpy(),
            neutral_vertices=neutral[0].cpu().numpy(),
            faces=self.model.faces.cpu().numpy(),
            uvs=self.model.uvs.cpu().numpy(),
            uv_faces=self.model.uv_faces.cpu().numpy(),
            expression_names=list(self.model.expression_names),
            expression_weights=expression[0].cpu().numpy(),
            expression_deltas=self.model.expression_basis.cpu().numpy(),
            identity_names=list(self.model.identity_names),
            identity_coefficients=(identity[0] * id_std).cpu().numpy(),
            landmark_indices=self.model.landmark_indices.cpu().numpy(),
            landmarks_2d=faces[0].landmarks,
            landmark_error_iod=errors[0],
            camera=_camera_params(camera.view(0), photos[0].size),
            light=_light_params(light.view(0)),
            texture=_to_image(texture.image),
            preview=_to_image(preview),
            shape_model=self.model.name,
            texture_model=(_blend_name(blend_model) if app.texture_source == "blend"
                           else TEXTURE_MODEL if texture_model is None
                           else _texture_model_name(texture_model, settings.texture_model))
            + (f" + per-texel refinement ({joint.texture_refine_steps} steps)" if "refine_total" in losses else ""),
            engine_version=__version__,
            losses=losses,
            settings={
                **settings.to_dict(),
                "device": str(dev),
                "face": faces[0].index,
                "faces_found": faces[0].num_faces,
                "focal_source": "exif" if photos[0].focal_35mm is not None else "default",
                "identity_network": self.identity_network.name if use_identity or regressed else None,
                **({"regressor": self._regressor_name()} if regressed else {}),
            },
            views=views if count > 1 else [],
            texture_weight=(texture.confidence[0].cpu().numpy().astype(np.float32)
                            if app.texture_source == "blend" else None),
        )
        return result

    def _fit_lights(self, photos: list[Photo], targets: list, pose, identity: torch.Tensor,
                    expression: torch.Tensor, progress: ProgressFn) -> tuple[PointLight, list[float]]:
        """Paper 3.4's lighting initialisation: each photo's light against a constant albedo."""
        vertices = self.model.vertices(identity.expand(len(photos), -1) * self.model.identity_std.to(self.dtype),
                                       expression).detach()
        camera = pose.camera()
        lights, losses = [], []
        for i, (photo, target) in enumerate(zip(photos, targets)):
            crop = FaceCrop(window=target.window, image=target.image, region=target.region)
            lit = fit_lighting(self.renderer, vertices[i : i + 1], camera.view(i), photo.size, crop,
                               self.settings.appearance, progress)
            lights.append(lit.light)
            losses += lit.losses if i == 0 else []
        return _cat_lights(lights), losses

    @torch.no_grad()
    def _regress(self, people: list["_Prepared"]) -> list["_Start"]:
        """Paper 4: the regression network's pose, identity, expression and light for every photo
        of every person in one forward pass; one person's photos share the mean of their
        identities (eq. 14)."""
        from ..regress.encoder import inputs_from_targets

        with self.timings.timed("regression"):
            photos = [photo for person in people for photo in person.photos]
            focal = torch.tensor([photo_focal(p, self.settings.landmark.default_focal) for p in photos],
                                 dtype=self.dtype, device=self.device)
            targets = [target for person in people for target in person.targets]
            params = self.regressor()(inputs_from_targets(targets, focal)).params
            starts, first = [], 0
            for person in people:
                picked = [params.row(b) for b in range(first, first + len(person.photos))]
                first += len(person.photos)
                pose = HeadPose(*(torch.cat([getattr(p.pose, k) for p in picked])
                                  for k in ("rotation", "offset", "log_depth", "focal")))
                light = _cat_lights([p.point_light() for p in picked])
                identity = torch.cat([p.identity for p in picked]).mean(0, keepdim=True)
                expression = torch.cat([p.expression for p in picked]) * self._landmark_seen_expressions()
                starts.append(_Start(pose, identity, expression, light, {}))
        if self._fits():  # GANFit++: from the network's output to the landmark terms' nearest minimum
            with self.timings.timed("landmark fit"):
                starts = [self._solve_landmarks(person, start) for person, start in zip(people, starts)]
        return starts

    def _landmark_seen_expressions(self) -> torch.Tensor:
        """(Ke,) 1 for the expressions that move some landmark vertex, 0 for the others (the
        default head's tongueOut). Why: stage 1 of the regressor's training sees only landmarks,
        so nothing pulls such an expression to its prior, and the shipped network says
        tongueOut 0.90-0.96 for every face: hidden behind closed lips, but a tongue through the
        teeth as soon as an artist opens the jaw. They start at the prior's mean, 0."""
        if self._seen_expressions is None:
            basis = self.model.expression_basis * self.model.expression_std[:, None, None]
            at_landmarks = basis[:, self.model.landmark_indices.long()].norm(dim=-1).amax(1)
            anywhere = basis.norm(dim=-1).amax(1)
            self._seen_expressions = (at_landmarks > 0.01 * anywhere).to(self.dtype)
        return self._seen_expressions

    def _solve_landmarks(self, person: "_Prepared", start: "_Start") -> "_Start":
        joint = self.settings.joint
        targets = person.targets
        sizes = torch.tensor([t.size for t in targets], dtype=self.dtype, device=self.device)
        pose, identity, expression = solve_landmarks(
            self.model, torch.cat([t.landmarks for t in targets]), sizes, start.pose, start.identity,
            start.expression, joint.landmark_weight, joint.identity_prior_weight, joint.expression_prior_weight)
        return _Start(pose, identity, expression, start.light, start.losses)

    def _uv_texels(self, size: int) -> UVTexels:
        """The UV layout rasterised at ``size`` (the same for every photo), kept for reuse."""
        if size not in self._texels:
            self._texels[size] = uv_texels(self.model.uvs, self.model.uv_faces, self.model.faces,
                                           self.model.mean.shape[0], size)
        return self._texels[size]

    def _regressor_name(self) -> str:
        from ..regress.weights import SHIPPED_REGRESSOR

        return str(self.settings.regressor or SHIPPED_REGRESSOR.name)

    def _blended_texture(
        self, prepared: "_Prepared", vertices: torch.Tensor, camera: Camera, light: PointLight, size: int,
        texture_model: "TextureModel | None", latent: torch.Tensor | None,
    ) -> tuple[UVTexture, str]:
        """``texture_source="blend"`` (texture/blend.py): each photo projected with its skin
        segmentation as weight, merged (eq. 14), and blended with the texture model fitted to it
        (the settings' model when one is given, else the shipped GAN). Returns the texture and
        the model's file name."""
        from ..texture.blend import (BlendSettings, TextureFitter, blend_texture, chart_mask, eye_openings,
                                     photo_skin_texture, skin_mask)
        from ..texture.model import resolve_texture_model
        from ..texture.segmentation import segment_photo

        settings = BlendSettings()
        texels = self._uv_texels(size)
        textures = []
        for i, (photo, face, px) in enumerate(zip(prepared.photos, prepared.faces, prepared.pixels)):
            with self.timings.timed("texture segmentation"):  # (also counted in "texture")
                try:
                    segmentation = segment_photo(np.asarray(photo.pixels), face.landmarks)
                    # The eyes behind glasses are seen through the lenses: trusted like skin.
                    seen = segmentation.skin | (segmentation.headwear_or_glasses
                                                & eye_openings(segmentation.labels.shape, face.landmarks))
                    skin = skin_mask(seen, face.landmarks, settings.edge_softness)
                except InputImageError as exc:  # a face cut off far past the photo's edge
                    log.warning("%s: no skin segmentation (%s); the texture keeps all it sees", photo.name, exc)
                    skin = torch.ones(px.shape[-2:])
            textures.append(photo_skin_texture(px, skin, vertices[i], self.model.faces, camera.view(i),
                                               self.mirror_index, texels, size, light.view(i)))
        path = self.settings.texture_model
        if texture_model is None:
            path = resolve_texture_model("gan")
            assert path is not None
            texture_model = self._load_texture_model(path)
        assert path is not None
        if path not in self._fitters:
            self._fitters[path] = TextureFitter(texture_model, settings)
        if size not in self._charts:
            self._charts[size] = chart_mask(texels, size)
        return blend_texture(merge_textures(textures), self._fitters[path], self._charts[size], latent), Path(path).name

    def _texture(
        self, pixels: list[torch.Tensor], vertices: torch.Tensor, camera: Camera, light: PointLight, size: int,
        outlines: list[np.ndarray] | None = None,
    ) -> UVTexture:
        """The photos projected into UV with their shading divided out, merged (eq. 14); with
        ``outlines`` (each photo's face outline), skin only outside them."""
        textures = [
            project_photo_to_uv(
                px, vertices[i], self.model.faces, self.model.uvs, self.model.uv_faces,
                camera.view(i), self.mirror_index, size, light.view(i),
                outline=None if outlines is None else torch.as_tensor(outlines[i], dtype=px.dtype, device=px.device),
                texels=self._uv_texels(size),
            )
            for i, px in enumerate(pixels)
        ]
        return merge_textures(textures)


def _blend_name(model_file: str) -> str:
    """How result.json names the blended texture."""
    return (f"photo-projection where it shows skin seen squarely, blended with texture model {model_file} "
            "fitted to that skin (weighted eq. 6; texture/blend.py)")


def _texture_model_name(model: "TextureModel", path: str | None) -> str:
    """How result.json names a texture model: its kind (PCA, GAN: from the class, no second read
    of the file) and file name."""
    kind = type(model).__name__.removesuffix("TextureModel").upper() or "TEXTURE"
    return f"{kind} texture model {Path(path or '').name} (latent fitted, eq. 6)"


def _cat_lights(lights: list[PointLight]) -> PointLight:
    return PointLight(*(torch.cat([getattr(l, k) for l in lights]) for k in ("position", "colour", "ambient")))


def _camera_params(camera: Camera, size: tuple[int, int]) -> CameraParams:
    width, height = size
    return CameraParams(
        position=camera.position[0].cpu().numpy(),
        look_at=camera.look_at[0].cpu().numpy(),
        up=camera.up[0].cpu().numpy(),
        focal=float(camera.focal[0]),
        width=width,
        height=height,
    )


def _light_params(light: PointLight) -> LightParams:
    return LightParams(
        position=light.position[0].cpu().numpy(),
        colour=light.colour[0].cpu().numpy(),
        ambient=light.ambient[0].cpu().numpy(),
    )


def _landmark_errors(model: ShapeModel, vertices: torch.Tensor, camera: Camera, photos: list[Photo], faces: list[DetectedFace]) -> list[float]:
    """Mean landmark distance / outer-eye-corner distance per photo."""
    errors = []
    for i, (photo, face) in enumerate(zip(photos, faces)):
        width, height = photo.size
        points = vertices[i : i + 1, model.landmark_indices]
        projected = camera.view(i).project(points, width, height)[0, :, :2].cpu().numpy()
        errors.append(float(np.linalg.norm(projected - face.landmarks, axis=-1).mean() / face.interocular))
    return errors

@dataclass
class _Prepared:
    """One person's photos with their faces, pixels (3, H, W) and objective targets."""

    photos: list[Photo]
    faces: list[DetectedFace]
    pixels: list[torch.Tensor]
    targets: list[PhotoTarget]


@dataclass
class _Start:
    """Where the full objective starts: fitted (GANFit) or regressed (Fast-GANFit, GANFit++)."""

    pose: HeadPose
    identity: torch.Tensor  # (1, Ki) in prior stds, shared by the person's photos
    expression: torch.Tensor  # (B, Ke)
    light: PointLight
    losses: dict[str, list[float]]
