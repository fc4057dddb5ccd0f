"""load_photo on real files in every mode a person may hand us, and on every way a file can fail."""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganfit.errors import GanfitError, InputImageError
from ganfit.io.images import MAX_PHOTO_PIXELS, TRANSPARENT_BACKGROUND, Photo, load_photo, photo_from_array
from ganfit.io.samples import SAMPLE_PHOTOS, sample_photo


def assert_one_line_naming(error: pytest.ExceptionInfo[BaseException], path: Path, *words: str) -> None:
    """A user-facing error: one line, names the file, says the given words."""
    message = str(error.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    assert ";" in message, f"no advice after the problem: {message}"
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


# -- ordinary photos ---------------------------------------------------------------------------


def test_rgb_jpeg(grace_path: Path, grace_pixels: np.ndarray) -> None:
    photo = load_photo(grace_path)
    assert isinstance(photo, Photo)
    assert photo.pixels.dtype == np.uint8 and photo.pixels.shape == (600, 512, 3)
    assert photo.pixels.flags.c_contiguous
    assert photo.original_size == (512, 600) and photo.size == (512, 600)
    assert photo.scale == 1.0
    assert photo.path == grace_path and photo.name == str(grace_path)
    np.testing.assert_array_equal(photo.pixels, grace_pixels)


def test_accepts_str_path(grace_path: Path) -> None:
    assert load_photo(str(grace_path)).pixels.shape == (600, 512, 3)


def test_rgb_png(astronaut_path: Path) -> None:
    from skimage import data

    photo = load_photo(astronaut_path)
    np.testing.assert_array_equal(photo.pixels, data.astronaut())


def test_max_side_downscales_keeping_aspect(grace_path: Path) -> None:
    photo = load_photo(grace_path, max_side=300)
    assert photo.pixels.shape == (300, 256, 3)
    assert photo.original_size == (512, 600)
    assert photo.scale == pytest.approx(0.5)
    assert load_photo(grace_path, max_side=None).pixels.shape == (600, 512, 3)


# -- image modes ---------------------------------------------------------------------------------


def test_greyscale_L(tmp_path: Path, grace_pixels: np.ndarray) -> None:
    grey = Image.fromarray(grace_pixels).convert("L")
    path = tmp_path / "grey.png"
    grey.save(path)
    photo = load_photo(path)
    assert photo.pixels.shape == (600, 512, 3)
    for channel in range(3):
        np.testing.assert_array_equal(photo.pixels[..., channel], np.asarray(grey))


def _alpha_left_half_transparent(size: tuple[int, int]) -> Image.Image:
    alpha = np.full((size[1], size[0]), 255, dtype=np.uint8)
    alpha[:, : size[0] // 2] = 0
    return Image.fromarray(alpha)


def test_LA_composited_over_grey(tmp_path: Path, grace_pixels: np.ndarray) -> None:
    grey = Image.fromarray(grace_pixels).convert("L")
    la = Image.merge("LA", (grey, _alpha_left_half_transparent(grey.size)))
    path = tmp_path / "la.png"
    la.save(path)
    photo = load_photo(path)
    assert (photo.pixels[:, :256] == TRANSPARENT_BACKGROUND).all()
    np.testing.assert_array_equal(photo.pixels[:, 256:, 0], np.asarray(grey)[:, 256:])


def test_RGBA_composited_over_grey(tmp_path: Path, grace_pixels: np.ndarray) -> None:
    rgba = Image.fromarray(grace_pixels).convert("RGBA")
    rgba.putalpha(_alpha_left_half_transparent(rgba.size))
    path = tmp_path / "rgba.png"
    rgba.save(path)
    photo = load_photo(path)
    assert (photo.pixels[:, :256] == TRANSPARENT_BACKGROUND).all()
    np.testing.assert_array_equal(photo.pixels[:, 256:], grace_pixels[:, 256:])


def test_half_transparent_blends(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 128))
    path = tmp_path / "half.png"
    rgba.save(path)
    pixel = load_photo(path).pixels[0, 0].astype(int)
    expected = np.array([255, 0, 0]) * 128 / 255 + np.array(TRANSPARENT_BACKGROUND) * 127 / 255
    assert np.abs(pixel - expected).max() <= 1


def test_palette_P(tmp_path: Path, grace_pixels: np.ndarray) -> None:
    palette = Image.fromarray(grace_pixels).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    path = tmp_path / "palette.png"
    palette.save(path)
    photo = load_photo(path)
    np.testing.assert_array_equal(photo.pixels, np.asarray(palette.convert("RGB")))
    assert mean_abs_diff(photo.pixels, grace_pixels) < 6


def test_palette_gif_with_transparent_index(tmp_path: Path, grace_pixels: np.ndarray) -> None:
    palette = Image.fromarray(grace_pixels).convert("P", palette=Image.Palette.ADAPTIVE, colors=255)
    indices = np.asarray(palette).copy()
    indices[:, :100] = 255  # an unused palette entry, declared transparent
    gif = Image.fromarray(indices).convert("P")  # palette set below
    gif.putpalette(palette.getpalette())
    path = tmp_path / "transparent.gif"
    gif.save(path, transparency=255)
    photo = load_photo(path)
    assert (photo.pixels[:, :100] == TRANSPARENT_BACKGROUND).all()
    assert mean_abs_diff(photo.pixels[:, 100:], grace_pixels[:, 100:]) < 8


def test_cmyk_jpeg(tmp_path: Path, grace_pixels: np.ndarray) -> None:
    cmyk = Image.fromarray(grace_pixels).convert("CMYK")
    path = tmp_path / "cmyk.jpg"
    cmyk.save(path, quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    photo = load_photo(path)
    assert photo.pixels.shape == (600, 512, 3)
    assert mean_abs_diff(photo.pixels, grace_pixels) < 4


def test_icc_profiles(tmp_path: Path, grace_pixels: np.ndarray) -> None:
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    tagged, plain = tmp_path / "srgb.png", tmp_path / "plain.png"
    Image.fromarray(grace_pixels).save(tagged, icc_profile=srgb)
    Image.fromarray(grace_pixels).save(plain)
    np.testing.assert_array_equal(load_photo(tagged).pixels, load_photo(plain).pixels)
    # A broken profile must not make a good photo unreadable.
    broken = tmp_path / "broken_profile.png"
    Image.fromarray(grace_pixels).save(broken, icc_profile=b"not a profile" * 20)
    np.testing.assert_array_equal(load_photo(broken).pixels, grace_pixels)


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path: Path, grace_pixels: np.ndarray) -> None:
    grey = np.asarray(Image.fromarray(grace_pixels).convert("L"))
    path = tmp_path / "grey16.png"
    Image.fromarray(grey.astype(np.uint16) * 257).save(path)  # full 16-bit range
    with Image.open(path) as check:
        assert check.mode in ("I;16", "I")
    photo = load_photo(path)
    np.testing.assert_array_equal(photo.pixels[..., 1], grey)  # clipping would make it all white


def test_16_bit_big_endian_tiff(tmp_path: Path, grace_pixels: np.ndarray) -> None:
    grey = np.asarray(Image.fromarray(grace_pixels).convert("L"))
    image = Image.fromarray((grey.astype(np.uint16) * 257).astype(">u2"))
    assert image.mode == "I;16B"
    path = tmp_path / "grey16be.tif"
    image.save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I;16")
    np.testing.assert_array_equal(load_photo(path).pixels[..., 0], grey)


def test_32_bit_int_tiff_is_stretched(tmp_path: Path, grace_pixels: np.ndarray) -> None:
    grey = np.asarray(Image.fromarray(grace_pixels).convert("L")).astype(np.int32)
    path = tmp_path / "grey32.tif"
    Image.fromarray(grey * 100_000).save(path)  # beyond 16 bits: min-max stretch
    with Image.open(path) as check:
        assert check.mode == "I"
    pixels = load_photo(path).pixels[..., 0].astype(int)
    expected = (grey - grey.min()) * 255.0 / (grey.max() - grey.min())
    assert np.abs(pixels - expected).max() <= 1


def test_float_tiff_0_to_1(tmp_path: Path, grace_pixels: np.ndarray) -> None:
    grey = np.asarray(Image.fromarray(grace_pixels).convert("L"))
    path = tmp_path / "float.tif"
    Image.fromarray(grey.astype(np.float32) / 255.0).save(path)
    with Image.open(path) as check:
        assert check.mode == "F"
    np.testing.assert_array_equal(load_photo(path).pixels[..., 2], grey)


def test_exif_orientation_applied(tmp_path: Path, grace_pixels: np.ndarray, face_detector) -> None:
    # Stored sideways (rotated 90 degrees counter-clockwise) with orientation 6 ("rotate 90
    # clockwise to display"): a viewer, and load_photo, must show it upright.
    stored = Image.fromarray(grace_pixels).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif, quality=95)
    assert stored.size == (600, 512)
    assert face_detector.detect(np.asarray(stored)) == []  # the frontal detector needs it upright

    photo = load_photo(path)
    assert photo.pixels.shape == (600, 512, 3)
    assert photo.original_size == (512, 600)
    assert mean_abs_diff(photo.pixels, grace_pixels) < 3
    boxes = face_detector.detect(photo.pixels)
    assert len(boxes) == 1
    points = face_detector.landmarks(photo.pixels, boxes[0])
    assert points[36:48, 1].mean() < points[48:68, 1].mean()  # eyes above the mouth


