"""Photo loading: any photo a person may hand us becomes an upright 8-bit RGB array.

Everything downstream (detection, landmarks, fitting) works on ``Photo.pixels``: ``(H, W, 3)``
``uint8`` RGB, upright (EXIF orientation applied), at most ``max_side`` pixels on its long side.
Every way a file can fail to become that raises ``InputImageError`` with one line that names the
file and says what to do, so the CLI and the add-on can show it as is.

Choices, and why:

- **Transparency** (RGBA, LA, PA, palette with a transparent colour) is composited over
  mid-grey (128, 128, 128), not white or black. Cut-out portraits are common; a neutral grey
  background does not read as over-exposed skin or as shadow to the detector and to colour and
  light estimation, and it is what the fitting masks out anyway.
- **16-bit and float images** (``I;16*``, ``I``, ``F``) are scaled to 8 bit, not clipped:
  ``I;16*`` by 255/65535; ``I``/``F`` by their value range (0-1 floats, 0-255, 0-65535), and
  anything else is stretched linearly from its minimum to its maximum. The scaling runs on
  strips of rows, and grey or plain RGB images are downscaled before ``to_rgb8`` copies them,
  so a 144 MP 16-bit grey PNG peaks at ~0.6 GB (mostly its decoded pixels) instead of 3.5 GB.
- **Colour profiles**: an embedded ICC profile (CMYK print files, Display P3 phone photos) is
  converted to sRGB with Pillow's littleCMS; if that fails the plain conversion is used.
- **Large photos** are decoded at a reduced JPEG scale when possible (``draft``, much less
  memory) and downscaled with Lanczos to ``max_side``. Pillow's decompression-bomb limit
  (89 MP warning, 179 MP error) is process-global, so it is left alone: its warning is silenced
  locally and our own limit, ``MAX_PHOTO_PIXELS`` (150 MP, medium-format cameras), applies.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ganfit.errors import InputImageError

__all__ = [
    "MAX_PHOTO_PIXELS",
    "TRANSPARENT_BACKGROUND",
    "Photo",
    "load_photo",
    "photo_from_array",
    "to_rgb8",
]

log = logging.getLogger(__name__)

#: Largest photo accepted, in pixels (before downscaling). 100-150 MP medium-format camera
#: files load; anything larger is almost certainly a scan, a panorama or a hostile file.
MAX_PHOTO_PIXELS = 150_000_000

#: Colour that transparent pixels are composited over (see the module docstring for why).
TRANSPARENT_BACKGROUND = (128, 128, 128)

#: Pillow modes with more than 8 bits per sample, scaled to 8 bit by ``_high_bit_depth_to_uint8``.
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
#: Pixels scaled at a time (float64 temporaries of ~32 MB per strip, whatever the photo's size).
_STRIP_PIXELS = 1 << 22

_HEIF_SUFFIXES = {".heic", ".heif", ".avif"}
_RAW_SUFFIXES = {".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2", ".dng", ".pef", ".srw"}


@dataclass(frozen=True, eq=False)
class Photo:
    """A loaded photo, upright and 8-bit RGB, with how it maps back to the file.

    Attributes:
        pixels: ``(H, W, 3)`` ``uint8`` RGB, upright. Treat as read-only.
        path: the file as the caller named it (used in messages).
        original_size: ``(width, height)`` of the upright full-resolution image in the file.
        scale: factor applied to reach ``pixels`` (``pixels`` width ~= original width * scale);
            divide image coordinates by it to get coordinates in the original photo.
    """

    pixels: np.ndarray
    path: Path
    original_size: tuple[int, int]
    scale: float
    focal_35mm: float | None = None  # EXIF FocalLengthIn35mmFilm, when the camera wrote it

    @property
    def name(self) -> str:
        """How messages name this photo: the path as the caller gave it."""
        return str(self.path)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of ``pixels``."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


def photo_from_array(pixels: np.ndarray, path: str | os.PathLike[str] = "<array>") -> Photo:
    """Wrap an in-memory ``(H, W, 3)`` uint8 RGB array as a ``Photo`` (scale 1).

    For callers that already hold pixels (tests, a camera grab); ``path`` only names it.
    """
    array = np.asarray(pixels)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {array.dtype} {array.shape}")
    array = np.ascontiguousarray(array)
    return Photo(pixels=array, path=Path(path), original_size=(array.shape[1], array.shape[0]), scale=1.0)


def load_photo(path: str | os.PathLike[str], max_side: int | None = 2048) -> Photo:
    """Read a photo file into an upright 8-bit RGB ``Photo``, at most ``max_side`` px long.

    ``max_side=None`` keeps the full resolution. Raises ``InputImageError`` (one line naming the
    file and what to do) for anything that is not a readable photo.
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels, got {max_side}")
    path = Path(path)
    name = str(path)
    _check_file(path, name)

    try:
        with warnings.catch_warnings():
            # Our own MAX_PHOTO_PIXELS applies; Pillow's global 89 MP warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                pixels, original_size, scale = _decode(image, name, max_side)
                focal_35mm = _exif_focal_35mm(image)
    except InputImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputImageError(
            f"{name}: the image is too large to load safely ({exc}); "
            f"downscale it below {MAX_PHOTO_PIXELS // 1_000_000} megapixels first"
        ) from None
    except UnidentifiedImageError:
        raise InputImageError(_unidentified_message(path, name)) from None
    except PermissionError:
        raise InputImageError(
            f"{name}: permission denied; make the file readable or copy it somewhere you can read"
        ) from None
    except MemoryError:
        raise InputImageError(
            f"{name}: not enough memory to decode this image; downscale it first"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError) as exc:
        # Pillow reports damaged data with a mix of these (e.g. "image file is truncated",
        # "broken data stream", SyntaxError from some plugins' header parsers).
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputImageError(
            f"{name}: the image data is damaged or truncated ({detail}); "
            "re-export or re-download the photo"
        ) from None

    log.debug(
        "loaded %s: original %dx%d, pixels %dx%d (scale %.4f)",
        name, original_size[0], original_size[1], pixels.shape[1], pixels.shape[0], scale,
    )
    return Photo(pixels=pixels, path=path, original_size=original_size, scale=scale, focal_35mm=focal_35mm)


