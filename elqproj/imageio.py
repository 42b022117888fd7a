"""Images in and out: files, PIL images, numpy arrays and torch tensors to one tensor form and back.

Every model in elqproj consumes ``float32 (B, 3, H, W)`` tensors with values in ``[0, 1]``
(:func:`to_tensor`); the caller gets the result back in the form it passed in (:func:`from_tensor`),
guided by the :class:`ImageMeta` that :func:`to_tensor` records: PIL mode, numpy dtype and layout,
torch batching/dtype/device, the alpha channel (carried through and resized to the output) and the
EXIF block (orientation already applied and reset, to write back on save).

PIL has no 16-bit colour mode, so 16-bit RGB(A) PNG and TIFF files are decoded with OpenCV into an
:class:`ImageArray` (a uint16 numpy array with a PIL-style ``info`` dict) and written back at 16
bits by :func:`save_image`.

Conventions
-----------
* Float images are in ``[0, 1]``; integer images are scaled by their full range (255 for 8-bit,
  65535 for 16-bit), so 16-bit inputs (gray or colour, files or arrays) keep their precision.
* Float to integer conversion rounds to nearest and clamps (``round(clamp(x, 0, 1) * 255)``). The
  official OSEDiff/S3Diff scripts truncate instead (torchvision ``ToPILImage``); adapters that must
  reproduce them bit for bit convert themselves before calling :func:`from_tensor`.
* Grayscale inputs come back grayscale: the three output channels are mixed with the ITU-R 601 luma
  weights that PIL's ``convert("L")`` uses.
* Palette and CMYK/YCbCr/LAB/HSV inputs are converted to RGB(A) on the way in and come back as
  RGB(A): a restored image has far more colours than a palette, and PIL's CMYK conversion is not
  colour-managed.
"""

from __future__ import annotations

import glob
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ConfigError, ImageDecodeError, ImageTooLargeError, InvalidInputError

__all__ = [
    "MAX_PIXELS_DEFAULT",
    "RANGE_TOLERANCE",
    "ImageMeta",
    "ImageArray",
    "resolve_max_pixels",
    "load_image",
    "save_image",
    "to_tensor",
    "from_tensor",
    "pad_to_multiple",
    "crop_padding",
    "check_image_tensor",
]

#: Largest accepted image, in pixels (8192 x 8192): a guard against decompression bombs and against
#: arrays that would exhaust memory once converted to float. Override per call (``max_pixels=``) or
#: for the process with the environment variable ``ELQPROJ_MAX_PIXELS``.
MAX_PIXELS_DEFAULT: int = 8192 * 8192

#: Values this far outside [0, 1] are still accepted: float images that went through arithmetic
#: (resizing, colour conversion) overshoot by a few ulps.
RANGE_TOLERANCE = 1e-6

_LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's convert("L")

_SAVE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}
# PIL's JPEG/WebP default quality (75) visibly blurs restored detail.
_SAVE_DEFAULTS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}

_ACCEPTED_TYPES = (
    "a PIL.Image.Image, an image file path (str or os.PathLike), a numpy array (H, W) or (H, W, C) "
    "with C in {1, 3, 4} (uint8, uint16 or float in [0, 1]), a float torch.Tensor (3, H, W), "
    "(B, 3, H, W), (1, H, W) or (B, 1, H, W) in [0, 1], or a list of PIL images / paths of one size"
)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
#: Formats that store 16 bits per channel; JPEG, WebP and BMP store 8.
_SIXTEEN_BIT_FORMATS = ("PNG", "TIFF")
_EXIF_ORIENTATION = 0x0112
_PNG_COLOUR_TYPES_RGB = (2, 6)  # IHDR colour types: 2 = RGB, 6 = RGBA
_TIFF_BITS_PER_SAMPLE, _TIFF_PHOTOMETRIC, _TIFF_EXTRA_SAMPLES, _TIFF_SAMPLE_FORMAT = 258, 262, 338, 339
_GRAY_MODES = ("1", "L", "LA", "La", "I", "F", *_SIXTEEN_BIT_MODES)
_NATIVE_MODES = ("L", "LA", "RGB", "RGBA", "I", "F", *_SIXTEEN_BIT_MODES)


@dataclass(frozen=True, eq=False)
class ImageMeta:
    """Everything :func:`from_tensor` needs to give a result back in the caller's form.

    Attributes:
        kind: ``"pil"`` (PIL images and file paths), ``"numpy"`` (arrays, and 16-bit colour files,
            read as :class:`ImageArray`) or ``"torch"``.
        batched: True for ``(B, C, H, W)`` tensors and for lists; False for a single image.
        size: ``(H, W)`` of the input.
        mode: PIL mode of a PIL input (``"RGB"``, ``"L"``, ``"RGBA"``, ``"P"``, ``"CMYK"``,
            ``"I;16"``, ...); for a list, the mode shared by all items or None.
        alpha: ``(B, 1, H, W)`` float32 alpha in [0, 1] on the CPU, or None when the input has no
            alpha. For a list where only some items have alpha, the others are opaque (1.0).
        dtype: numpy dtype name for numpy input (``"uint8"``, ``"uint16"``, ``"float32"``, ...),
            torch dtype name for torch input (``"float32"``, ``"bfloat16"``, ...), else None.
        exif: EXIF block of a PIL input or an :class:`ImageArray` with the orientation tag removed
            (the pixels are already upright), or None.
        icc_profile: ICC profile of a PIL input or an :class:`ImageArray`, or None.
        channels: channel count of the input (1 for grayscale, 2 for gray + alpha, 3, or 4).
        layout: array layout of numpy/torch input (``"HW"``, ``"HWC"``, ``"CHW"``, ``"BCHW"``),
            None for PIL.
        device: torch device of a torch input (as a string), else None.
        batch_size: number of images (B).
        items: for a list input, one unbatched meta per item; else None.
    """

    kind: Literal["pil", "numpy", "torch"]
    batched: bool
    size: tuple[int, int]
    mode: str | None = None
    alpha: torch.Tensor | None = None
    dtype: str | None = None
    exif: bytes | None = None
    icc_profile: bytes | None = None
    channels: int = 3
    layout: Literal["HW", "HWC", "CHW", "BCHW"] | None = None
    device: str | None = None
    batch_size: int = 1
    items: tuple[ImageMeta, ...] | None = None


