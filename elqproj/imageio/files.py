"""Image files in and out: reading (EXIF orientation, 16-bit colour PNG/TIFF through OpenCV, the pixel
limit checked from the header), folder and glob expansion, and atomic writing in the suffix's format.

PIL has no 16-bit colour mode, so 16-bit RGB(A) PNG and TIFF files are decoded with OpenCV into an
:class:`ImageArray` (a uint16 numpy array with a PIL-style ``info`` dict) and written back at 16
bits by :func:`save_image`.
"""

from __future__ import annotations

import glob
import os
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable, Literal, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ConfigError, ImageDecodeError, ImageTooLargeError, InvalidInputError

__all__ = ["MAX_PIXELS_DEFAULT", "IMAGE_SUFFIXES", "ImageArray", "resolve_max_pixels", "expand_image_paths",
           "load_image", "save_image"]

#: Largest accepted image, in pixels (8192 x 8192): a guard against decompression bombs and against
#: arrays that would exhaust memory once converted to float. Override per call (``max_pixels=``) or
#: for the process with the environment variable ``ELQPROJ_MAX_PIXELS``.
MAX_PIXELS_DEFAULT: int = 8192 * 8192



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


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
#: Formats that store 16 bits per channel; JPEG, WebP and BMP store 8.
_SIXTEEN_BIT_FORMATS = ("PNG", "TIFF")
_EXIF_ORIENTATION = 0x0112
_PNG_COLOUR_TYPES_RGB = (2, 6)  # IHDR colour types: 2 = RGB, 6 = RGBA
_TIFF_BITS_PER_SAMPLE, _TIFF_PHOTOMETRIC, _TIFF_EXTRA_SAMPLES, _TIFF_SAMPLE_FORMAT = 258, 262, 338, 339



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
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not images:
                raise InvalidInputError(
                    f"No image found in the folder {item!r} (looked for {', '.join(sorted(IMAGE_SUFFIXES))} files)."
                )
            found += images
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next(p for p in [path.parent, *path.parent.parents] if p.exists() and not p.is_dir())
        raise InvalidInputError(
            f"cannot write {str(path)!r}: {str(blocker)!r} is a file, not a folder; choose another output path"
        ) from None
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