def _exif_focal_35mm(image: Image.Image) -> float | None:
    """EXIF FocalLengthIn35mmFilm (tag 0xA405 in the Exif IFD) in mm, or None.

    Phones and most cameras write it; it fixes the field of view, which one photo's landmarks
    cannot tell apart from the distance to the face.
    """
    try:
        value = image.getexif().get_ifd(0x8769).get(0xA405)
    except Exception:  # noqa: BLE001 - broken EXIF is common in edited photos; ignore it
        return None
    try:
        focal = float(value)
    except (TypeError, ValueError):
        return None
    return focal if 8.0 <= focal <= 2000.0 else None


def _check_file(path: Path, name: str) -> None:
    """Turn the common file-system mistakes into messages before Pillow sees the path."""
    try:
        if not path.exists():
            raise InputImageError(f"{name}: file not found; check the path and the file name")
        if path.is_dir():
            raise InputImageError(f"{name}: is a folder, not a photo; pass an image file (JPEG or PNG)")
        if not path.is_file():
            raise InputImageError(f"{name}: not a regular file; pass an image file (JPEG or PNG)")
        if path.stat().st_size == 0:
            raise InputImageError(f"{name}: the file is empty (0 bytes); pass a JPEG or PNG photo")
    except OSError as exc:  # e.g. a path component that is not readable, a name too long
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise InputImageError(
                f"{name}: permission denied; make the file readable or copy it somewhere you can read"
            ) from None
        raise InputImageError(f"{name}: cannot access the file ({exc.strerror}); check the path") from None
    if not os.access(path, os.R_OK):
        raise InputImageError(
            f"{name}: permission denied; make the file readable or copy it somewhere you can read"
        )