class ImageArray(np.ndarray):
    """A numpy image with a PIL-style ``info`` dict: how elqproj holds 16-bit colour, which no PIL mode does.

    :func:`load_image` returns one for a 16-bit RGB(A) PNG or TIFF: dtype uint16, shape ``(H, W, 3)``
    or ``(H, W, 4)`` in RGB(A) channel order, upright, with ``info["exif"]`` (orientation tag removed)
    and ``info["icc_profile"]`` when the file has them. In every other respect it is a numpy array
    (views, copies and arithmetic results keep ``info``). :func:`to_tensor` records ``info`` in
    :class:`ImageMeta`, :func:`from_tensor` gives the result back as an ``ImageArray`` with the same
    ``info``, and :func:`save_image` writes ``info`` into the file, as for PIL images.
    """

    info: dict[str, Any]

    def __new__(cls, array: np.ndarray, info: dict[str, Any] | None = None) -> ImageArray:
        image = np.asarray(array).view(cls)
        image.info = dict(info or {})
        return image

    def __array_finalize__(self, source: Any) -> None:
        self.info = dict(getattr(source, "info", None) or {})


# ----------------------------------------------------------------------------------------------
# Files


def resolve_max_pixels(max_pixels: int | None = None) -> int:
    """The pixel limit in force: ``max_pixels`` if given, else ``$ELQPROJ_MAX_PIXELS``, else the default."""
    if max_pixels is None:
        env = os.environ.get("ELQPROJ_MAX_PIXELS")
        if env is None:
            return MAX_PIXELS_DEFAULT
        try:
            max_pixels = int(env)
        except ValueError:
            raise ConfigError(
                f"ELQPROJ_MAX_PIXELS={env!r} is not an integer; set it to a pixel count such as 67108864"
            ) from None
    if max_pixels <= 0:
        raise ConfigError(f"max_pixels must be a positive pixel count, got {max_pixels}")
    return max_pixels


def _check_pixel_count(height: int, width: int, max_pixels: int | None, what: str) -> None:
    if height <= 0 or width <= 0:
        raise InvalidInputError(f"{what} has size {height}x{width} (H x W); an image needs at least one pixel")
    limit = resolve_max_pixels(max_pixels)
    if height * width > limit:
        raise ImageTooLargeError(
            f"{what} is {height}x{width} (H x W) = {height * width:,} pixels, above the limit of {limit:,} "
            "pixels; downscale it, or raise the limit with max_pixels= or the ELQPROJ_MAX_PIXELS environment "
            "variable if the image is trusted"
        )


