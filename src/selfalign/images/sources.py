"""Where input images come from: a folder, a JSONL/CSV manifest, or a Hub/local dataset.

`items()` lists inputs in a deterministic order and holds only metadata (paths, row numbers, texts),
so it is cheap and identical in every process; `load(item)` reads one image and never raises for bad
input (see `selfalign.images.loading`). Problems with the source as a whole (a missing folder, an
unparseable manifest line) raise `SelfAlignError` at `open_source`, before any work starts.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from datasets import Dataset, Image, Value, load_dataset

from selfalign.errors import SelfAlignError
from selfalign.images.loading import (
    ImageLimits,
    LoadedImage,
    Rejection,
    SourceItem,
    load_image_bytes,
    load_image_file,
)
from selfalign.images.prompts import check_prompt_set

logger = logging.getLogger("selfalign")

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
    | {".ppm", ".pgm", ".pbm", ".pnm"}
)
# Optional per-input fields of a manifest row, and the dataset columns read the same way.
TEXT_FIELDS = {"id": "explicit_id", "instruction": "instruction", "reference": "reference"}
MANIFEST_FIELDS = ("image", *TEXT_FIELDS)


@dataclass
class ImageSourceArguments:
    """Recipe keys that say where the input images come from and which sizes are acceptable."""

    image_folder: str | None = field(
        default=None, metadata={"help": "Folder of images, read recursively in sorted path order."}
    )
    manifest: str | None = field(
        default=None,
        metadata={
            "help": "JSONL or CSV manifest: `image` (path relative to the manifest's folder) and "
            "optionally `id`, `instruction`, `reference`."
        },
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id or local dataset folder with an image column."}
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of `dataset_name` to read."})
    image_column: str = field(default="image", metadata={"help": "Image column of `dataset_name`."})
    prompt_set: str | None = field(
        default=None,
        metadata={"help": "Named prompt set (e.g. `describe`) for inputs without their own instruction."},
    )
    min_image_side: int = field(
        default=28, metadata={"help": "Images with a shorter side are upscaled, aspect kept, to this."}
    )
    reject_below_side: int = field(
        default=8, metadata={"help": "Images with a shorter side than this are rejected as too_small."}
    )
    max_image_pixels: int = field(
        default=40_000_000, metadata={"help": "Images with more pixels are rejected (decompression bombs)."}
    )

    def limits(self) -> ImageLimits:
        return ImageLimits(self.min_image_side, self.reject_below_side, self.max_image_pixels)


class ImageSource(Protocol):
    def items(self) -> list[SourceItem]: ...  # deterministic order; metadata only

    def load(self, item: SourceItem) -> LoadedImage | Rejection: ...  # never raises for bad input


def open_source(spec: ImageSourceArguments) -> ImageSource:
    """The source `spec` names: exactly one of `image_folder`, `manifest`, `dataset_name`."""
    _check_arguments(spec)
    if spec.image_folder is not None:
        source = FolderSource(Path(spec.image_folder), spec.limits())
    elif spec.manifest is not None:
        source = ManifestSource(Path(spec.manifest), spec.limits())
    else:
        source = DatasetSource(spec.dataset_name, spec.dataset_split, spec.image_column, spec.limits())
    if not source.items():
        raise SelfAlignError(f"{source.description} holds no inputs")
    return source


def _check_arguments(spec: ImageSourceArguments) -> None:
    given = [name for name in ("image_folder", "manifest", "dataset_name") if getattr(spec, name) is not None]
    if len(given) != 1:
        found = ", ".join(given) if given else "none"
        raise SelfAlignError(
            f"set exactly one of image_folder, manifest, dataset_name as the image source (set: {found})"
        )
    empty = [name for name in given if not str(getattr(spec, name)).strip()]
    if empty:
        raise SelfAlignError(f"{empty[0]} is empty: give the path (or Hub id) of the images")
    if spec.prompt_set is not None:
        check_prompt_set(spec.prompt_set)
    if not 1 <= spec.reject_below_side <= spec.min_image_side:
        raise SelfAlignError(
            f"need 1 <= reject_below_side <= min_image_side, got {spec.reject_below_side} and "
            f"{spec.min_image_side}"
        )
    if spec.max_image_pixels < spec.min_image_side**2:
        raise SelfAlignError(
            f"max_image_pixels {spec.max_image_pixels} leaves no room for a "
            f"{spec.min_image_side}x{spec.min_image_side} image"
        )


class FolderSource:
    """Every file under `root` with an image extension (any case), sorted by relative POSIX path.

    Symlinked files and folders are followed (a folder reached twice is read once, so cycles end), since a user's
    own folder is trusted; manifests, which may come from elsewhere, are checked for escapes.
    """

    def __init__(self, root: Path, limits: ImageLimits):
        if not root.is_dir():
            raise SelfAlignError(f"image_folder {root} is not an existing folder")
        self.root, self.limits = root, limits
        self.description = f"image_folder {root}"
        paths = sorted(_image_paths(root))
        self._items = [SourceItem(index, path) for index, path in enumerate(paths)]

    def items(self) -> list[SourceItem]:
        return list(self._items)

    def load(self, item: SourceItem) -> LoadedImage | Rejection:
        return load_image_file(item, self.root / item.source, self.limits)


def _image_paths(root: Path) -> list[str]:
    """Relative POSIX paths of the image files under `root`; other files are counted in the log."""
    found, others, visited = [], 0, set()
    for folder, subfolders, files in os.walk(root, followlinks=True, onerror=_unlistable):
        real_folder = os.path.realpath(folder)
        if real_folder in visited:  # reached again through a symlink: read already, and may loop
            subfolders.clear()
            continue
        visited.add(real_folder)
        subfolders.sort()  # which of two links to one folder is kept must not depend on the filesystem
        for name in files:
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(folder, name).relative_to(root).as_posix())
            else:
                others += 1
    if others:
        logger.info("%s: skipped %d file(s) without an image extension", root, others)
    return found


def _unlistable(error: OSError) -> None:
    raise SelfAlignError(f"cannot list folder {error.filename}: {error.strerror}") from error


class ManifestSource:
    """Rows of a JSONL or CSV manifest; image paths are relative to the manifest's folder.

    A row may not reach outside that folder (`../`, absolute paths, symlinks resolving elsewhere):
    such a row is rejected as `outside_root`. This also rejects symlinks into a shared store outside
    the folder (such as the Hub cache's blobs); point the manifest at the real files instead.
    """

    def __init__(self, path: Path, limits: ImageLimits):
        if not path.is_file():
            raise SelfAlignError(f"manifest {path} is not an existing file")
        self.root, self.limits = path.parent.resolve(), limits
        self.description = f"manifest {path}"
        rows = _read_manifest(path)
        _check_unique_ids(path, rows)
        self._items = [_manifest_item(index, row) for index, (_, row) in enumerate(rows)]

    def items(self) -> list[SourceItem]:
        return list(self._items)

    def load(self, item: SourceItem) -> LoadedImage | Rejection:
        inside = self._inside_root(item.source)
        if isinstance(inside, Rejection):
            return inside
        return load_image_file(item, inside, self.limits)

    def _inside_root(self, written: str) -> Path | Rejection:
        lexical = Path(os.path.normpath(self.root / written))  # absolute `written` replaces the root
        try:
            resolved = lexical.resolve()
        except (OSError, RuntimeError) as error:  # Python 3.11 raises RuntimeError on a symlink loop
            reason = getattr(error, "strerror", None) or "symlink loop"
            return Rejection(written, "unreadable", f"cannot resolve the path: {reason}")
        if resolved.is_relative_to(self.root):
            return resolved
        if lexical.is_relative_to(self.root):
            detail = "a symlink on the way resolves outside the manifest's folder"
        else:
            detail = "the path leads outside the manifest's folder"
        return Rejection(written, "outside_root", detail)


def _read_manifest(path: Path) -> list[tuple[int, dict[str, str | None]]]:
    """(line number, row) pairs; raises `SelfAlignError` naming the line of any malformed row."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheet exports start with a BOM
    except (OSError, UnicodeDecodeError) as error:
        raise SelfAlignError(f"manifest {path} cannot be read as UTF-8 text: {error}") from error
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [(number, _checked_row(path, number, row)) for number, row in _jsonl_rows(path, text)]
    if suffix == ".csv":
        return [(number, _checked_row(path, number, row)) for number, row in _csv_rows(path, text)]
    raise SelfAlignError(f"manifest {path} must end in .jsonl or .csv")


def _jsonl_rows(path: Path, text: str):
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise SelfAlignError(f"{path} line {number}: not valid JSON ({error.msg})") from error
        if not isinstance(row, dict):
            raise SelfAlignError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
        yield number, row


def _csv_rows(path: Path, text: str):
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise SelfAlignError(f"{path}: no header line (expected columns {', '.join(MANIFEST_FIELDS)})")
    _check_fields(f"{path} line 1", reader.fieldnames)
    for row in reader:
        if None in row:  # DictReader files surplus cells under the key None
            raise SelfAlignError(f"{path} line {reader.line_num}: more cells than the header has columns")
        # A short row or an empty cell means the field is absent.
        yield reader.line_num, {key: value for key, value in row.items() if value not in (None, "")}


def _checked_row(path: Path, number: int, row: dict[str, Any]) -> dict[str, str | None]:
    where = f"{path} line {number}"
    _check_fields(where, row)
    image = row.get("image")
    if not isinstance(image, str) or not image.strip():
        raise SelfAlignError(f"{where}: missing the 'image' field (a path relative to the manifest)")
    checked = {"image": image.strip()}
    for key in TEXT_FIELDS:
        value = row.get(key)
        if key == "id" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value is not None and not isinstance(value, str):
            raise SelfAlignError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
        checked[key] = value
    return checked


def _check_fields(where: str, names: Iterable[str]) -> None:
    for name in names:
        if name not in MANIFEST_FIELDS:
            close = difflib.get_close_matches(name, MANIFEST_FIELDS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SelfAlignError(
                f"{where}: unknown field '{name}'{hint}; known fields: {', '.join(MANIFEST_FIELDS)}"
            )


def _check_unique_ids(path: Path, rows: list[tuple[int, dict[str, str | None]]]) -> None:
    first_line: dict[str, int] = {}
    for number, row in rows:
        explicit_id = row["id"]
        if explicit_id is None:
            continue
        if explicit_id in first_line:
            raise SelfAlignError(
                f"{path} line {number}: id '{explicit_id}' is already used on line {first_line[explicit_id]}"
            )
        first_line[explicit_id] = number


def _manifest_item(index: int, row: dict[str, str | None]) -> SourceItem:
    texts = {attribute: row[key] for key, attribute in TEXT_FIELDS.items()}
    return SourceItem(index, row["image"], **texts)


class DatasetSource:
    """Rows of a Hub or local dataset split with an image column; `source` is "row N".

    The column is read undecoded and decoded in `load`, so a row with bad bytes becomes a
    `Rejection` instead of an exception inside `datasets`. Optional text columns `id`,
    `instruction` and `reference` are read like a manifest's fields. A path-only image value
    (a string column) is opened relative to the working directory.
    """

    def __init__(self, name: str, split: str, image_column: str, limits: ImageLimits):
        self.limits, self.image_column = limits, image_column
        self.description = f"dataset {name} (split {split})"
        dataset = _load_split(name, split)
        _check_image_column(dataset, image_column, self.description)
        self._images = dataset.select_columns([image_column]).cast_column(image_column, Image(decode=False))
        self._items = _dataset_items(dataset)

    def items(self) -> list[SourceItem]:
        return list(self._items)

    def load(self, item: SourceItem) -> LoadedImage | Rejection:
        value = self._images[item.index][self.image_column]
        if value is None:
            return Rejection(item.source, "missing_file", f"the row's '{self.image_column}' value is null")
        if value["bytes"] is not None:
            return load_image_bytes(item, value["bytes"], self.limits)
        return load_image_file(item, Path(value["path"]), self.limits)


def _load_split(name: str, split: str) -> Dataset:
    try:
        return load_dataset(name, split=split)
    except (OSError, ValueError) as error:  # not found, unknown split, no network: all user-fixable
        raise SelfAlignError(f"cannot load split '{split}' of dataset {name}: {error}") from error


def _check_image_column(dataset: Dataset, column: str, description: str) -> None:
    feature = dataset.features.get(column)
    if feature is None:
        raise SelfAlignError(
            f"{description} has no image column '{column}'; its columns are: {', '.join(dataset.column_names)}"
        )
    if not _one_image_per_row(feature):
        raise SelfAlignError(
            f"{description}: column '{column}' holds {feature}, not one image per row; "
            "set image_column to a column of images"
        )


def _one_image_per_row(feature: Any) -> bool:
    # Image(decode=False) can be cast from images, encoded bytes or file paths.
    encoded = ("binary", "large_binary", "string", "large_string")
    return isinstance(feature, Image) or (isinstance(feature, Value) and feature.dtype in encoded)


def _dataset_items(dataset: Dataset) -> list[SourceItem]:
    present = [column for column in TEXT_FIELDS if column in dataset.column_names]
    texts = dataset.select_columns(present).to_dict() if present else {}
    return [
        SourceItem(
            index,
            f"row {index}",
            **{TEXT_FIELDS[column]: _text(texts[column][index]) for column in present},
        )
        for index in range(len(dataset))
    ]


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