def _unidentified_message(path: Path, name: str) -> str:
    suffix = path.suffix.lower()
    if suffix in _HEIF_SUFFIXES:
        return (
            f"{name}: {suffix[1:].upper()} images cannot be read here (Pillow has no decoder "
            "for them); export the photo as JPEG or PNG"
        )
    if suffix in _RAW_SUFFIXES:
        return f"{name}: camera RAW files cannot be read here; export the photo as JPEG or PNG"
    return f"{name}: not an image file (PIL could not read it); pass a JPEG or PNG photo"


def _decode(image: Image.Image, name: str, max_side: int | None) -> tuple[np.ndarray, tuple[int, int], float]:
    """Decode an opened image: size check, reduced JPEG decode, orientation, 8-bit RGB, resize."""
    width, height = image.size
    if width < 1 or height < 1:
        raise InputImageError(f"{name}: the image has no pixels ({width}x{height}); pass a photo")
    if width * height > MAX_PHOTO_PIXELS:
        raise InputImageError(
            f"{name}: {width}x{height} is {width * height / 1e6:.0f} megapixels, more than the "
            f"{MAX_PHOTO_PIXELS // 1_000_000} MP this tool accepts; downscale the photo first"
        )

    scale = 1.0  # the long side does not depend on the orientation, so this can come first
    if max_side is not None and max(width, height) > max_side:
        scale = max_side / max(width, height)
        # JPEG can decode at 1/2, 1/4, 1/8 directly: far less memory and time for 100 MP files.
        # draft() keeps the result at least as large as asked, so the Lanczos step still runs.
        image.draft(None, (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))

    # Decode before reading EXIF: for PNG, getexif() decodes the image itself (the eXIf chunk may
    # follow the pixel data), and a decoding error there must not be swallowed as "bad EXIF".
    image.load()
    orientation = _exif_orientation(image)
    swapped = orientation in (5, 6, 7, 8)
    original_size = (height, width) if swapped else (width, height)
    if orientation not in (None, 1):
        try:
            image = ImageOps.exif_transpose(image)
        except Exception as exc:  # malformed EXIF must not make a good photo unreadable
            log.warning("%s: could not apply EXIF orientation %s (%s); using the stored orientation",
                        name, orientation, exc)
            original_size = (width, height)

    target = None
    if scale != 1.0:
        target = (
            max(1, round(original_size[0] * scale)),
            max(1, round(original_size[1] * scale)),
        )
    if image.mode in _HIGH_BIT_DEPTH_MODES:  # to 8-bit grey first, one byte a pixel
        image = Image.fromarray(_high_bit_depth_to_uint8(image))
    if target is not None and image.size != target and _plain_grey_or_rgb(image):
        # to_rgb8 only copies such an image (grey: into three equal channels), so shrinking first
        # gives the same pixels without a full-size copy (Pillow's RGB takes 4 bytes a pixel).
        image = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    rgb = to_rgb8(image)
    if target is not None:
        if rgb.size != target:
            rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        scale = target[0] / original_size[0]
    pixels = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    if pixels.ndim != 3 or pixels.shape[2] != 3:  # defensive: to_rgb8 always gives RGB
        raise InputImageError(f"{name}: unsupported image layout {pixels.shape}; pass a JPEG or PNG photo")
    return pixels, original_size, scale


def _plain_grey_or_rgb(image: Image.Image) -> bool:
    """True when ``to_rgb8`` is a plain copy of the image's channels: grey or RGB with no
    transparency and (for RGB) no colour profile to convert through."""
    if "transparency" in image.info:
        return False
    return image.mode == "L" or (image.mode == "RGB" and not image.info.get("icc_profile"))