def test_exif_orientation_with_downscale(tmp_path: Path, grace_pixels: np.ndarray) -> None:
    stored = Image.fromarray(grace_pixels).transpose(Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = 8
    path = tmp_path / "rotated8.jpg"
    stored.save(path, exif=exif, quality=95)
    photo = load_photo(path, max_side=300)
    assert photo.pixels.shape == (300, 256, 3)
    assert photo.original_size == (512, 600)
    small = np.asarray(Image.fromarray(grace_pixels).resize((256, 300), Image.Resampling.LANCZOS))
    assert mean_abs_diff(photo.pixels, small) < 4


def test_very_large_photo_is_downscaled(tmp_path: Path, grace_pixels: np.ndarray, face_detector) -> None:
    big = Image.new("RGB", (8000, 6000), (90, 110, 130))
    big.paste(Image.fromarray(grace_pixels).resize((5120, 6000), Image.Resampling.BILINEAR), (1440, 0))
    path = tmp_path / "camera.jpg"
    big.save(path, quality=90)
    del big
    photo = load_photo(path)
    assert photo.pixels.shape == (1536, 2048, 3)
    assert photo.original_size == (8000, 6000)
    assert photo.scale == pytest.approx(2048 / 8000)
    boxes = face_detector.detect(photo.pixels)
    assert len(boxes) == 1
    # grace's face is at x 161..377 of 512 in the original; here it is scaled by 10 then 0.256.
    expected_center = (1440 + 269 * 10) * photo.scale
    assert abs(boxes[0].center[0] - expected_center) < 0.1 * boxes[0].width


def test_100_megapixel_photo_loads_without_bomb_warning(tmp_path: Path) -> None:
    path = tmp_path / "medium_format.jpg"
    Image.new("L", (12_300, 8_200), 100).save(path, quality=75)  # 100.9 MP, above Pillow's 89 MP
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        photo = load_photo(path)
    assert photo.original_size == (12_300, 8_200)
    assert photo.pixels.shape == (1365, 2048, 3)
    assert (photo.pixels == 100).all()


def test_144_megapixel_16_bit_grey_png_stays_small_in_memory(tmp_path: Path) -> None:
    """Issue 16: a 144 MP 16-bit PNG under the pixel cap peaked at 3.5 GB (float64 temporaries of
    the whole image, then a full-size RGB copy). Its decoded pixels are 288 MB; the load runs in
    a child whose address space may grow 1.5 GiB past its imports, and its peak may grow 1 GiB."""
    import json
    import subprocess
    import sys

    side = 12_000
    path = tmp_path / "scan16.png"
    packer = zlib.compressobj(1)
    ramp = (np.arange(side, dtype=np.uint32) * 65535 // (side - 1)).astype(">u2")
    with path.open("wb") as stream:
        def chunk(kind: bytes, data: bytes) -> None:
            stream.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)))

        stream.write(b"\x89PNG\r\n\x1a\n")
        chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0))
        parts = [packer.compress(b"\0" + ramp.tobytes()) for _ in range(side)]  # every row a left-right ramp
        chunk(b"IDAT", b"".join(parts) + packer.flush())
        chunk(b"IEND", b"")
    child = (
        "import json, resource, sys\n"
        "from ganfit.io.images import load_photo\n"
        "vm = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize:'))\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 29), resource.getrlimit(resource.RLIMIT_AS)[1]))\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "photo = load_photo(sys.argv[1])\n"
        "grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024\n"
        "row = photo.pixels[photo.pixels.shape[0] // 2]\n"
        "print(json.dumps({'shape': photo.pixels.shape, 'grew_mib': grew, 'ends': [int(row[0, 0]), int(row[-1, 0])],"
        " 'grey': bool((photo.pixels == photo.pixels[..., :1]).all())}))\n"
    )
    result = subprocess.run([sys.executable, "-c", child, str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert outcome["shape"] == [2048, 2048, 3] and outcome["grey"], outcome
    assert outcome["ends"][0] < 3 and outcome["ends"][1] > 252, outcome  # scaled, not clipped
    assert outcome["grew_mib"] < 1024, outcome


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims a size; Pillow reads only the header before we check it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)))
    return path


