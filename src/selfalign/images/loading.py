"""Open, check and normalise one input image: a `LoadedImage`, or a `Rejection` that says why not.

Every image that passes is RGB, upright (EXIF orientation applied), a single frame and within the
size limits, so the samplers and processors downstream see one kind of picture. Bad input never
raises: each failure becomes a `Rejection` with a code from `REJECTION_REASONS` and a specific detail.

Size rules (`ImageLimits`):
- more than `max_image_pixels` pixels (read from the header, before any decoding): `too_many_pixels`;
- shortest side below `reject_below_side`: rejected as `too_small` (too little to upscale honestly);
- shortest side below `min_image_side`: upscaled, aspect ratio kept, so the shortest side is exactly
  `min_image_side`; the `note` says so. Processors have a minimum input size (Qwen2-VL: 28 px).

Colour rules: palette, greyscale, CMYK and similar modes are converted to RGB; anything with
transparency (RGBA, LA, PA, palette or greyscale with a transparent colour) is composited on white;
16-bit greyscale is scaled to 8 bits (65535 -> 255), not clipped. Animated images give their first
frame (noted). Details never hold absolute local paths, since the rejects file may be published.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

REJECTION_REASONS: dict[str, str] = {
    "empty_file": "the file is 0 bytes long",
    "truncated": "the file starts like an image but is truncated or corrupt, so it cannot be decoded",
    "not_an_image": "the file is not in a supported image format (PNG, JPEG, GIF, BMP, WebP, TIFF, PNM)",
    "unreadable": "the path exists but cannot be read (permission denied, a folder, a FIFO, ...)",
    "too_many_pixels": "the image has more pixels than max_image_pixels (decompression-bomb guard)",
    "too_small": "the image's shortest side is below reject_below_side",
    "unsupported_mode": "the image's pixel format has no faithful conversion to 8-bit RGB",
    "duplicate": "same image content and prompt as an earlier input (the first one is kept)",
    "missing_file": "the image the input points at does not exist",
    "outside_root": "a manifest row points outside the manifest's folder (path traversal)",
}

# Formats Pillow may try. Restricting them keeps exotic plugins (EPS runs Ghostscript) away from
# untrusted files; a file is still identified by its content, not by its extension. (JPEG covers
# multi-picture MPO files too.)
SUPPORTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
# Leading bytes of the supported formats, to tell a damaged image from a file that is no image.
_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa"}
WHITE = (255, 255, 255)


def shareable_source(source: str) -> str:
    """`source` as it may be published: an absolute path (a manifest may give one) becomes its file name."""
    return Path(source).name if Path(source).is_absolute() else source


@dataclass(frozen=True, slots=True)  # slots: a source may list millions of items
class SourceItem:
    """One raw input, cheap to enumerate: where it comes from, never its pixels."""

    index: int  # position in the source's deterministic order
    source: str  # provenance shown to users: path relative to the source root, or "row 17"
    instruction: str | None = None
    reference: str | None = None
    explicit_id: str | None = None  # an id given by a manifest row, if any


@dataclass(frozen=True)
class LoadedImage:
    item: SourceItem
    image: Image.Image  # RGB, EXIF orientation applied, size within limits
    content_hash: str  # see `compute_content_hash`
    note: str | None = None  # e.g. "upscaled from 12x9 to 37x28 (shortest side below min_image_side 28)"


@dataclass(frozen=True)
class Rejection:
    source: str  # SourceItem.source
    reason: str  # a code from REJECTION_REASONS
    detail: str  # human-readable specifics


@dataclass(frozen=True)
class ImageLimits:
    min_image_side: int = 28
    reject_below_side: int = 8
    max_image_pixels: int = 40_000_000


class _Rejected(Exception):
    """Raised inside this module only; `load_image_file` and `load_image_bytes` turn it into a `Rejection`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


def compute_content_hash(image: Image.Image) -> str:
    """sha256 over the size and the RGB pixel bytes, so re-encodings of the same pixels agree."""
    width, height = image.size
    digest = hashlib.sha256(f"{width}x{height}\n".encode())
    digest.update((image if image.mode == "RGB" else image.convert("RGB")).tobytes())
    return digest.hexdigest()


def load_image_file(item: SourceItem, path: Path, limits: ImageLimits) -> LoadedImage | Rejection:
    """Open `path` once and normalise it; never raises for bad input."""
    try:
        with _open_regular_file(path) as stream:
            return _normalise(item, stream, limits)
    except _Rejected as rejected:
        return Rejection(item.source, rejected.reason, rejected.detail)


def load_image_bytes(item: SourceItem, data: bytes, limits: ImageLimits) -> LoadedImage | Rejection:
    """Normalise an encoded image held in memory (a dataset row); never raises for bad input."""
    try:
        if not data:
            raise _Rejected("empty_file", "the image bytes are empty")
        return _normalise(item, io.BytesIO(data), limits)
    except _Rejected as rejected:
        return Rejection(item.source, rejected.reason, rejected.detail)


