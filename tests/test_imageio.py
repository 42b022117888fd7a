"""Images in and out (elqproj.imageio): every input kind round-trips; bad input gets a typed error."""

from __future__ import annotations

import errno
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps

from elqproj.errors import ConfigError, ImageDecodeError, ImageTooLargeError, InvalidInputError
from elqproj.imageio import (
    MAX_PIXELS_DEFAULT,
    ImageArray,
    check_image_tensor,
    check_processing_size,
    crop_padding,
    expand_image_paths,
    from_tensor,
    load_image,
    pad_to_multiple,
    resolve_max_pixels,
    save_image,
    to_tensor,
)

ORIENTATION = 0x0112
SOFTWARE = 0x0131


def _rgb(height: int = 5, width: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _upscale(images: torch.Tensor, factor: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(images, scale_factor=factor, mode="nearest")


# ---------------------------------------------------------------------------------------------
# Round trips


def test_pil_rgb_round_trips_exactly():
    image = Image.fromarray(_rgb())
    tensor, meta = to_tensor(image)
    assert tensor.shape == (1, 3, 5, 7) and tensor.dtype == torch.float32
    assert (meta.kind, meta.batched, meta.size, meta.mode, meta.alpha) == ("pil", False, (5, 7), "RGB", None)
    out = from_tensor(tensor, meta)
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(image))


def test_grayscale_becomes_three_equal_channels_and_comes_back_gray():
    image = Image.fromarray(_rgb()[:, :, 0])
    tensor, meta = to_tensor(image)
    assert torch.equal(tensor[:, 0], tensor[:, 1]) and torch.equal(tensor[:, 0], tensor[:, 2])
    out = from_tensor(tensor, meta)
    assert out.mode == "L" and np.array_equal(np.asarray(out), np.asarray(image))


def test_rgba_alpha_is_carried_through():
    rgba = np.dstack([_rgb(), np.arange(35, dtype=np.uint8).reshape(5, 7) * 7])
    tensor, meta = to_tensor(Image.fromarray(rgba))
    assert tensor.shape == (1, 3, 5, 7)
    assert meta.alpha.shape == (1, 1, 5, 7)
    out = from_tensor(tensor, meta)
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out), rgba)


def test_alpha_is_resized_to_an_upscaled_output():
    alpha = np.zeros((4, 6), dtype=np.uint8)
    alpha[:, 3:] = 255  # left half transparent, right half opaque
    tensor, meta = to_tensor(Image.fromarray(np.dstack([_rgb(4, 6), alpha])))
    out = from_tensor(_upscale(tensor, 4), meta)
    assert out.size == (24, 16) and out.mode == "RGBA"
    out_alpha = np.asarray(out)[:, :, 3]
    assert (out_alpha[:, :10] == 0).all() and (out_alpha[:, 14:] == 255).all()
    assert 0 < out_alpha[0, 12] < 255  # bilinear transition at the edge


def test_gray_with_alpha_comes_back_as_la():
    la = Image.merge("LA", [Image.fromarray(_rgb()[:, :, 1]), Image.fromarray(_rgb(seed=1)[:, :, 2])])
    tensor, meta = to_tensor(la)
    out = from_tensor(tensor, meta)
    assert out.mode == "LA" and np.array_equal(np.asarray(out), np.asarray(la))


def test_palette_image_with_transparency_becomes_rgba():
    palette = Image.fromarray(_rgb()).quantize(colors=8)
    palette.info["transparency"] = 0
    tensor, meta = to_tensor(palette)
    assert meta.mode == "P" and meta.alpha is not None
    out = from_tensor(tensor, meta)
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out), np.asarray(palette.convert("RGBA")))


def test_palette_image_without_transparency_becomes_rgb():
    palette = Image.fromarray(_rgb()).quantize(colors=8)
    tensor, meta = to_tensor(palette)
    out = from_tensor(tensor, meta)
    assert meta.alpha is None and out.mode == "RGB"
    assert np.array_equal(np.asarray(out), np.asarray(palette.convert("RGB")))


def test_cmyk_is_converted_to_rgb():
    cmyk = Image.fromarray(_rgb()).convert("CMYK")
    tensor, meta = to_tensor(cmyk)
    out = from_tensor(tensor, meta)
    assert meta.mode == "CMYK" and out.mode == "RGB"
    assert np.array_equal(np.asarray(out), np.asarray(cmyk.convert("RGB")))


