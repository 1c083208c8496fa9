"""Image sources and bad input: every kind of bad file is reported with its reason, next to good ones."""

import csv
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage
from PIL import ImageFile

from selfalign.errors import SelfAlignError
from selfalign.images import (
    PROMPT_SETS,
    REJECTION_REASONS,
    ImageSourceArguments,
    LoadedImage,
    Rejection,
    SourceItem,
    compute_content_hash,
    open_source,
    prompt_for,
    prompt_of,
    row_id,
)

ORIENTATION = 0x0112  # the EXIF tag


def noise(size=(32, 32), seed=0) -> PILImage.Image:
    rng = np.random.default_rng(seed)
    return PILImage.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def encoded(image: PILImage.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming `width` x `height` 1-bit pixels with almost no data: a bomb, built in bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.fixture
def folder(tmp_path):
    """An image folder that already holds one good image, `good.png`."""
    root = tmp_path / "images"
    root.mkdir()
    noise().save(root / "good.png")
    return root


def load_all(**arguments) -> dict[str, LoadedImage | Rejection]:
    source = open_source(ImageSourceArguments(**arguments))
    return {item.source: source.load(item) for item in source.items()}


def load_folder(root, **arguments) -> dict[str, LoadedImage | Rejection]:
    return load_all(image_folder=str(root), **arguments)


def assert_rejected(result, reason: str) -> Rejection:
    assert isinstance(result, Rejection), f"expected a {reason} rejection, got {result}"
    assert result.reason == reason, result
    assert reason in REJECTION_REASONS and result.detail
    return result


def assert_accepted(result) -> LoadedImage:
    assert isinstance(result, LoadedImage), f"expected an accepted image, got {result}"
    assert result.image.mode == "RGB" and min(result.image.size) >= 28
    return result


# --- corrupt, empty and non-image files ---------------------------------------------------------


@pytest.mark.parametrize("image_format, suffix", [("PNG", "png"), ("JPEG", "jpg")])
@pytest.mark.parametrize("kept", ["half", "header"])
def test_truncated_file(folder, image_format, suffix, kept):
    data = encoded(noise((64, 64)), image_format)
    cut = len(data) // 2 if kept == "half" else 20  # 20 bytes: the signature survives, the header not
    (folder / f"cut.{suffix}").write_bytes(data[:cut])
    results = load_folder(folder)
    assert_rejected(results[f"cut.{suffix}"], "truncated")
    assert_accepted(results["good.png"])


def test_truncated_images_are_not_loaded_by_a_global_pillow_switch(folder):
    (folder / "cut.jpg").write_bytes(encoded(noise((64, 64)), "JPEG")[:-200])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert_rejected(load_folder(folder)["cut.jpg"], "truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_zero_byte_file(folder):
    (folder / "empty.jpg").write_bytes(b"")
    results = load_folder(folder)
    assert_rejected(results["empty.jpg"], "empty_file")
    assert_accepted(results["good.png"])


def test_text_file_named_like_an_image(folder):
    (folder / "notes.png").write_text("these are my holiday notes, not a picture\n")
    results = load_folder(folder)
    rejection = assert_rejected(results["notes.png"], "not_an_image")
    assert "these ar" in rejection.detail  # says what the file starts with
    assert_accepted(results["good.png"])


# --- decompression bombs -------------------------------------------------------------------------


@pytest.mark.filterwarnings("error")  # Pillow's DecompressionBombWarning must not escape either
@pytest.mark.parametrize(
    "width, height",
    [
        (10_000, 10_000),  # over our 40M limit and Pillow's warning limit, under its hard error limit
        (100_000, 100_000),  # over Pillow's hard limit: it raises DecompressionBombError itself
    ],
)
def test_decompression_bomb_is_rejected_from_its_header(folder, width, height):
    bomb = png_header_only(width, height)
    assert len(bomb) < 200  # the file is tiny; only its header claims the size
    (folder / "bomb.png").write_bytes(bomb)
    pillow_limit = PILImage.MAX_IMAGE_PIXELS
    results = load_folder(folder)
    # too_many_pixels, not truncated: the (missing) pixel data was never decoded.
    assert_rejected(results["bomb.png"], "too_many_pixels")
    assert_accepted(results["good.png"])
    assert PILImage.MAX_IMAGE_PIXELS == pillow_limit, "the loader must not change Pillow's global limit"


def test_pixel_limit_comes_from_the_recipe(folder):
    noise((40, 40)).save(folder / "big.png")  # 1600 pixels
    results = load_folder(folder, max_image_pixels=1100)
    rejection = assert_rejected(results["big.png"], "too_many_pixels")
    assert "40x40 = 1600 pixels" in rejection.detail
    assert_accepted(results["good.png"])  # 32x32 = 1024 pixels


# --- modes, orientation, frames ------------------------------------------------------------------


def palette_image(transparent: bool) -> PILImage.Image:
    image = PILImage.new("P", (32, 32), 0)
    image.putpalette([10, 200, 30] + [255, 0, 0] + [0] * (254 * 3))
    image.putpixel((5, 5), 1)
    if transparent:
        image.info["transparency"] = 0
    return image


def sixteen_bit_image() -> PILImage.Image:
    values = np.full((32, 32), 1000, dtype=np.uint16)
    values[0, 1], values[0, 2] = 32768, 65535
    return PILImage.fromarray(values)


def alpha_image(mode: str) -> PILImage.Image:
    if mode == "LA":
        image = PILImage.new("LA", (32, 32), (0, 0))  # black, fully transparent
        image.putpixel((1, 0), (0, 255))  # black, opaque
        return image
    image = PILImage.new("RGBA", (32, 32), (255, 0, 0, 0))  # red, fully transparent
    image.putpixel((1, 0), (0, 0, 255, 255))
    image.putpixel((2, 0), (0, 0, 0, 128))
    return image


MODE_CASES = {
    # name: (image, file format, mode Pillow reopens it in, {pixel: expected RGB})
    "palette": (palette_image(False), "PNG", "P", {(0, 0): (10, 200, 30), (5, 5): (255, 0, 0)}),
    "palette_transparent": (palette_image(True), "PNG", "P", {(0, 0): (255, 255, 255), (5, 5): (255, 0, 0)}),
    "cmyk": (PILImage.new("CMYK", (32, 32), (0, 255, 255, 0)), "TIFF", "CMYK", {(0, 0): (255, 0, 0)}),
    "la": (alpha_image("LA"), "PNG", "LA", {(0, 0): (255, 255, 255), (1, 0): (0, 0, 0)}),
    "rgba": (
        alpha_image("RGBA"),
        "PNG",
        "RGBA",
        {(0, 0): (255, 255, 255), (1, 0): (0, 0, 255), (2, 0): (127, 127, 127)},
    ),
    # 16-bit is scaled (value * 255 / 65535), not clipped to 255 as Pillow's own conversion does.
    "16_bit": (
        sixteen_bit_image(),
        "PNG",
        "I;16",
        {(0, 0): (4, 4, 4), (1, 0): (128, 128, 128), (2, 0): (255, 255, 255)},
    ),
}


@pytest.mark.parametrize("case", MODE_CASES)
def test_pixel_modes_become_rgb(folder, case):
    image, image_format, reopened_mode, expected_pixels = MODE_CASES[case]
    path = folder / f"{case}.{image_format.lower()}"
    image.save(path, image_format)
    with PILImage.open(path) as reopened:
        assert reopened.mode == reopened_mode  # the file really holds the mode under test
    results = load_folder(folder)
    loaded = assert_accepted(results[path.name])
    assert loaded.image.size == (32, 32)
    for xy, rgb in expected_pixels.items():
        assert loaded.image.getpixel(xy) == rgb, f"pixel {xy}"
    assert_accepted(results["good.png"])


@pytest.mark.parametrize(
    "orientation, size, red_at",
    [
        (3, (64, 32), (63, 31)),  # upside down: rotate 180
        (6, (32, 64), (31, 0)),  # rotate 90 degrees clockwise to view
        (8, (32, 64), (0, 63)),  # rotate 90 degrees counter-clockwise to view
    ],
)
def test_exif_orientation_is_applied(folder, orientation, size, red_at):
    image = PILImage.new("RGB", (64, 32), (0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0))  # marks the stored top-left corner
    exif = PILImage.Exif()
    exif[ORIENTATION] = orientation
    image.save(folder / "turned.png", exif=exif)
    loaded = assert_accepted(load_folder(folder)["turned.png"])
    assert loaded.image.size == size
    assert loaded.image.getpixel(red_at) == (255, 0, 0)


def test_animated_image_gives_its_first_frame(folder):
    first, second = (PILImage.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255)))
    first.save(folder / "blink.gif", save_all=True, append_images=[second], duration=100)
    loaded = assert_accepted(load_folder(folder)["blink.gif"])
    assert loaded.image.getpixel((3, 3)) == (255, 0, 0)
    assert "first frame" in loaded.note


