"""What a texture model is to the fitting, and how the UV texture folders are read.

Why a protocol: the fitting (paper eq. 6) optimises a latent code through ``decode`` and adds
``prior`` to its objective; it must not care whether the code is PCA coefficients (paper eq. 1,
the baseline) or a GAN's latent (paper 3.1). Both models here implement ``TextureModel``, and
``load_texture_model`` opens either from its file.

The UV folder is what the texture-set builder (``ganfit texture-dataset``) writes: ``<stem>.png``
albedo maps, ``<stem>_conf.png`` confidence maps (grey, 255 = observed in the photo) and a
``split.json`` with ``{"train": [...], "test": [...]}`` (names with or without ``.png``). A plain
folder of PNGs works too; it then has no confidence maps, and its split is deterministic: every
tenth file in name order is held out (``test``), the rest is ``train``.
"""

from __future__ import annotations

import json
import logging
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from ganfit.errors import ModelDataError
from ganfit.models.limits import check_npz

__all__ = [
    "CONFIDENCE_SUFFIX",
    "SHIPPED_GAN",
    "Split",
    "TextureModel",
    "UvTextureSet",
    "load_texture_model",
    "resolve_texture_model",
    "shipped_gan_provenance",
]

log = logging.getLogger(__name__)

#: File-name suffix of a confidence map beside its albedo map.
CONFIDENCE_SUFFIX = "_conf"
#: Held-out share of a folder without split.json: every ``_PLAIN_TEST_EVERY``-th name.
_PLAIN_TEST_EVERY = 10

Split = Literal["train", "test", "all"]

#: The texture GAN the project trained and ships (issue 5), with its provenance beside it
#: (``texture_gan.json``: data, licence, configuration, steps, quality figures).
SHIPPED_GAN = Path(__file__).resolve().parents[1] / "models" / "data" / "texture_gan.npz"
#: What to do about a texture model file that cannot be read.
TEXTURE_HINT = "give a texture model .npz written by ganfit (--texture-model gan for the shipped one; docs/texture-model.md)"


@runtime_checkable
class TextureModel(Protocol):
    """A generative model of UV textures that fitting can optimise through.

    ``latent`` is ``(B, latent_dim)``; ``decode`` is differentiable with respect to it and gives
    ``(B, 3, resolution, resolution)`` RGB in [0, 1], image row 0 at v = 1 (docs/conventions.md).
    ``prior`` is a per-sample regulariser ``(B,)`` (a negative log-density up to constants and a
    factor of 2, so ``||z||^2`` for a standard normal latent) that the fitting weights.
    """

    @property
    def latent_dim(self) -> int: ...

    @property
    def resolution(self) -> int: ...

    def decode(self, latent: torch.Tensor) -> torch.Tensor: ...

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor: ...

    def prior(self, latent: torch.Tensor) -> torch.Tensor: ...

    def initial_latent(self, n: int = 1) -> torch.Tensor:
        """The latent fitting starts from: the model's mean texture (or closest to it)."""
        ...


def load_texture_model(path: str | Path, device: str | torch.device | None = None, **options: object) -> TextureModel:
    """Open a texture model file: a PCA ``.npz`` (``ganfit.texture.pca``) or exported GAN weights
    (``ganfit.texture.gan``). ``options`` go to the model's constructor (e.g. ``latent_space``)."""
    file = Path(path)
    if not file.is_file():
        raise ModelDataError(f"texture model {file} not found: train one (docs/texture-model.md) or fix the path")
    # Empty, truncated, foreign or oversized files are refused here, before numpy reads a byte of data.
    check_npz(file, "Texture model", TEXTURE_HINT)
    try:
        with np.load(file, allow_pickle=False) as data:
            kind = str(data["kind"]) if "kind" in data.files else ""
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # damaged data past the headers
        raise ModelDataError(f"{file} is not a texture model file (.npz): {exc}") from exc
    if kind == "pca":
        from ganfit.texture.pca import PcaTextureModel

        return PcaTextureModel.load(file, device=device)
    if kind == "gan":
        from ganfit.texture.gan import GanTextureModel

        return GanTextureModel.load(file, device=device, **options)  # type: ignore[arg-type,return-value]
    raise ModelDataError(f"{file}: unknown texture model kind {kind!r} (expected 'pca' or 'gan')")


def resolve_texture_model(name: str | Path | None) -> str | None:
    """A ``--texture-model`` value as a file path: ``"gan"`` is the shipped GAN, ``"projected"``
    (or None) no texture model (the photo projected into UV), anything else a file."""
    if name is None or str(name) == "projected":
        return None
    if str(name) == "gan":
        if not SHIPPED_GAN.is_file():
            raise ModelDataError(f"no texture GAN ships with this installation ({SHIPPED_GAN} is missing): "
                                 "reinstall ganfit or give a weights file")
        return str(SHIPPED_GAN)
    return str(name)