def test_16_bit_gray_keeps_full_precision():
    values = np.array([[0, 1, 257, 1000], [30001, 65534, 65535, 12345]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    tensor, meta = to_tensor(image)
    assert torch.equal(tensor[0, 0], torch.from_numpy(values.astype(np.float32)) / 65535)
    out = from_tensor(tensor, meta)
    assert out.mode == "I;16" and np.array_equal(np.asarray(out), values)


def test_exif_orientation_is_applied_and_reset(tmp_path):
    pixels = _rgb(2, 3)
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # rotate 90 degrees clockwise to display
    exif[SOFTWARE] = "camera"
    path = tmp_path / "rotated.png"
    Image.fromarray(pixels).save(path, exif=exif.tobytes())

    image = load_image(path)
    assert np.array_equal(np.asarray(image), np.rot90(pixels, k=-1))
    tensor, meta = to_tensor(path)
    assert tensor.shape == (1, 3, 3, 2)
    kept = Image.Exif()
    kept.load(meta.exif)
    assert ORIENTATION not in kept and kept[SOFTWARE] == "camera"


def test_exif_orientation_of_an_opened_pil_image_is_applied(tmp_path):
    pixels = _rgb(2, 3)
    exif = Image.Exif()
    exif[ORIENTATION] = 3  # upside down
    path = tmp_path / "flipped.png"
    Image.fromarray(pixels).save(path, exif=exif.tobytes())
    with Image.open(path) as opened:
        tensor, _ = to_tensor(opened)
    assert np.array_equal((tensor[0].permute(1, 2, 0) * 255).round().byte().numpy(), pixels[::-1, ::-1])


def test_saved_output_carries_the_input_exif(tmp_path):
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    exif[SOFTWARE] = "camera"
    source = tmp_path / "in.png"
    Image.fromarray(_rgb(2, 3)).save(source, exif=exif.tobytes())
    tensor, meta = to_tensor(source)
    written = save_image(from_tensor(_upscale(tensor, 2), meta), tmp_path / "out.jpg")
    with Image.open(written) as reread:
        assert reread.format == "JPEG" and reread.size == (4, 6)
        assert reread.getexif()[SOFTWARE] == "camera" and ORIENTATION not in reread.getexif()


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32", "float64"])
def test_numpy_hwc_round_trips_with_its_dtype(dtype):
    rng = np.random.default_rng(1)
    if dtype == "uint8":
        array = rng.integers(0, 256, (4, 5, 3)).astype(np.uint8)
    elif dtype == "uint16":
        array = rng.integers(0, 65536, (4, 5, 3)).astype(np.uint16)
    else:
        array = rng.random((4, 5, 3)).astype(dtype)
    tensor, meta = to_tensor(array)
    assert tensor.dtype == torch.float32 and (meta.kind, meta.dtype, meta.layout) == ("numpy", dtype, "HWC")
    out = from_tensor(tensor, meta)
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_allclose(out, array, atol=1e-7 if dtype.startswith("float") else 0)


def test_numpy_2d_gray_comes_back_2d():
    gray = np.random.default_rng(2).random((4, 5)).astype(np.float32)
    tensor, meta = to_tensor(gray)
    assert tensor.shape == (1, 3, 4, 5)
    out = from_tensor(_upscale(tensor, 2), meta)
    assert out.shape == (8, 10) and out.dtype == np.float32


def test_numpy_single_channel_keeps_its_channel_axis():
    tensor, meta = to_tensor(_rgb()[:, :, :1])
    assert from_tensor(tensor, meta).shape == (5, 7, 1)


def test_numpy_rgba_carries_alpha():
    rgba = np.dstack([_rgb(), np.full((5, 7), 40, dtype=np.uint8)])
    tensor, meta = to_tensor(rgba)
    out = from_tensor(_upscale(tensor, 2), meta)
    assert out.shape == (10, 14, 4) and (out[:, :, 3] == 40).all()


def test_torch_chw_round_trips_unbatched():
    x = torch.rand(3, 4, 6, dtype=torch.float64)
    tensor, meta = to_tensor(x)
    assert tensor.shape == (1, 3, 4, 6) and tensor.dtype == torch.float32 and not meta.batched
    out = from_tensor(tensor, meta)
    assert out.shape == (3, 4, 6) and out.dtype == torch.float64
    torch.testing.assert_close(out, x, atol=1e-7, rtol=0)


def test_torch_batched_gray_expands_to_rgb_and_comes_back_gray():
    x = torch.rand(2, 1, 4, 6)
    tensor, meta = to_tensor(x)
    assert tensor.shape == (2, 3, 4, 6) and meta.batched
    out = from_tensor(_upscale(tensor, 2), meta)
    assert out.shape == (2, 1, 8, 12)


def test_torch_input_keeps_its_autograd_graph():
    x = torch.rand(1, 3, 4, 4, requires_grad=True)
    tensor, _ = to_tensor(x)
    tensor.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_list_of_images_and_paths_is_batched_and_returned_as_a_list(tmp_path):
    path = tmp_path / "b.png"
    Image.fromarray(_rgb(seed=3)[:, :, 0]).save(path)
    rgba = Image.fromarray(np.dstack([_rgb(seed=4), np.full((5, 7), 9, dtype=np.uint8)]))
    tensor, meta = to_tensor([Image.fromarray(_rgb()), path, rgba])
    assert tensor.shape == (3, 3, 5, 7) and meta.batched and meta.batch_size == 3
    assert meta.alpha.shape == (3, 1, 5, 7) and meta.alpha[0].eq(1).all()
    outs = from_tensor(tensor, meta)
    assert [o.mode for o in outs] == ["RGB", "L", "RGBA"]
    assert np.array_equal(np.asarray(outs[1]), _rgb(seed=3)[:, :, 0])


def test_float_to_uint8_rounds_to_nearest():
    tensor, meta = to_tensor(Image.new("RGB", (1, 1)))
    out = from_tensor(torch.full((1, 3, 1, 1), 100.6 / 255), meta)
    assert np.asarray(out)[0, 0, 0] == 101  # truncation would give 100


def test_values_within_tolerance_of_the_range_are_accepted():
    x, _ = to_tensor(torch.full((1, 3, 2, 2), 1 + 1e-7))
    assert x.max().item() <= 1.0 and x.min().item() >= 1.0 - 1e-6


# ---------------------------------------------------------------------------------------------
# Bad input


def test_unsupported_type_names_it_and_lists_accepted_types():
    with pytest.raises(InvalidInputError, match=r"unsupported image type builtins\.dict.*PIL\.Image\.Image"):
        to_tensor({"image": 1})


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((0, 5, 3), dtype=np.uint8), "at least one pixel"),
        (torch.zeros(1, 3, 0, 4), "at least one pixel"),
        (np.zeros((4, 5, 2), dtype=np.uint8), "2 channels"),
        (np.zeros((3, 8, 8), dtype=np.uint8), "channels-first"),
        (torch.zeros(1, 4, 8, 8), "got \\(1, 4, 8, 8\\)"),
        (np.zeros((4, 5, 3), dtype=np.int32), "dtype int32"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.uint8), "x.float\\(\\) / 255"),
        (torch.full((1, 3, 2, 2), 255.0), "scale to \\[0, 1\\]"),
        (np.full((2, 2, 3), -0.5, dtype=np.float32), "scale to \\[0, 1\\]"),
        (torch.tensor([[[[0.5, float("nan")]]]]).expand(1, 3, 1, 2), "NaN or infinite"),
        (np.full((2, 2), np.inf, dtype=np.float32), "NaN or infinite"),
        ([], "empty"),
        ([Image.new("RGB", (4, 4)), Image.new("RGB", (5, 4))], "one size"),
        ([torch.zeros(3, 4, 4)], "PIL images or file paths"),
    ],
    ids=["numpy-0-size", "torch-0-size", "two-channels", "chw-numpy", "four-channel-torch", "int32-numpy",
         "uint8-torch", "torch-0-255", "numpy-negative", "nan", "inf", "empty-list", "mixed-sizes", "tensor-list"],
)
def test_bad_input_is_an_invalid_input_error(bad, message):
    with pytest.raises(InvalidInputError, match=message):
        to_tensor(bad)