def test_beyond_our_pixel_limit(tmp_path: Path) -> None:
    path = _png_header_only(tmp_path / "huge.png", 13_000, 12_000)
    assert 13_000 * 12_000 > MAX_PHOTO_PIXELS
    with pytest.raises(InputImageError) as error:
        load_photo(path)
    assert_one_line_naming(error, path, "megapixels", "downscale")


def test_beyond_pillow_bomb_limit(tmp_path: Path) -> None:
    path = _png_header_only(tmp_path / "bomb.png", 30_000, 30_000)
    with pytest.raises(InputImageError) as error:
        load_photo(path)
    assert_one_line_naming(error, path, "too large", "downscale")


# -- failures ------------------------------------------------------------------------------------


def test_truncated_jpeg(tmp_path: Path, grace_path: Path) -> None:
    data = grace_path.read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputImageError) as error:
        load_photo(path)
    assert_one_line_naming(error, path, "damaged or truncated", "re-export")


def test_truncated_png(tmp_path: Path, astronaut_path: Path) -> None:
    data = astronaut_path.read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputImageError) as error:
        load_photo(path)
    assert_one_line_naming(error, path, "damaged or truncated")


def test_corrupt_png_data(tmp_path: Path, astronaut_path: Path) -> None:
    data = bytearray(astronaut_path.read_bytes())
    start = data.index(b"IDAT") + 100
    data[start : start + 2000] = os.urandom(2000)
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    with pytest.raises(InputImageError) as error:
        load_photo(path)
    assert_one_line_naming(error, path, "damaged or truncated")


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "photo.txt"
    path.write_text("this is not a photo\n")
    with pytest.raises(InputImageError) as error:
        load_photo(path)
    assert_one_line_naming(error, path, "not an image file", "JPEG or PNG")


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_text("<html>404 not found</html>\n")
    with pytest.raises(InputImageError) as error:
        load_photo(path)
    assert_one_line_naming(error, path, "not an image file")