# --- sizes ---------------------------------------------------------------------------------------


def test_small_image_is_upscaled_and_tiny_image_rejected(folder):
    small = noise((12, 9), seed=1)
    small.save(folder / "small.png")
    noise((5, 30)).save(folder / "sliver.png")
    noise((8, 8)).save(folder / "at_limit.png")
    results = load_folder(folder)  # defaults: min_image_side 28, reject_below_side 8

    upscaled = assert_accepted(results["small.png"])
    assert upscaled.image.size == (37, 28)  # aspect kept: 12/9 * 28 = 37.3
    assert upscaled.note == "upscaled from 12x9 to 37x28 (shortest side below min_image_side 28)"
    # The id describes the input, not our resizing: the hash is of the pixels as stored.
    assert upscaled.content_hash == compute_content_hash(small)

    assert results["at_limit.png"].image.size == (28, 28)
    assert "below reject_below_side 8" in assert_rejected(results["sliver.png"], "too_small").detail
    assert assert_accepted(results["good.png"]).note is None


# --- content hash --------------------------------------------------------------------------------


def test_same_pixels_in_any_lossless_format_hash_equal(folder):
    pixels = noise(seed=3)
    pixels.save(folder / "a.png")
    pixels.save(folder / "b.bmp")
    pixels.save(folder / "c.webp", lossless=True)
    pixels.save(folder / "d.tiff")
    pixels.save(folder / "d.ppm")
    pixels.convert("RGBA").save(folder / "e_opaque_alpha.png")
    changed = pixels.copy()
    changed.putpixel((0, 0), tuple((value + 1) % 256 for value in pixels.getpixel((0, 0))))
    changed.save(folder / "f_one_pixel_differs.png")
    results = load_folder(folder)
    hashes = {name: assert_accepted(result).content_hash for name, result in results.items()}
    same = {hashes[name] for name in ("a.png", "b.bmp", "c.webp", "d.tiff", "d.ppm", "e_opaque_alpha.png")}
    assert len(same) == 1
    assert hashes["f_one_pixel_differs.png"] not in same
    assert hashes["good.png"] not in same