def _exif_orientation(image: Image.Image) -> int | None:
    """EXIF orientation tag (1-8) or None; tolerant of malformed EXIF blocks."""
    try:
        value = image.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - broken EXIF is common in edited photos; ignore it
        return None
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def to_rgb8(image: Image.Image) -> Image.Image:
    """Convert any Pillow image mode to 8-bit RGB (see the module docstring for the rules).

    Why not ``image.convert("RGB")``: it clips 16-bit values, drops alpha onto black, and
    ignores colour profiles.
    """
    mode = image.mode
    if mode in _HIGH_BIT_DEPTH_MODES:
        return Image.fromarray(_high_bit_depth_to_uint8(image)).convert("RGB")

    if mode == "P" or mode == "PA":
        image = image.convert("RGBA" if (mode == "PA" or "transparency" in image.info) else "RGB")
    elif mode in ("RGBa", "La"):  # premultiplied alpha
        image = image.convert("RGBA")
    elif mode in ("L", "1") and "transparency" in image.info:
        image = image.convert("LA")
    elif mode == "RGB" and "transparency" in image.info:
        image = image.convert("RGBA")

    if image.mode in ("RGBA", "LA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*TRANSPARENT_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")

    icc = image.info.get("icc_profile")
    if icc and image.mode in ("RGB", "CMYK"):
        converted = _icc_to_srgb(image, icc)
        if converted is not None:
            return converted
    return image.convert("RGB")


def _icc_to_srgb(image: Image.Image, icc: bytes) -> Image.Image | None:
    """Convert through an embedded ICC profile to sRGB; None when littleCMS cannot."""
    try:
        import io

        from PIL import ImageCms

        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if image.mode == "RGB" and "srgb" in ImageCms.getProfileDescription(source).lower():
            return image  # already sRGB: skip a full-image transform
        target = ImageCms.createProfile("sRGB")
        converted = ImageCms.profileToProfile(image, source, target, outputMode="RGB")
    except Exception as exc:  # noqa: BLE001 - a bad profile should not make the photo unreadable
        log.debug("ICC conversion failed (%s); converting without the profile", exc)
        return None
    return converted if converted is not None and converted.mode == "RGB" else None


def _high_bit_depth_to_uint8(image: Image.Image) -> np.ndarray:
    """Scale a 16-bit integer, 32-bit integer or float greyscale image to uint8 without clipping.

    Works on strips of rows (``_STRIP_PIXELS``): the float64 arithmetic over a whole 144 MP
    image would take four 1.1 GB temporaries.
    """
    mode = image.mode
    width, height = image.size
    rows = max(1, _STRIP_PIXELS // max(1, width))
    strips = [(top, min(height, top + rows)) for top in range(0, height, rows)]

    def strip(top: int, bottom: int) -> np.ndarray:
        return np.asarray(image.crop((0, top, width, bottom))).astype(np.float64)

    low = high = 0.0
    if not mode.startswith("I;16"):  # the value range decides the scaling: one pass to find it
        lows, highs = [], []
        for top, bottom in strips:
            values = strip(top, bottom)
            finite = values[np.isfinite(values)]
            if finite.size:
                lows.append(float(finite.min()))
                highs.append(float(finite.max()))
        if lows:
            low, high = min(lows), max(highs)
    out = np.empty((height, width), np.uint8)
    for top, bottom in strips:
        out[top:bottom] = _scale_to_255(strip(top, bottom), mode, low, high)
    return out


def _scale_to_255(values: np.ndarray, mode: str, low: float, high: float) -> np.ndarray:
    """Values of a high-bit-depth image in [0, 255] (rounded), given the image's finite range."""
    if mode.startswith("I;16"):
        values = values * (255.0 / 65535.0)
    else:
        if low >= 0.0 and high <= 1.0 and mode == "F":
            values = values * 255.0
        elif low >= 0.0 and high <= 255.0:
            pass
        elif low >= 0.0 and high <= 65535.0:
            values = values * (255.0 / 65535.0)
        elif high > low:
            values = (values - low) * (255.0 / (high - low))
        else:
            values = np.zeros_like(values)
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