def test_image_above_the_pixel_limit_is_refused():
    with pytest.raises(ImageTooLargeError, match="100x100 .* 10,000 pixels.*max_pixels"):
        to_tensor(np.zeros((100, 100, 3), dtype=np.uint8), max_pixels=5000)


def test_pixel_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("ELQPROJ_MAX_PIXELS", "99")
    assert resolve_max_pixels() == 99 and resolve_max_pixels(5) == 5
    with pytest.raises(ImageTooLargeError):
        to_tensor(torch.zeros(3, 10, 10))
    monkeypatch.setenv("ELQPROJ_MAX_PIXELS", "lots")
    with pytest.raises(ConfigError, match="lots"):
        resolve_max_pixels()
    monkeypatch.delenv("ELQPROJ_MAX_PIXELS")
    assert resolve_max_pixels() == MAX_PIXELS_DEFAULT


def test_missing_file_is_an_invalid_input_error(tmp_path):
    with pytest.raises(InvalidInputError, match="not found.*nope.png"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(InvalidInputError, match="directory"):
        load_image(tmp_path)


def _png_bytes(image: Image.Image, tmp_path: Path) -> bytes:
    path = tmp_path / "source.png"
    image.save(path)
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["empty", "garbage", "text", "truncated"])
def test_unreadable_file_is_an_image_decode_error_naming_the_file(tmp_path, kind):
    contents = {
        "empty": b"",
        "garbage": bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)),
        "text": b"this is not an image\n",
        "truncated": _png_bytes(Image.fromarray(_rgb(64, 64)), tmp_path)[:200],
    }[kind]
    path = tmp_path / f"{kind}.png"
    path.write_bytes(contents)
    with pytest.raises(ImageDecodeError, match=f"{kind}.png"):
        load_image(path)