def test_heic_says_export_as_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)
    with pytest.raises(InputImageError) as error:
        load_photo(path)
    assert_one_line_naming(error, path, "HEIC", "export the photo as JPEG or PNG")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.touch()
    with pytest.raises(InputImageError) as error:
        load_photo(path)
    assert_one_line_naming(error, path, "empty")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "no_such_photo.jpg"
    with pytest.raises(InputImageError) as error:
        load_photo(path)
    assert_one_line_naming(error, path, "not found", "check the path")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(InputImageError) as error:
        load_photo(tmp_path)
    assert_one_line_naming(error, tmp_path, "folder", "image file")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path, grace_path: Path) -> None:
    path = tmp_path / "secret.jpg"
    path.write_bytes(grace_path.read_bytes())
    path.chmod(0)
    try:
        with pytest.raises(InputImageError) as error:
            load_photo(path)
        assert_one_line_naming(error, path, "permission denied")
    finally:
        path.chmod(0o644)


def test_bad_max_side(grace_path: Path) -> None:
    with pytest.raises(ValueError):
        load_photo(grace_path, max_side=0)


# -- arrays and samples --------------------------------------------------------------------------


def test_photo_from_array(grace_pixels: np.ndarray) -> None:
    photo = photo_from_array(grace_pixels, "camera")
    assert photo.size == (512, 600) and photo.scale == 1.0 and photo.name == "camera"
    with pytest.raises(ValueError):
        photo_from_array(grace_pixels.astype(np.float32))


def test_sample_photos_exist_and_load(sample_dir: Path) -> None:
    shapes = {"grace_hopper": (600, 512, 3), "astronaut": (512, 512, 3), "coffee": (400, 600, 3),
              "two_faces": (600, 1024, 3)}
    assert set(SAMPLE_PHOTOS) == set(shapes)
    for name in SAMPLE_PHOTOS:
        path = sample_photo(name, cache_dir=sample_dir)
        assert path.is_file()
        assert load_photo(path).pixels.shape == shapes[name]
        assert sample_photo(name, cache_dir=sample_dir) == path  # cached


def test_unknown_sample_photo() -> None:
    with pytest.raises(GanfitError, match="grace_hopper"):
        sample_photo("mona_lisa")
