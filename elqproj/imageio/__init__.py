"""Images in and out: files, PIL images, numpy arrays and torch tensors to one tensor form and back.

Three modules, one concern each: :mod:`.files` (reading and writing image files), :mod:`.tensors`
(any image form to ``(B, 3, H, W)`` float tensors and back) and :mod:`.sizing` (padding, cropping and
uint8 level snapping of tensors). Everything public is importable from ``elqproj.imageio``.

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


from .files import (
    IMAGE_SUFFIXES,
    MAX_PIXELS_DEFAULT,
    ImageArray,
    expand_image_paths,
    load_image,
    resolve_max_pixels,
    save_image,
)
from .sizing import check_processing_size, crop_padding, is_pil_input, pad_to_multiple, snap_to_uint8_levels
from .tensors import RANGE_TOLERANCE, ImageMeta, check_image_tensor, from_tensor, to_tensor

__all__ = [
    "MAX_PIXELS_DEFAULT",
    "RANGE_TOLERANCE",
    "IMAGE_SUFFIXES",
    "ImageMeta",
    "ImageArray",
    "resolve_max_pixels",
    "expand_image_paths",
    "load_image",
    "save_image",
    "to_tensor",
    "from_tensor",
    "check_image_tensor",
    "is_pil_input",
    "snap_to_uint8_levels",
    "pad_to_multiple",
    "crop_padding",
    "check_processing_size",
]