#: File suffixes treated as images when expanding folders and globs.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
def expand_image_paths(items: Sequence[str | os.PathLike]) -> list[Path]:
    """Files, globs and folders (their images, sorted) -> list of image files, in order, deduplicated."""
    found: list[Path] = []
    for item in items:
        path = Path(item)
        item = os.fspath(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            files = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise InvalidInputError(f"No image found for {item!r}: not a file, folder or matching glob.")
            found += files
    unique: dict[Path, None] = dict.fromkeys(found)
    return list(unique)


def load_image(path: str | os.PathLike, *, max_pixels: int | None = None) -> Image.Image | ImageArray:
    """Read an image file, fully decoded and upright (EXIF orientation applied).

    The pixel count is checked from the header before any pixel is decoded. Most files come back as
    a PIL image in the mode they are stored in (``"RGB"``, ``"L"``, ``"I;16"``, ``"P"``, ...), whose
    ``info["exif"]`` (if any) no longer carries an orientation tag.

    16-bit colour files, which PIL would cut to 8 bits, come back as an :class:`ImageArray` (uint16,
    ``(H, W, 3)`` or ``(H, W, 4)``, RGB(A) order) decoded with OpenCV: PNGs of bit depth 16 and
    colour type RGB or RGBA, and RGB TIFFs with three unsigned 16-bit samples per pixel, or four
    where the fourth is unassociated alpha (or untagged, as OpenCV writes it). Orientation: a PNG's
    EXIF orientation (``eXIf`` chunk) is applied here and removed from ``info["exif"]``; a TIFF's
    Orientation tag (274) is applied by OpenCV's TIFF decoder; an orientation given only in XMP is
    not read for these files. ``info["icc_profile"]`` holds the file's ICC profile. Other 16-bit
    colour layouts (premultiplied alpha, signed samples, gray + alpha) are read by PIL at 8 bits.

    Raises:
        InvalidInputError: the path does not exist or is a directory.
        ImageDecodeError: the file is empty, truncated, corrupt, or not an image.
        ImageTooLargeError: the image has more than ``max_pixels`` pixels (or more than PIL's own
            decompression-bomb limit ``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"image file not found: {str(path)!r}; check the path")
    if path.is_dir():
        raise InvalidInputError(f"{str(path)!r} is a directory, not an image file")
    try:
        with Image.open(path) as image:
            width, height = image.size
            _check_pixel_count(height, width, max_pixels, f"image {str(path)!r}")
            if _is_16_bit_colour(image, path):
                return _decode_16_bit_colour(path, icc_profile=image.info.get("icc_profile"))
            image.load()
            return ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(
            f"image {str(path)!r} exceeds PIL's decompression-bomb limit ({err}); if the file is trusted, "
            "raise PIL.Image.MAX_IMAGE_PIXELS and max_pixels="
        ) from None
    except (ImageTooLargeError, PermissionError):
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        size = path.stat().st_size
        what = "is empty" if size == 0 else f"could not be decoded ({type(err).__name__}: {err})"
        raise ImageDecodeError(
            f"image file {str(path)!r} ({size} bytes) {what}; it is truncated, corrupt, or not an image"
        ) from None


def _is_16_bit_colour(header: Image.Image, path: Path) -> bool:
    """True for the 16-bit colour layouts OpenCV decodes exactly; read from the header alone."""
    if header.format == "PNG":
        with open(path, "rb") as handle:
            signature_and_ihdr = handle.read(26)
        # The IHDR chunk comes first in every PNG: bit depth and colour type are bytes 24 and 25.
        return signature_and_ihdr[24] == 16 and signature_and_ihdr[25] in _PNG_COLOUR_TYPES_RGB
    if header.format == "TIFF":
        tags = header.tag_v2
        bits = _as_tuple(tags.get(_TIFF_BITS_PER_SAMPLE, (1,)))
        unsigned = all(kind == 1 for kind in _as_tuple(tags.get(_TIFF_SAMPLE_FORMAT, (1,))))
        # A fourth sample is alpha when tagged unassociated (2) or, as OpenCV writes it, not tagged
        # (PIL reads both as RGBA). Associated (premultiplied) alpha would come out of OpenCV still
        # multiplied, so those files stay with PIL, which divides it out.
        extra = _as_tuple(tags.get(_TIFF_EXTRA_SAMPLES, ()))
        layout = (len(bits), extra) in ((3, ()), (4, ()), (4, (2,)))
        return tags.get(_TIFF_PHOTOMETRIC) == 2 and layout and unsigned and set(bits) == {16}
    return False


def _as_tuple(value: Any) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _decode_16_bit_colour(path: Path, *, icc_profile: bytes | None) -> ImageArray:
    """A 16-bit RGB(A) PNG or TIFF -> upright uint16 ImageArray (H, W, 3 | 4) in RGB(A) order."""
    import cv2  # on first use: only these files need OpenCV, which takes a quarter second to import

    try:
        # Decoding the bytes rather than the path: cv2.imread cannot open non-ASCII paths on Windows.
        # flags by name: OpenCV 4.13 and 5 place it differently among the positional arguments.
        pixels, kinds, chunks = cv2.imdecodeWithMetadata(np.fromfile(path, dtype=np.uint8), flags=cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise ValueError(f"OpenCV: {err}") from None
    if pixels is None or pixels.dtype != np.uint16 or pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        found = "nothing" if pixels is None else f"{pixels.dtype} pixels of shape {pixels.shape}"
        raise ValueError(f"OpenCV decoded {found}, not 16-bit colour")
    pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB if pixels.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    info: dict[str, Any] = {"icc_profile": icc_profile} if icc_profile else {}
    # OpenCV gives a PNG's eXIf chunk (IMREAD_UNCHANGED leaves its orientation to us) but no EXIF for
    # TIFF, whose Orientation tag its TIFF decoder has already applied.
    exif_block = next((bytes(chunk) for kind, chunk in zip(kinds, chunks) if kind == cv2.IMAGE_METADATA_EXIF), None)
    if exif_block:
        exif = Image.Exif()
        exif.load(exif_block)
        orientation = exif.get(_EXIF_ORIENTATION, 1)
        if _EXIF_ORIENTATION in exif:  # re-serialised only then, as ImageOps.exif_transpose does
            del exif[_EXIF_ORIENTATION]
            info["exif"] = exif.tobytes()
        else:
            info["exif"] = b"Exif\x00\x00" + exif_block  # the form PIL keeps in info["exif"]
        pixels = _exif_upright(pixels, orientation)
    return ImageArray(pixels, info)


def _exif_upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W, C) pixels as stored -> as displayed for EXIF orientation 1..8, as ImageOps.exif_transpose.

    Written by hand: PIL's table applies to PIL images only, and PIL has no 16-bit colour mode.
    """
    if orientation in (5, 6, 7, 8):  # stored rows are displayed columns
        pixels = pixels.swapaxes(0, 1)
    if orientation in (3, 4, 7, 8):
        pixels = pixels[::-1]
    if orientation in (2, 3, 6, 7):
        pixels = pixels[:, ::-1]
    return np.ascontiguousarray(pixels)


def save_image(
    image: Image.Image | np.ndarray,
    path: str | os.PathLike,
    *,
    exif: bytes | None = None,
    bit_depth: Literal[8, 16] | None = None,
    **options: Any,
) -> Path:
    """Write ``image`` to ``path`` atomically; the format comes from the suffix.

    The image is written to a temporary file in the target folder and moved into place with
    ``os.replace``, so ``path`` either keeps its previous content or holds the complete new file,
    never a partial one. Parent folders are created.

    16-bit data (uint16 arrays such as an :class:`ImageArray`, and ``"I;16"`` PIL images) is written
    with 16 bits per channel to PNG and TIFF (colour through OpenCV, gray through PIL); JPEG, WebP and
    BMP store 8 bits per channel, so for them it is reduced to 8 bits (rounded to nearest, as
    :func:`from_tensor` rounds). OpenCV's TIFF encoder stores no EXIF or ICC profile: a 16-bit
    colour TIFF is written without them, and an RGBA one without the ExtraSamples tag (PIL, OpenCV and
    :func:`load_image` read its fourth channel as alpha all the same); write PNG to keep them.

    Args:
        image: a PIL image, or a numpy array ``(H, W)`` or ``(H, W, C)`` with C in {1, 3, 4} (RGB(A)
            order), dtype uint8 or uint16, as :func:`from_tensor` returns for uint8/uint16 input.
        path: target file; suffix ``.png``, ``.jpg``/``.jpeg``, ``.webp``, ``.tif``/``.tiff`` or ``.bmp``.
        exif: EXIF block to embed (e.g. ``ImageMeta.exif``); defaults to ``image.info["exif"]``.
            Ignored by BMP.
        bit_depth: None (default) keeps 16-bit data at 16 bits where the format stores them; 8
            writes 8 bits per channel; 16 insists on 16 bits and raises where that is impossible.
        **options: passed to ``PIL.Image.Image.save`` (JPEG and WebP default to ``quality=95``).
            A 16-bit colour image is encoded by OpenCV, which takes only ``icc_profile``.

    Returns:
        The absolute path written.

    Raises:
        InvalidInputError: unknown suffix, an array that is not an 8/16-bit image, a mode the format
            cannot store (e.g. RGBA as JPEG), ``bit_depth=16`` for 8-bit data or an 8-bit format,
            or PIL save options for a 16-bit colour image.
    """
    if not isinstance(image, (Image.Image, np.ndarray)):
        raise InvalidInputError(f"save_image expects a PIL.Image.Image or a numpy array, got {type(image).__name__}; "
                                "convert tensors with from_tensor first")
    if bit_depth not in (None, 8, 16):
        raise InvalidInputError(f"bit_depth must be 8, 16 or None (the image's own), got {bit_depth!r}")
    path = Path(path).absolute()
    file_format = _SAVE_FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise InvalidInputError(
            f"cannot tell the image format from {path.name!r}; use one of the suffixes {sorted(_SAVE_FORMATS)}"
        )
    info = getattr(image, "info", None) or {}
    exif = exif if exif is not None else info.get("exif")
    if isinstance(image, np.ndarray):
        _check_savable_array(image)
    sixteen_bit = image.dtype == np.uint16 if isinstance(image, np.ndarray) else image.mode in _SIXTEEN_BIT_MODES
    if bit_depth == 16 and not (sixteen_bit and file_format in _SIXTEEN_BIT_FORMATS):
        what = f"{file_format} stores 8 bits per channel" if sixteen_bit else "the image holds 8-bit data"
        raise InvalidInputError(
            f"bit_depth=16 cannot be written to {str(path)!r}: {what}; save 16-bit data (a uint16 array, e.g. "
            "from_tensor's result for a 16-bit input) as .png or .tiff"
        )
    if sixteen_bit and (bit_depth == 8 or file_format not in _SIXTEEN_BIT_FORMATS):
        image = _reduce_to_8_bit(np.asarray(image))
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] in (3, 4) and image.dtype == np.uint16:
        data = _encode_16_bit_colour(image, file_format, exif=exif, options=options,
                                     icc_profile=options.get("icc_profile", info.get("icc_profile")))
        _write_atomically(path, lambda handle: handle.write(data))
        return path
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)

    params = {**_SAVE_DEFAULTS.get(file_format, {}), **options}
    if exif:
        params["exif"] = exif
    if info.get("icc_profile"):
        params.setdefault("icc_profile", info["icc_profile"])
    try:
        _write_atomically(path, lambda handle: image.save(handle, format=file_format, **params))
    except (KeyError, ValueError, OSError) as err:
        # PIL reports a mode the format cannot store as an OSError without errno (or a KeyError);
        # genuine I/O failures (disk full, permissions) carry an errno and propagate unchanged.
        if isinstance(err, OSError) and err.errno is not None:
            raise
        raise InvalidInputError(
            f"cannot write a mode-{image.mode} image as {file_format} to {str(path)!r} "
            f"({type(err).__name__}: {err}); choose a format that stores this mode (.png, .tiff) "
            "or convert the image first"
        ) from err
    return path