def _open_regular_file(path: Path) -> BinaryIO:
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait forever for a writer.
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError) as error:
        raise _Rejected("missing_file", "no such file") from error
    except OSError as error:
        raise _Rejected("unreadable", f"cannot open: {error.strerror or error}") from error
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise _Rejected("unreadable", f"not a regular file but {_file_kind(info.st_mode)}")
        if info.st_size == 0:
            raise _Rejected("empty_file", "the file is 0 bytes long")
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISSOCK: "a socket"}
    return next((name for test, name in kinds.items() if test(mode)), "a device file")


def _normalise(item: SourceItem, stream: BinaryIO, limits: ImageLimits) -> LoadedImage:
    # Pillow warns per file about odd input (corrupt EXIF, pixel counts over its own bomb limit);
    # over a large build that floods the log, and every real failure is reported as a Rejection.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = _identify(stream)
        _check_size(image.size, limits)
        rgb, animated = _decode_first_frame(image)
    content_hash = compute_content_hash(rgb)
    rgb, resize_note = _upscale_if_small(rgb, limits)
    notes = [resize_note, "multi-frame image: first frame used" if animated else None]
    return LoadedImage(item, rgb, content_hash, "; ".join(note for note in notes if note) or None)


def _identify(stream: BinaryIO) -> Image.Image:
    """Read the header only (Pillow decodes lazily)."""
    prefix = stream.read(16)
    stream.seek(0)
    try:
        return Image.open(stream, formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError as error:
        raise _Rejected("too_many_pixels", f"over Pillow's own limit: {error}") from error
    except UnidentifiedImageError as error:
        image_format = _format_by_signature(prefix)
        if image_format:
            raise _Rejected(
                "truncated", f"starts like a {image_format} file but its header is damaged"
            ) from error
        raise _Rejected(
            "not_an_image", f"no supported image format recognised (starts with {prefix[:8]!r})"
        ) from error
    except Exception as error:  # plugins raise many types on malformed headers; none may stop a build
        raise _Rejected("truncated", f"damaged header: {_describe(error)}") from error


def _format_by_signature(prefix: bytes) -> str | None:
    if prefix[:4] == b"RIFF" and prefix[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _SIGNATURES.items() if prefix.startswith(magic)), None)


def _check_size(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width * height > limits.max_image_pixels:
        raise _Rejected(
            "too_many_pixels",
            f"{width}x{height} = {width * height} pixels, over max_image_pixels {limits.max_image_pixels}",
        )
    if min(width, height) < limits.reject_below_side:
        raise _Rejected(
            "too_small",
            f"{width}x{height}: shortest side {min(width, height)} is below reject_below_side "
            f"{limits.reject_below_side}",
        )


def _decode_first_frame(image: Image.Image) -> tuple[Image.Image, bool]:
    """Decode frame 0 to upright RGB; also say whether the file has more frames."""
    try:
        # Asked before decoding: for GIF it seeks past frame 0, which would discard decoded pixels.
        animated = bool(getattr(image, "is_animated", False))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    except Image.DecompressionBombError as error:
        raise _Rejected("too_many_pixels", f"over Pillow's own limit: {error}") from error
    except Exception as error:  # any decoder failure on untrusted bytes is a corrupt file, not a crash
        raise _Rejected("truncated", f"{image.format} data cannot be decoded: {_describe(error)}") from error
    return _to_rgb(image), animated


def _describe(error: Exception) -> str:
    return str(error) or type(error).__name__


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "F":  # Pillow would clip floats to 0..255, turning a 0..1 image black
        raise _Rejected("unsupported_mode", "32-bit float pixels (mode F) have no standard value range")
    if image.mode in _SIXTEEN_BIT_MODES:
        return _scale_to_8_bit(image).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_white(image)
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise _Rejected("unsupported_mode", f"pixel mode {image.mode}: {error}") from error


def _scale_to_8_bit(image: Image.Image) -> Image.Image:
    # Pillow's own I;16 -> L conversion clips everything above 255 to white; scale the range instead.
    values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))


def _composite_on_white(image: Image.Image) -> Image.Image:
    try:
        rgba = image.convert("RGBA")
    except ValueError as error:
        raise _Rejected("unsupported_mode", f"pixel mode {image.mode}: {error}") from error
    background = Image.new("RGBA", rgba.size, (*WHITE, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _upscale_if_small(image: Image.Image, limits: ImageLimits) -> tuple[Image.Image, str | None]:
    width, height = image.size
    shortest = min(width, height)
    if shortest >= limits.min_image_side:
        return image, None
    scale = limits.min_image_side / shortest
    new_size = (
        max(limits.min_image_side, round(width * scale)),
        max(limits.min_image_side, round(height * scale)),
    )
    if new_size[0] * new_size[1] > limits.max_image_pixels:
        raise _Rejected(
            "too_many_pixels",
            f"{width}x{height} upscaled to shortest side {limits.min_image_side} would be "
            f"{new_size[0]}x{new_size[1]}, over max_image_pixels {limits.max_image_pixels}",
        )
    note = (
        f"upscaled from {width}x{height} to {new_size[0]}x{new_size[1]} "
        f"(shortest side below min_image_side {limits.min_image_side})"
    )
    return image.resize(new_size, Image.Resampling.BICUBIC), note