def shipped_gan_provenance() -> dict[str, object] | None:
    """The shipped GAN's provenance file, or None when no GAN ships."""
    file = SHIPPED_GAN.with_suffix(".json")
    if not SHIPPED_GAN.is_file() or not file.is_file():
        return None
    try:
        return dict(json.loads(file.read_text()))
    except (OSError, ValueError) as exc:
        raise ModelDataError(f"{file} is unreadable ({exc}): reinstall ganfit") from exc


# --------------------------------------------------------------------------------------------
# UV texture folders


@dataclass(frozen=True)
class UvTextureSet:
    """The albedo maps of one split of a UV folder (names are file stems)."""

    folder: Path
    names: tuple[str, ...]
    split: Split

    @classmethod
    def open(cls, folder: str | Path, split: Split = "train") -> UvTextureSet:
        """List ``split`` of ``folder`` (see the module docstring for the layout)."""
        root = Path(folder)
        if not root.is_dir():
            raise ModelDataError(f"UV texture folder {root} not found: build it with `ganfit texture-dataset`")
        available = sorted(
            p.stem for p in root.glob("*.png") if not p.stem.endswith(CONFIDENCE_SUFFIX)
        )
        split_file = root / "split.json"
        if split_file.is_file():
            try:
                table = json.loads(split_file.read_text())
            except json.JSONDecodeError as exc:
                raise ModelDataError(f"{split_file} is not valid JSON ({exc}): rebuild the UV folder") from exc
            parts = ("train", "test") if split == "all" else (split,)
            names: list[str] = []
            for part in parts:
                if part not in table:
                    raise ModelDataError(f"{split_file} has no {part!r} list")
                names += [_stem(name) for name in table[part]]
            present = set(available)
            missing = [n for n in names if n not in present]
            if missing:
                log.warning("%s: %d names of the %s split have no PNG (first: %s); skipped",
                            split_file, len(missing), split, missing[0])
            names = [n for n in names if n in present]
        else:
            if split == "all":
                names = available
            else:
                held_out = {n for i, n in enumerate(available) if i % _PLAIN_TEST_EVERY == _PLAIN_TEST_EVERY - 1}
                names = [n for n in available if (n in held_out) == (split == "test")]
        if not names:
            raise ModelDataError(f"no UV textures in the {split} split of {root}")
        return cls(root, tuple(names), split)

    def __len__(self) -> int:
        return len(self.names)

    def albedo_path(self, name: str) -> Path:
        return self.folder / f"{name}.png"

    def confidence_path(self, name: str) -> Path | None:
        path = self.folder / f"{name}{CONFIDENCE_SUFFIX}.png"
        return path if path.is_file() else None

    @property
    def has_confidence(self) -> bool:
        return self.confidence_path(self.names[0]) is not None

    def load(self, size: int | None = None, limit: int | None = None, threads: int = 4) -> np.ndarray:
        """``(N, S, S, 3)`` uint8 RGB albedo maps, resized to ``size`` (Lanczos) if given."""
        names = self.names[:limit]
        with ThreadPoolExecutor(max(1, threads)) as pool:  # PIL decodes without the GIL
            images = list(pool.map(lambda n: _read_png(self.albedo_path(n), size, "RGB"), names))
        return _stack(images, self.folder)

    def load_confidence(self, size: int | None = None, limit: int | None = None, threads: int = 4) -> np.ndarray | None:
        """``(N, S, S)`` uint8 confidence maps, or None when the folder has none."""
        if not self.has_confidence:
            return None
        names = self.names[:limit]

        def read(name: str) -> np.ndarray:
            path = self.confidence_path(name)
            if path is None:
                raise ModelDataError(f"{self.folder}: {name}.png has no {name}{CONFIDENCE_SUFFIX}.png")
            return _read_png(path, size, "L")

        with ThreadPoolExecutor(max(1, threads)) as pool:
            return _stack(list(pool.map(read, names)), self.folder)


def _stem(name: str) -> str:
    return name[:-4] if name.lower().endswith(".png") else name


def _read_png(path: Path, size: int | None, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as file:
            image = file.convert(mode)
        if size is not None and image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.LANCZOS)
        return np.asarray(image)
    except OSError as exc:
        raise ModelDataError(f"cannot read UV texture {path}: {exc}; delete it or rebuild the folder") from exc


def _stack(images: list[np.ndarray], folder: Path) -> np.ndarray:
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        raise ModelDataError(f"UV textures in {folder} differ in size {sorted(shapes)}: pass a size to resize them")
    return np.stack(images)