def _check_savable_array(array: np.ndarray) -> None:
    channels = array.shape[2] if array.ndim == 3 else 1
    if array.dtype not in (np.uint8, np.uint16) or array.ndim not in (2, 3) or channels not in (1, 3, 4):
        raise InvalidInputError(
            f"save_image takes numpy images (H, W) or (H, W, C) with C in {{1, 3, 4}} and dtype uint8 or uint16, "
            f"got {array.dtype} of shape {array.shape}; convert float data in [0, 1] with "
            "(x * 255).round().astype(np.uint8), or use from_tensor, which returns the input's dtype"
        )


def _reduce_to_8_bit(values: np.ndarray) -> np.ndarray:
    """uint16 -> uint8, rounded to nearest: round(v / 257), since 65535 = 257 * 255 (never a tie)."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _encode_16_bit_colour(
    rgb: np.ndarray, file_format: str, *, exif: bytes | None, icc_profile: bytes | None, options: dict[str, Any]
) -> bytes:
    """(H, W, 3 | 4) uint16 RGB(A) -> PNG or TIFF file bytes, with EXIF and ICC profile in PNG."""
    import cv2  # on first use, as in _decode_16_bit_colour

    unsupported = sorted(set(options) - {"icc_profile"})
    if unsupported:
        raise InvalidInputError(
            f"save options {unsupported} are PIL options, but 16-bit colour images are encoded by OpenCV, "
            "which takes only icc_profile; drop them, or pass bit_depth=8 to write through PIL"
        )
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR if rgb.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    kinds, chunks = [], []
    if file_format == "PNG":
        if exif:
            kinds.append(cv2.IMAGE_METADATA_EXIF)  # an eXIf chunk starts at the TIFF header: libpng rejects the prefix
            chunks.append(np.frombuffer(exif.removeprefix(b"Exif\x00\x00"), dtype=np.uint8))
        if icc_profile:
            kinds.append(cv2.IMAGE_METADATA_ICCP)
            chunks.append(np.frombuffer(icc_profile, dtype=np.uint8))
    failure = f"OpenCV could not encode a 16-bit {rgb.shape[2]}-channel image as {file_format}"
    with_icc = file_format == "PNG" and icc_profile
    hint = f"; if its ICC profile ({len(icc_profile)} bytes) is invalid, pass icc_profile=None" if with_icc else ""
    try:
        encoded, buffer = cv2.imencodeWithMetadata(".png" if file_format == "PNG" else ".tiff", bgr, kinds, chunks)
    except cv2.error as err:
        raise InvalidInputError(f"{failure} ({err}){hint}") from None
    if not encoded:
        raise InvalidInputError(failure + hint)
    return buffer.tobytes()


def _write_atomically(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Run ``write`` on a hidden temporary file next to ``path``, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A hidden name in the same folder, so os.replace is an atomic rename on the same file system;
    # open(..., "xb") creates it with the usual umask permissions (mkstemp would force 0600).
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------
# Validation


def _check_values(x: torch.Tensor, name: str) -> bool:
    """Finite and within [0, 1] up to RANGE_TOLERANCE (one pass over the data); True when some value
    lies in the tolerance band outside [0, 1], i.e. the caller must clamp."""
    lo, hi = (v.item() for v in torch.aminmax(x.detach()))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        bad = (~torch.isfinite(x.detach())).sum().item()
        raise InvalidInputError(
            f"{name} contains {bad} NaN or infinite values; fix the producer of the tensor "
            "(e.g. an fp16 overflow) before passing it in"
        )
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise InvalidInputError(
            f"{name} has values in [{lo:.4g}, {hi:.4g}] but images must be in [0, 1]; scale to [0, 1] "
            "(e.g. x / 255 for 8-bit data, (x + 1) / 2 for [-1, 1] data)"
        )
    return lo < 0 or hi > 1


def _require_floating_point(x: torch.Tensor, name: str) -> None:
    if not x.is_floating_point():
        raise InvalidInputError(
            f"{name} has dtype {x.dtype}; images must be floating point in [0, 1]: convert integer data with "
            "x.float() / 255 (8-bit) or x.float() / 65535 (16-bit)"
        )


def check_image_tensor(x: Any, *, name: str = "image") -> torch.Tensor:
    """Validate a ``(B, 3, H, W)`` floating-point image tensor with values in [0, 1] and return it.

    The tensor is returned unchanged (same object, device, dtype and autograd graph).

    Raises:
        InvalidInputError: not a tensor, not floating point, wrong shape, empty, NaN/inf, or values
            outside [0, 1] (beyond ``RANGE_TOLERANCE``).
    """
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor of shape (B, 3, H, W), got {type(x).__name__}")
    _require_floating_point(x, name)
    if x.ndim != 4 or x.shape[1] != 3:
        raise InvalidInputError(f"{name} must have shape (B, 3, H, W), got {tuple(x.shape)}")
    if x.numel() == 0:
        raise InvalidInputError(f"{name} is empty (shape {tuple(x.shape)}); an image needs at least one pixel")
    _check_values(x, name)
    return x


# ----------------------------------------------------------------------------------------------
# Into tensors


def _pil_to_array(image: Image.Image) -> tuple[np.ndarray, float]:
    """PIL image -> (H, W, C) array in a mode numpy can hold exactly, and the value that maps to 1.0."""
    if image.mode not in _NATIVE_MODES:
        if image.mode == "1":
            image = image.convert("L")
        elif image.mode == "La":
            image = image.convert("LA")
        elif image.mode in ("RGBa", "PA") or (image.mode == "P" and _palette_has_alpha(image)):
            image = image.convert("RGBA")
        else:  # P without transparency, CMYK, YCbCr, LAB, HSV, RGBX
            image = image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if image.mode in _SIXTEEN_BIT_MODES:
        return array, 65535.0
    if image.mode == "I":  # 32-bit integer mode: 16-bit data as read by some plugins
        if array.min() < 0 or array.max() > 65535:
            raise InvalidInputError(
                f"mode-I image has values in [{array.min()}, {array.max()}]; only 16-bit data (0..65535) "
                "is supported, rescale it"
            )
        return array, 65535.0
    if image.mode == "F":
        return array, 1.0
    return array, 255.0


def _palette_has_alpha(image: Image.Image) -> bool:
    return "transparency" in image.info or (image.palette is not None and image.palette.mode == "RGBA")


def _array_to_tensor(array: np.ndarray, scale: float, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(H, W, C) array, C in {1, 2, 3, 4} -> ((1, 3, H, W) float32 [0,1], (1, 1, H, W) alpha or None)."""
    values = torch.from_numpy(np.array(array, dtype=np.float32, copy=True)).permute(2, 0, 1)[None]
    if scale != 1.0:
        values = values / scale
    elif _check_values(values, name):
        values.clamp_(0, 1)
    channels = values.shape[1]
    color = values[:, :3] if channels >= 3 else values[:, :1].expand(-1, 3, -1, -1)
    alpha = values[:, channels - 1 :] if channels in (2, 4) else None
    return color.contiguous(), alpha