# --- unreadable paths ----------------------------------------------------------------------------


def test_fifo_named_like_an_image_is_unreadable_and_does_not_block(folder):
    os.mkfifo(folder / "pipe.png")  # opening a FIFO without O_NONBLOCK would wait for a writer forever
    results = load_folder(folder)
    assert "FIFO" in assert_rejected(results["pipe.png"], "unreadable").detail
    assert_accepted(results["good.png"])


def test_path_that_cannot_be_opened_is_unreadable(folder):
    # A symlink loop: the open itself fails (ELOOP), as it does for permission denied.
    os.symlink("loop.png", folder / "loop.png")
    results = load_folder(folder)
    assert "cannot open" in assert_rejected(results["loop.png"], "unreadable").detail
    assert_accepted(results["good.png"])


LOAD_FOLDER_SCRIPT = """
import json, sys
from selfalign.images import ImageSourceArguments, Rejection, open_source
source = open_source(ImageSourceArguments(image_folder=sys.argv[1]))
outcomes = {}
for item in source.items():
    result = source.load(item)
    outcomes[item.source] = [result.reason, result.detail] if isinstance(result, Rejection) else ["accepted", ""]
print(json.dumps(outcomes))
"""


def test_permission_denied_is_unreadable(folder):
    noise().save(folder / "locked.png")
    (folder / "locked.png").chmod(0)
    command = [sys.executable, "-c", LOAD_FOLDER_SCRIPT, str(folder)]
    if os.geteuid() == 0:
        # Root reads a chmod 000 file anyway; without the capability to override file permissions
        # it gets the same "Permission denied" as any other user.
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: chmod 000 does not stop root from reading")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0 and result.stderr.startswith("setpriv:"):
        pytest.skip(f"cannot drop root's file-permission override here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout.splitlines()[-1])
    assert results["locked.png"] == ["unreadable", "cannot open: Permission denied"]
    assert results["good.png"] == ["accepted", ""]


def test_folder_named_like_an_image_is_unreadable(tmp_path):
    noise().save(tmp_path / "good.png")
    (tmp_path / "album.png").mkdir()
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"image": "album.png"}\n{"image": "good.png"}\n')
    results = load_all(manifest=str(manifest))
    assert "folder" in assert_rejected(results["album.png"], "unreadable").detail
    assert_accepted(results["good.png"])


def test_each_file_is_opened_once(folder, monkeypatch):
    opened = []
    real_open = os.open
    monkeypatch.setattr(
        os, "open", lambda path, *args, **kw: opened.append(path) or real_open(path, *args, **kw)
    )
    assert_accepted(load_folder(folder)["good.png"])
    assert [os.fspath(path) for path in opened] == [str(folder / "good.png")]