def _png_header_only(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    """A PNG whose header claims width x height, with a tiny (invalid) body: a bomb's signature."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [9_000, 100_000], ids=["above-our-limit", "above-pils-limit"])
def test_decompression_bomb_is_refused_before_decoding(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(side, side))
    with pytest.raises(ImageTooLargeError, match="bomb.png"):
        load_image(path)


def test_small_pixel_limit_applies_to_files(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(_rgb(8, 8)).save(path)
    with pytest.raises(ImageTooLargeError):
        load_image(path, max_pixels=63)
    assert load_image(path, max_pixels=64).size == (8, 8)


# ---------------------------------------------------------------------------------------------
# Saving


@pytest.mark.parametrize("suffix, file_format", [(".png", "PNG"), (".jpg", "JPEG"), (".webp", "WEBP"),
                                                 (".tiff", "TIFF"), (".bmp", "BMP")])
def test_save_picks_the_format_from_the_suffix_and_creates_folders(tmp_path, suffix, file_format):
    path = save_image(Image.fromarray(_rgb()), tmp_path / "a" / "b" / f"out{suffix}")
    with Image.open(path) as reread:
        assert reread.format == file_format and reread.size == (7, 5)


def test_save_rejects_an_unknown_suffix(tmp_path):
    with pytest.raises(InvalidInputError, match="out.xyz"):
        save_image(Image.new("RGB", (2, 2)), tmp_path / "out.xyz")


def test_failed_save_leaves_no_partial_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "out.jpg"
    target.write_bytes(b"previous result")
    with pytest.raises(InvalidInputError, match="RGBA"):
        save_image(Image.new("RGBA", (4, 4)), target)  # JPEG cannot store alpha
    assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jpg"]


def test_io_error_mid_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def write_half_then_fail(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half an image")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Padding and validation helpers


def test_pad_then_crop_round_trips():
    x = torch.rand(2, 3, 13, 18)
    padded, pad = pad_to_multiple(x, 8)
    assert padded.shape == (2, 3, 16, 24) and pad == (3, 6)
    assert torch.equal(padded[..., :13, :18], x)
    assert torch.equal(crop_padding(padded, pad), x)


def test_crop_padding_scales_with_an_upscaled_output():
    padded, pad = pad_to_multiple(torch.rand(1, 3, 13, 18), 8)
    upscaled = _upscale(padded, 4)
    assert crop_padding(upscaled, pad, scale=4).shape == (1, 3, 52, 72)


def test_reflect_padding_mirrors_again_where_the_axis_is_shorter_than_the_padding():
    row = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 3, 2, 5)
    padded, pad = pad_to_multiple(row, 16)
    assert pad == (14, 11)
    assert padded[0, 0, 0].tolist() == [0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]


def test_a_one_pixel_axis_is_replicated():
    x = torch.rand(1, 3, 1, 8)
    padded, _ = pad_to_multiple(x, 8)
    assert torch.equal(padded, x.expand(-1, -1, 8, -1))


def test_min_side_pads_a_small_image_up_to_the_models_minimum():
    padded, pad = pad_to_multiple(torch.rand(1, 3, 20, 70), 8, min_side=64)
    assert tuple(padded.shape[-2:]) == (64, 72) and pad == (44, 2)
    assert crop_padding(padded, pad).shape == (1, 3, 20, 70)


def test_a_processed_size_over_the_pixel_budget_names_both_sizes_and_the_options():
    with pytest.raises(ImageTooLargeError, match=r"1x4000 .* 512x2048000 .*upscale=1.*max_pixels"):
        check_processing_size((1, 4000), (512, 2_048_000), how="upscale=1, process_size=512")
    check_processing_size((64, 64), (64, 64), how="", max_pixels=64 * 64)  # at the budget: fine
    with pytest.raises(ImageTooLargeError):
        check_processing_size((64, 64), (64, 65), how="", max_pixels=64 * 64)


def test_aligned_input_is_returned_unpadded():
    x = torch.rand(1, 3, 16, 8)
    padded, pad = pad_to_multiple(x, 8)
    assert padded is x and pad == (0, 0)


def test_check_image_tensor_returns_the_tensor_or_names_the_problem():
    x = torch.rand(2, 3, 4, 4)
    assert check_image_tensor(x) is x
    with pytest.raises(InvalidInputError, match=r"lq must have shape \(B, 3, H, W\), got \(3, 4, 4\)"):
        check_image_tensor(x[0], name="lq")



# ---------------------------------------------------------------------------------------------
# 16-bit colour files (PIL has no 16-bit colour mode; OpenCV decodes and encodes them)

# Neighbouring values that differ only in the low byte: an 8-bit decode would merge them.
_LOW_BYTE_PAIRS = np.array(
    [[[256, 257, 258], [259, 0, 1]],
     [[65280, 65281, 65535], [65534, 4096, 4097]],
     [[12345, 12346, 30000], [30001, 2, 3]]],
    dtype=np.uint16,
)  # (H, W, C) = (3, 2, 3)


def _rgba16() -> np.ndarray:
    alpha = np.array([[0, 1], [32768, 32769], [65534, 65535]], dtype=np.uint16)
    return np.dstack([_LOW_BYTE_PAIRS, alpha])


def _as_tensor(rgb16: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb16.astype(np.float32)).permute(2, 0, 1)[None] / 65535


def _write_png16(path: Path, rgb16: np.ndarray, exif: bytes | None = None) -> Path:
    """uint16 RGB(A) -> 16-bit PNG written by OpenCV, with an optional eXIf chunk."""
    bgr = cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR if rgb16.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    kinds, chunks = ([cv2.IMAGE_METADATA_EXIF], [np.frombuffer(exif[6:], np.uint8)]) if exif else ([], [])
    ok, data = cv2.imencodeWithMetadata(".png", bgr, kinds, chunks)
    assert ok
    path.write_bytes(data.tobytes())
    return path


def _tiff16(rgb16: np.ndarray, *, orientation: int = 1, claimed_size: tuple[int, int] | None = None) -> bytes:
    """An uncompressed little-endian TIFF of uint16 RGB(A) samples (unassociated alpha), built by hand to
    give it an Orientation tag. ``claimed_size=(H, W)`` makes the header lie about the size (a bomb)."""
    height, width = claimed_size or rgb16.shape[:2]
    samples = rgb16.shape[2]
    pixels = rgb16.astype("<u2").tobytes()
    fields = {256: ("I", [width]), 257: ("I", [height]), 258: ("H", [16] * samples), 259: ("H", [1]),
              262: ("H", [2]), 274: ("H", [orientation]), 277: ("H", [samples]), 278: ("I", [height]),
              279: ("I", [len(pixels)])}
    if samples == 4:
        fields[338] = ("H", [2])
    fields[273] = ("I", [0])
    ifd_end = 8 + 2 + 12 * len(fields) + 4
    bits = struct.pack(f"<{samples}H", *[16] * samples)  # too long for its IFD entry: stored after the IFD
    fields[273] = ("I", [ifd_end + len(bits)])
    entries = b""
    for tag, (code, values) in sorted(fields.items()):
        data = struct.pack(f"<{len(values)}{code}", *values)
        data = struct.pack("<I", ifd_end) if len(data) > 4 else data.ljust(4, b"\0")
        entries += struct.pack("<HHI", tag, 3 if code == "H" else 4, len(values)) + data
    return b"II*\0" + struct.pack("<IH", 8, len(fields)) + entries + struct.pack("<I", 0) + bits + pixels


def test_16_bit_rgb_png_keeps_its_low_byte(tmp_path):
    path = _write_png16(tmp_path / "scan.png", _LOW_BYTE_PAIRS)
    image = load_image(path)
    assert isinstance(image, ImageArray) and image.dtype == np.uint16 and np.array_equal(image, _LOW_BYTE_PAIRS)
    tensor, meta = to_tensor(path)
    assert torch.equal(tensor, _as_tensor(_LOW_BYTE_PAIRS))  # k / 65535 for every stored k
    assert (meta.kind, meta.dtype, meta.channels) == ("numpy", "uint16", 3)
    assert np.array_equal(from_tensor(tensor, meta), _LOW_BYTE_PAIRS)


def test_16_bit_rgba_png_carries_its_alpha_at_16_bits(tmp_path):
    rgba = _rgba16()
    tensor, meta = to_tensor(_write_png16(tmp_path / "scan.png", rgba))
    assert tensor.shape == (1, 3, 3, 2) and torch.equal(tensor, _as_tensor(rgba[:, :, :3]))
    assert torch.equal(meta.alpha, _as_tensor(rgba[:, :, 3:]))
    out = from_tensor(tensor, meta)
    assert out.shape == (3, 2, 4) and out.dtype == np.uint16 and np.array_equal(out, rgba)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_16_bit_png_exif_orientation_is_applied_as_pil_applies_it(tmp_path, orientation):
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[SOFTWARE] = "scanner"
    image = load_image(_write_png16(tmp_path / "rotated.png", _LOW_BYTE_PAIRS, exif=exif.tobytes()))
    high_bytes = Image.fromarray((_LOW_BYTE_PAIRS >> 8).astype(np.uint8))
    high_bytes.info["exif"] = exif.tobytes()
    assert np.array_equal(image >> 8, np.asarray(ImageOps.exif_transpose(high_bytes)))
    kept = Image.Exif()
    kept.load(image.info["exif"])
    assert ORIENTATION not in kept and kept[SOFTWARE] == "scanner"


@pytest.mark.parametrize("channels", [3, 4], ids=["rgb", "rgba"])
def test_16_bit_tiff_keeps_precision_and_its_orientation_tag(tmp_path, channels):
    pixels = _rgba16()[:, :, :channels]
    path = tmp_path / "scan.tif"
    path.write_bytes(_tiff16(pixels, orientation=6))  # rotate 90 degrees clockwise to display
    image = load_image(path)
    assert isinstance(image, ImageArray) and np.array_equal(image, np.rot90(pixels, k=-1))


@pytest.mark.parametrize("kind", ["png", "tiff"])
def test_16_bit_file_above_the_pixel_limit_is_refused_before_decoding(tmp_path, monkeypatch, kind):
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the pixel limit was checked")

    monkeypatch.setattr(cv2, "imdecodeWithMetadata", no_decoding)
    path = tmp_path / f"bomb.{kind}"
    if kind == "png":
        path.write_bytes(_png_header_only(9_000, 9_000, bit_depth=16, colour_type=2))
    else:
        path.write_bytes(_tiff16(_LOW_BYTE_PAIRS, claimed_size=(9_000, 9_000)))
    with pytest.raises(ImageTooLargeError, match=f"bomb.{kind}"):
        load_image(path)


def test_truncated_16_bit_png_is_an_image_decode_error(tmp_path):
    whole = _write_png16(tmp_path / "whole.png", np.tile(_LOW_BYTE_PAIRS, (20, 20, 1))).read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageDecodeError, match="truncated.png"):
        load_image(path)


def test_list_of_16_bit_paths_is_batched_and_each_comes_back_16_bit(tmp_path):
    paths = [_write_png16(tmp_path / "a.png", _LOW_BYTE_PAIRS), _write_png16(tmp_path / "b.png", _LOW_BYTE_PAIRS[::-1])]
    tensor, meta = to_tensor(paths)
    assert tensor.shape == (2, 3, 3, 2) and torch.equal(tensor[1:], _as_tensor(_LOW_BYTE_PAIRS[::-1].copy()))
    outs = from_tensor(tensor, meta)
    assert [o.dtype for o in outs] == [np.uint16, np.uint16] and np.array_equal(outs[0], _LOW_BYTE_PAIRS)


@pytest.mark.parametrize("suffix", [".png", ".tiff"])
@pytest.mark.parametrize("channels", [3, 4], ids=["rgb", "rgba"])
def test_saved_16_bit_output_reads_back_unchanged(tmp_path, suffix, channels):
    pixels = _rgba16()[:, :, :channels]
    tensor, meta = to_tensor(pixels)
    written = save_image(from_tensor(_upscale(tensor, 2), meta), tmp_path / f"out{suffix}")
    expected = np.repeat(np.repeat(pixels, 2, axis=0), 2, axis=1)
    expected[:, :, 3:] = from_tensor(_upscale(tensor, 2), meta)[:, :, 3:]  # alpha is resized bilinearly
    assert np.array_equal(load_image(written), expected)


def test_16_bit_png_output_carries_the_input_exif_and_icc_profile(tmp_path):
    exif = Image.Exif()
    exif[ORIENTATION] = 8
    exif[SOFTWARE] = "scanner"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = _write_png16(tmp_path / "in.png", _LOW_BYTE_PAIRS, exif=exif.tobytes())
    tensor, meta = to_tensor(ImageArray(load_image(source), {**load_image(source).info, "icc_profile": icc}))
    out = from_tensor(tensor, meta)
    assert isinstance(out, ImageArray) and out.info["icc_profile"] == icc
    with Image.open(save_image(out, tmp_path / "out.png")) as reread:
        assert reread.info["icc_profile"] == icc
        assert reread.getexif()[SOFTWARE] == "scanner" and ORIENTATION not in reread.getexif()


def test_16_bit_image_is_reduced_to_8_bits_where_the_format_or_bit_depth_asks(tmp_path):
    rounded = ((_LOW_BYTE_PAIRS.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(k / 257)
    with Image.open(save_image(_LOW_BYTE_PAIRS, tmp_path / "out.png", bit_depth=8)) as reread:
        assert reread.mode == "RGB" and np.array_equal(np.asarray(reread), rounded)
    with Image.open(save_image(_LOW_BYTE_PAIRS, tmp_path / "out.jpg")) as reread:
        assert reread.format == "JPEG" and reread.mode == "RGB"
    gray = Image.fromarray(_LOW_BYTE_PAIRS[:, :, 0])
    with Image.open(save_image(gray, tmp_path / "gray.bmp")) as reread:
        assert reread.mode == "L" and np.array_equal(np.asarray(reread), rounded[:, :, 0])


@pytest.mark.parametrize("image, target, message", [
    (_LOW_BYTE_PAIRS, "out.jpg", "JPEG stores 8 bits"),
    (_rgb(), "out.png", "holds 8-bit data"),
], ids=["8-bit-format", "8-bit-data"])
def test_bit_depth_16_refuses_to_lose_precision(tmp_path, image, target, message):
    with pytest.raises(InvalidInputError, match=message):
        save_image(image, tmp_path / target, bit_depth=16)
    assert list(tmp_path.iterdir()) == []


def test_failed_16_bit_save_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"previous result")
    with pytest.raises(InvalidInputError, match="icc_profile=None"):
        save_image(ImageArray(_LOW_BYTE_PAIRS, {"icc_profile": b"not a profile"}), target)
    assert target.read_bytes() == b"previous result" and sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_save_rejects_a_float_array_with_the_conversion_to_use(tmp_path):
    with pytest.raises(InvalidInputError, match=r"float32 .*astype\(np.uint8\)"):
        save_image(np.zeros((2, 2, 3), dtype=np.float32), tmp_path / "out.png")


def test_a_folder_without_images_is_an_error_not_an_empty_run(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(InvalidInputError, match="No image found in the folder"):
        expand_image_paths([str(tmp_path)])