def _from_pil(image: Image.Image, max_pixels: int | None, name: str) -> tuple[torch.Tensor, ImageMeta]:
    width, height = image.size
    _check_pixel_count(height, width, max_pixels, name)
    upright = ImageOps.exif_transpose(image)
    array, scale = _pil_to_array(upright)
    tensor, alpha = _array_to_tensor(array, scale, name)
    meta = ImageMeta(
        kind="pil",
        batched=False,
        size=tuple(tensor.shape[-2:]),
        mode=image.mode,
        alpha=alpha,
        exif=upright.info.get("exif") or None,
        icc_profile=upright.info.get("icc_profile") or None,
        channels=len(image.getbands()),
    )
    return tensor, meta


def _from_numpy(array: np.ndarray, max_pixels: int | None) -> tuple[torch.Tensor, ImageMeta]:
    if array.ndim not in (2, 3):
        raise InvalidInputError(
            f"numpy image must be (H, W) or (H, W, C), got shape {array.shape}; pass a batch as a list or "
            "as a (B, 3, H, W) torch tensor"
        )
    layout = "HW" if array.ndim == 2 else "HWC"
    hwc = array[:, :, None] if array.ndim == 2 else array
    channels = hwc.shape[2]
    if channels not in (1, 3, 4):
        hint = " (it looks channels-first: transpose it to (H, W, C))" if array.shape[0] in (1, 3, 4) else ""
        raise InvalidInputError(f"numpy image of shape {array.shape} has {channels} channels, expected 1, 3 or 4{hint}")
    if array.dtype == np.uint8:
        scale = 255.0
    elif array.dtype == np.uint16:
        scale = 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        scale = 1.0
    else:
        raise InvalidInputError(
            f"numpy image has dtype {array.dtype}; supported are uint8, uint16 and float (values in [0, 1])"
        )
    _check_pixel_count(hwc.shape[0], hwc.shape[1], max_pixels, f"numpy image of shape {array.shape}")
    tensor, alpha = _array_to_tensor(hwc, scale, f"numpy image ({array.dtype})")
    info = array.info if isinstance(array, ImageArray) else {}
    meta = ImageMeta(
        kind="numpy",
        batched=False,
        size=(hwc.shape[0], hwc.shape[1]),
        alpha=alpha,
        dtype=array.dtype.name,
        exif=info.get("exif") or None,
        icc_profile=info.get("icc_profile") or None,
        channels=channels,
        layout=layout,
    )
    return tensor, meta