# --- folder order --------------------------------------------------------------------------------


def test_folder_order_is_sorted_relative_paths(tmp_path):
    names = ["b/z.JPG", "a.png", "b/a.Png", "B.jpeg", "c/d/e.webp", "a/x.gif"]
    for name in reversed(names):  # creation order must not matter
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")  # contents do not matter for listing
    (tmp_path / "readme.txt").write_text("not an input")
    os.symlink(".", tmp_path / "b" / "again")  # a cycle must not loop or double-count
    os.symlink(tmp_path / "c", tmp_path / "d_same_as_c")  # followed, but c's files are listed once
    first = open_source(ImageSourceArguments(image_folder=str(tmp_path))).items()
    second = open_source(ImageSourceArguments(image_folder=str(tmp_path))).items()
    assert [item.source for item in first] == sorted(names)
    assert [item.index for item in first] == list(range(len(names)))
    assert first == second


# --- manifests -----------------------------------------------------------------------------------


@pytest.fixture
def manifest_tree(tmp_path):
    """A manifest folder with good images and an image just outside it."""
    root = tmp_path / "set"
    (root / "sub").mkdir(parents=True)
    noise().save(root / "good.png")
    noise(seed=1).save(root / "sub" / "nested.png")
    noise(seed=2).save(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", root / "link_out.png")
    os.symlink(root / "sub" / "nested.png", root / "link_in.png")
    return root


def test_manifest_rows_are_checked_against_the_manifest_folder(manifest_tree):
    rows = [
        {"image": "good.png", "id": "g1", "instruction": "What colour?", "reference": "Grey."},
        {"image": "sub/nested.png"},
        {"image": "missing.png"},
        {"image": "../outside.png"},  # exists, but outside the folder
        {"image": str(manifest_tree.parent / "outside.png")},
        {"image": "link_out.png"},
        {"image": "link_in.png"},
        {"image": str(manifest_tree / "good.png")},  # absolute, but inside: fine
        {"image": "sub/../../outside.png"},
        {"image": "loop.png"},
    ]
    os.symlink("loop.png", manifest_tree / "loop.png")
    manifest = manifest_tree / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    source = open_source(ImageSourceArguments(manifest=str(manifest)))
    items = source.items()
    assert (items[0].explicit_id, items[0].instruction, items[0].reference) == ("g1", "What colour?", "Grey.")
    results = [source.load(item) for item in items]
    for position in (0, 1, 6, 7):
        assert_accepted(results[position])
    assert_rejected(results[2], "missing_file")
    for position in (3, 4, 8):
        assert "outside the manifest's folder" in assert_rejected(results[position], "outside_root").detail
    assert "symlink" in assert_rejected(results[5], "outside_root").detail
    assert_rejected(results[9], "unreadable")
    assert str(manifest_tree) not in results[4].detail  # local paths stay out of the rejects file


def test_csv_manifest(manifest_tree):
    manifest = manifest_tree / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "instruction", "reference"])
        writer.writerow(["good.png", "Describe it,\nbriefly.", ""])
        writer.writerow(["../outside.png", "", ""])
    source = open_source(ImageSourceArguments(manifest=str(manifest)))
    first, second = source.items()
    assert first.instruction == "Describe it,\nbriefly." and first.reference is None
    assert_accepted(source.load(first))
    assert_rejected(source.load(second), "outside_root")


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("m.jsonl", '{"image": "a.png"}\n{"image": "b.png",\n', r"m\.jsonl line 2: not valid JSON"),
        ("m.jsonl", '{"image": "a.png"}\n\n{"instruction": "hi"}\n', r"line 3: missing the 'image' field"),
        ("m.jsonl", '["a.png"]\n', "line 1: expected a JSON object"),
        ("m.jsonl", '{"image": "a.png", "instrution": "hi"}\n', "unknown field 'instrution'.*'instruction'"),
        (
            "m.jsonl",
            '{"image": "a.png", "id": "x"}\n{"image": "b.png", "id": "x"}\n',
            "line 2: id 'x'.*line 1",
        ),
        ("m.csv", "path,instruction\na.png,hi\n", "line 1: unknown field 'path'"),
        ("m.csv", "image,instruction\na.png,hi\n,hello\n", "line 3: missing the 'image' field"),
        ("m.csv", "image\na.png,extra\n", "line 2: more cells than the header has columns"),
        ("m.txt", "a.png\n", "must end in .jsonl or .csv"),
    ],
)
def test_malformed_manifest_names_the_line(tmp_path, name, text, message):
    manifest = tmp_path / name
    manifest.write_text(text)
    with pytest.raises(SelfAlignError, match=message):
        open_source(ImageSourceArguments(manifest=str(manifest)))