def _from_file(path: str | os.PathLike, max_pixels: int | None) -> tuple[torch.Tensor, ImageMeta]:
    image = load_image(path, max_pixels=max_pixels)
    if isinstance(image, ImageArray):  # 16-bit colour
        return _from_numpy(image, max_pixels)
    return _from_pil(image, max_pixels, f"image {str(path)!r}")


def _from_torch(x: torch.Tensor, max_pixels: int | None) -> tuple[torch.Tensor, ImageMeta]:
    _require_floating_point(x, "torch image")
    if x.ndim not in (3, 4) or x.shape[-3] not in (1, 3):
        raise InvalidInputError(
            f"torch image must have shape (3, H, W), (B, 3, H, W), (1, H, W) or (B, 1, H, W), got {tuple(x.shape)}"
        )
    batched = x.ndim == 4
    channels = x.shape[-3]
    _check_pixel_count(x.shape[-2], x.shape[-1], max_pixels, f"torch image of shape {tuple(x.shape)}")
    images = (x if batched else x[None]).to(torch.float32)
    if channels == 1:
        images = images.repeat(1, 3, 1, 1)
    check_image_tensor(images, name="torch image")
    lo, hi = torch.aminmax(images)
    if lo < 0 or hi > 1:  # a few ulps outside [0, 1], within RANGE_TOLERANCE
        images = images.clamp(0, 1)
    meta = ImageMeta(
        kind="torch",
        batched=batched,
        size=(x.shape[-2], x.shape[-1]),
        dtype=str(x.dtype).removeprefix("torch."),
        channels=channels,
        layout="BCHW" if batched else "CHW",
        device=str(x.device),
        batch_size=images.shape[0],
    )
    return images, meta


def _from_list(items: Sequence[Any], max_pixels: int | None) -> tuple[torch.Tensor, ImageMeta]:
    if len(items) == 0:
        raise InvalidInputError("the list of images is empty; pass at least one image")
    tensors, metas = [], []
    for index, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            tensor, meta = _from_file(item, max_pixels)
        elif isinstance(item, Image.Image):
            tensor, meta = _from_pil(item, max_pixels, f"list item {index}")
        else:
            raise InvalidInputError(
                f"list item {index} is a {type(item).__name__}; a list may hold PIL images or file paths only "
                "(stack tensors into one (B, 3, H, W) tensor instead)"
            )
        tensors.append(tensor)
        metas.append(meta)
    sizes = {meta.size for meta in metas}
    if len(sizes) > 1:
        raise InvalidInputError(
            f"images in one list must share one size, got (H, W) sizes {sorted(sizes)}; resize them or "
            "process them one at a time"
        )
    modes = {meta.mode for meta in metas}
    alpha = None
    if any(meta.alpha is not None for meta in metas):
        alpha = torch.cat([m.alpha if m.alpha is not None else torch.ones_like(t[:, :1]) for m, t in zip(metas, tensors)])
    meta = ImageMeta(
        kind="pil",
        batched=True,
        size=metas[0].size,
        mode=modes.pop() if len(modes) == 1 else None,
        alpha=alpha,
        batch_size=len(metas),
        items=tuple(metas),
    )
    return torch.cat(tensors), meta


def to_tensor(images: Any, *, max_pixels: int | None = None) -> tuple[torch.Tensor, ImageMeta]:
    """Convert any supported image input to a float32 ``(B, 3, H, W)`` tensor in [0, 1].

    Accepts a PIL image; an image file path (str or os.PathLike, read with :func:`load_image`: a
    16-bit colour file is an :class:`ImageArray` from then on); a numpy array ``(H, W)`` or
    ``(H, W, C)`` with C in {1, 3, 4}, dtype uint8 (/255), uint16 (/65535) or float in [0, 1]; a
    float torch tensor ``(3, H, W)``, ``(B, 3, H, W)``, ``(1, H, W)`` or ``(B, 1, H, W)`` in [0, 1];
    or a list of PIL images / paths of one size.

    Grayscale becomes three equal channels; an alpha channel (RGBA, LA, palette transparency,
    4-channel arrays) is split off into ``meta.alpha``; palette and CMYK/YCbCr/LAB/HSV become RGB(A);
    16-bit data keeps its precision; PIL inputs are turned upright by their EXIF orientation.
    The result lives on the CPU, except for torch input, which keeps its device (and autograd graph).

    Returns:
        ``(images, meta)``: images ``float32 (B, 3, H, W)`` in [0, 1], and the :class:`ImageMeta`
        that :func:`from_tensor` needs to return a result in the input's form.

    Raises:
        InvalidInputError: unsupported type, empty/0-size image, wrong channel count, integer torch
            tensor, NaN/inf, float values outside [0, 1], list of mixed sizes.
        ImageDecodeError: a path that is not a readable image.
        ImageTooLargeError: an image with more than ``max_pixels`` pixels.
    """
    if isinstance(images, Image.Image):
        return _from_pil(images, max_pixels, "PIL image")
    if isinstance(images, (str, os.PathLike)):
        return _from_file(images, max_pixels)
    if isinstance(images, np.ndarray):
        return _from_numpy(images, max_pixels)
    if isinstance(images, torch.Tensor):
        return _from_torch(images, max_pixels)
    if isinstance(images, (list, tuple)):
        return _from_list(images, max_pixels)
    raise InvalidInputError(f"unsupported image type {type(images).__module__}.{type(images).__name__}; expected {_ACCEPTED_TYPES}")


# ----------------------------------------------------------------------------------------------
# Back to the caller's form