# --- datasets ------------------------------------------------------------------------------------


def test_dataset_source_with_a_corrupt_row(tmp_path):
    good = encoded(noise(), "PNG")
    rows = {
        "image": [
            {"bytes": good, "path": None},
            {"bytes": good[: len(good) // 2], "path": None},
            {"bytes": b"definitely not an image", "path": None},
            None,
        ],
        "instruction": ["What is shown?", None, None, None],
        "rating": [5, 1, 1, 2],
    }
    features = Features({"image": Image(), "instruction": Value("string"), "rating": Value("int32")})
    (tmp_path / "data").mkdir()
    Dataset.from_dict(rows, features=features).to_parquet(
        str(tmp_path / "data" / "train-00000-of-00001.parquet")
    )

    source = open_source(ImageSourceArguments(dataset_name=str(tmp_path)))
    items = source.items()
    assert [item.source for item in items] == ["row 0", "row 1", "row 2", "row 3"]
    assert items[0].instruction == "What is shown?" and items[1].instruction is None
    loaded = assert_accepted(source.load(items[0]))
    assert loaded.content_hash == compute_content_hash(noise())
    assert_rejected(source.load(items[1]), "truncated")
    assert_rejected(source.load(items[2]), "not_an_image")
    assert_rejected(source.load(items[3]), "missing_file")

    with pytest.raises(
        SelfAlignError, match="no image column 'picture'; its columns are: image, instruction, rating"
    ):
        open_source(ImageSourceArguments(dataset_name=str(tmp_path), image_column="picture"))
    with pytest.raises(SelfAlignError, match="not one image per row"):
        open_source(ImageSourceArguments(dataset_name=str(tmp_path), image_column="rating"))


# --- arguments and prompts -----------------------------------------------------------------------


def test_open_source_rejects_bad_arguments(tmp_path, folder):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "images/good.png"}\n')
    cases = [
        ({}, "set exactly one of image_folder, manifest, dataset_name.*set: none"),
        ({"image_folder": str(folder), "manifest": str(manifest)}, r"set: image_folder, manifest\)"),
        ({"image_folder": str(tmp_path / "nope")}, "is not an existing folder"),
        ({"manifest": str(tmp_path / "nope.jsonl")}, "is not an existing file"),
        (
            {"image_folder": str(folder), "prompt_set": "poetry"},
            "unknown prompt set 'poetry'.*caption, describe",
        ),
        ({"image_folder": str(folder), "reject_below_side": 40}, "reject_below_side <= min_image_side"),
    ]
    for arguments, message in cases:
        with pytest.raises(SelfAlignError, match=message):
            open_source(ImageSourceArguments(**arguments))
    (folder / "only_text").mkdir()
    (folder / "only_text" / "notes.txt").write_text("no images here")
    with pytest.raises(SelfAlignError, match="holds no inputs"):
        open_source(ImageSourceArguments(image_folder=str(folder / "only_text")))


def test_prompt_sets_and_row_ids():
    assert 8 <= len(PROMPT_SETS["describe"]) <= 12
    hashes = [compute_content_hash(noise((4, 4), seed)) for seed in range(40)]
    chosen = [prompt_for("describe", content_hash) for content_hash in hashes]
    assert chosen == [prompt_for("describe", content_hash) for content_hash in hashes]  # deterministic
    assert set(chosen) <= set(PROMPT_SETS["describe"]) and len(set(chosen)) > 3  # spread over the set

    identifier = row_id(hashes[0], chosen[0])
    assert len(identifier) == 16 and int(identifier, 16) >= 0
    assert identifier == row_id(hashes[0], chosen[0])
    assert identifier != row_id(hashes[0], chosen[0] + " ") != row_id(hashes[1], chosen[0])

    with pytest.raises(
        SelfAlignError, match="unknown prompt set 'nope'; the known prompt sets are: caption, describe"
    ):
        prompt_for("nope", hashes[0])


def test_prompt_of_prefers_the_inputs_instruction():
    image = noise()
    content_hash = compute_content_hash(image)
    with_instruction = LoadedImage(SourceItem(0, "row 0", instruction="How many?"), image, content_hash)
    without = LoadedImage(SourceItem(0, "row 0"), image, content_hash)
    assert prompt_of(with_instruction, "describe") == "How many?"
    assert prompt_of(without, "describe") == prompt_for("describe", content_hash)
    with pytest.raises(
        SelfAlignError, match="row 0: the input has no instruction and the recipe sets no prompt_set"
    ):
        prompt_of(without, None)