def _luma(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) with PIL's convert("L") weights."""
    weights = images.new_tensor(_LUMA_WEIGHTS).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def _resized_alpha(alpha: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(alpha.shape[-2:]) == size:
        return alpha
    return F.interpolate(alpha, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def _quantize(values: torch.Tensor, maximum: int, dtype: np.dtype) -> np.ndarray:
    """Float [0, 1] -> integers 0..maximum, round to nearest (ties to even), clamped."""
    return (values.clamp(0, 1) * maximum).round().numpy().astype(dtype)


def _to_pil(image: torch.Tensor, meta: ImageMeta) -> Image.Image:
    """(1, 3, H', W') float in [0, 1] -> PIL image in the output mode for ``meta.mode``."""
    gray = meta.mode in _GRAY_MODES
    plane = _luma(image) if gray else image
    size = tuple(image.shape[-2:])
    if meta.mode in _SIXTEEN_BIT_MODES or meta.mode == "I":
        out = Image.fromarray(_quantize(plane[0, 0], 65535, np.uint16))  # mode I;16
        if meta.mode == "I":
            out = out.convert("I")
    elif meta.mode == "F":
        out = Image.fromarray(plane[0, 0].clamp(0, 1).numpy().astype(np.float32))  # mode F
    else:
        if meta.alpha is not None:
            plane = torch.cat([plane, _resized_alpha(meta.alpha, size)], dim=1)
        array = _quantize(plane[0].permute(1, 2, 0), 255, np.uint8)
        out = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    if meta.exif:
        out.info["exif"] = meta.exif
    if meta.icc_profile:
        out.info["icc_profile"] = meta.icc_profile
    return out


def _to_numpy(image: torch.Tensor, meta: ImageMeta) -> np.ndarray:
    """(1, 3, H', W') float in [0, 1] -> array with the input's dtype, channels and layout."""
    planes = _luma(image) if meta.channels == 1 else image
    if meta.channels == 4:
        planes = torch.cat([planes, _resized_alpha(meta.alpha, tuple(image.shape[-2:]))], dim=1)
    hwc = planes[0].permute(1, 2, 0)
    dtype = np.dtype(meta.dtype)
    if dtype == np.uint8:
        array = _quantize(hwc, 255, dtype)
    elif dtype == np.uint16:
        array = _quantize(hwc, 65535, dtype)
    else:
        array = hwc.clamp(0, 1).numpy().astype(dtype)
    array = array[:, :, 0] if meta.layout == "HW" else array
    if meta.exif or meta.icc_profile:  # the input was an ImageArray carrying them
        info = {"exif": meta.exif, "icc_profile": meta.icc_profile}
        return ImageArray(array, {key: value for key, value in info.items() if value})
    return array


def _to_torch(images: torch.Tensor, meta: ImageMeta) -> torch.Tensor:
    out = images.clamp(0, 1)
    if meta.channels == 1:
        out = _luma(out)
    out = out.to(device=meta.device, dtype=getattr(torch, meta.dtype))
    return out if meta.batched else out[0]


def from_tensor(images: torch.Tensor, meta: ImageMeta) -> Any:
    """Convert a result tensor back to the form :func:`to_tensor` was given.

    Args:
        images: ``(B, 3, H', W')`` float in [0, 1]; H', W' may differ from the input size (an
            upscaled result). Values are clamped to [0, 1].
        meta: the meta returned by :func:`to_tensor` for the input.

    Returns:
        * PIL input: a PIL image (a list of them for a list input). 8-bit RGB, or RGBA when the
          input had alpha (alpha resized bilinearly to (H', W')); grayscale inputs give ``"L"``
          (``"LA"`` with alpha), 16-bit inputs ``"I;16"`` (``"I"``/``"F"`` inputs keep their mode);
          palette/CMYK/other colour modes give RGB(A). ``info["exif"]``/``["icc_profile"]`` are set
          from the input so :func:`save_image` writes them back.
        * numpy input (and 16-bit colour files, read as :class:`ImageArray`): an array with the
          input's dtype and layout (``(H', W')`` for 2-D input, ``(H', W', C)`` otherwise, alpha
          re-attached for 4 channels); an :class:`ImageArray` with the input's ``info["exif"]`` /
          ``["icc_profile"]`` when the input carried them, so :func:`save_image` writes them back.
        * torch input: a tensor with the input's batching, channel count, dtype and device.
        Integer outputs are rounded to nearest, not truncated.

    Raises:
        InvalidInputError: wrong shape/dtype, a batch size that does not match ``meta``, NaN/inf.
    """
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InvalidInputError(f"from_tensor expects a float (B, 3, H, W) tensor, got {shape}")
    if images.shape[0] != meta.batch_size:
        raise InvalidInputError(
            f"from_tensor got a batch of {images.shape[0]} images but the input had {meta.batch_size}"
        )
    if not torch.isfinite(images.detach()).all():
        raise InvalidInputError("the result tensor contains NaN or infinite values; it cannot be converted to an image")
    if meta.items is not None:
        return [from_tensor(images[i : i + 1], item) for i, item in enumerate(meta.items)]
    if meta.kind == "torch":
        return _to_torch(images, meta)
    images = images.detach().to("cpu", torch.float32)
    if meta.kind == "numpy":
        return _to_numpy(images, meta)
    return _to_pil(images, meta)


# ----------------------------------------------------------------------------------------------
# Size alignment



def is_pil_input(image: Any) -> bool:
    """True for a PIL image or a non-empty list/tuple of them (the inputs official scripts take)."""
    if isinstance(image, Image.Image):
        return True
    return isinstance(image, (list, tuple)) and bool(image) and all(isinstance(i, Image.Image) for i in image)


def snap_to_uint8_levels(x: torch.Tensor, *, truncate: bool) -> torch.Tensor:
    """Snap [0, 1] values to k/255 as a uint8 conversion would, staying float.

    ``truncate=True`` is torchvision's ``ToPILImage`` (``mul(255).byte()``, used by the official
    OSEDiff/S3Diff scripts and colour fixes); ``False`` rounds like diffusers' ``numpy_to_pil``.
    """
    scaled = x.clamp(0, 1) * 255
    return (scaled.floor() if truncate else scaled.round()) / 255


def pad_to_multiple(
    x: torch.Tensor, multiple: int = 8, *, mode: Literal["reflect", "replicate", "constant"] = "reflect"
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``(..., H, W)`` at the bottom and right so that H and W are multiples of ``multiple``.

    ``"reflect"`` needs the padding to be smaller than the axis; on an axis too small to reflect
    (e.g. a 16-px image padded to 64) that axis falls back to ``"replicate"``. ``"constant"`` pads
    with zeros.

    Returns:
        ``(padded, (pad_h, pad_w))``; ``x`` itself when no padding is needed. Undo with
        :func:`crop_padding`.
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 3:
        raise InvalidInputError(f"pad_to_multiple expects a tensor (..., H, W) with at least 3 dims, got "
                                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if multiple < 1:
        raise InvalidInputError(f"multiple must be a positive integer, got {multiple}")
    if mode not in ("reflect", "replicate", "constant"):
        raise InvalidInputError(f"unknown padding mode {mode!r}; use 'reflect', 'replicate' or 'constant'")
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    for pad, size, spec in ((pad_h, height, (0, 0, 0, pad_h)), (pad_w, width, (0, pad_w, 0, 0))):
        if pad:
            axis_mode = "replicate" if mode == "reflect" and pad >= size else mode
            x = F.pad(x, spec, mode=axis_mode)
    return x, (pad_h, pad_w)


def crop_padding(x: torch.Tensor, pad: tuple[int, int], *, scale: int = 1) -> torch.Tensor:
    """Remove the bottom/right padding added by :func:`pad_to_multiple` from ``x``.

    ``x`` may be ``scale`` times the padded input (an upscaled output): ``pad_h * scale`` rows and
    ``pad_w * scale`` columns are removed.
    """
    pad_h, pad_w = pad[0] * scale, pad[1] * scale
    height, width = x.shape[-2:]
    if pad_h < 0 or pad_w < 0 or pad_h >= height or pad_w >= width:
        raise InvalidInputError(
            f"cannot remove padding {pad} x{scale} from a tensor of size {height}x{width} (H x W)"
        )
    return x[..., : height - pad_h, : width - pad_w]
