"""Test session setup: an offline Hub on 127.0.0.1 and the tiny model zoo.

The Hub client libraries read their endpoint, token and cache paths when first imported, so the
environment is set here, at conftest import, before any test module imports them.
"""

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="selfalign-tests-"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HUB_PORT = _free_port()
HUB_TOKEN = "hf_selfalign_test_token"
os.environ.update(
    {
        "HF_ENDPOINT": f"http://127.0.0.1:{HUB_PORT}",
        "HF_TOKEN": HUB_TOKEN,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(_SESSION_DIR / "hf_home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_DISABLED": "true",
        "TRACKIO_DISABLED": "true",
    }
)
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.pop("HF_DATASETS_OFFLINE", None)
os.environ.pop("TRANSFORMERS_OFFLINE", None)


@pytest.fixture(scope="session")
def hub_server():
    """A running Hub-compatible server on 127.0.0.1, for the whole test session."""
    from selfalign.hub_server import HubServer

    with HubServer(data_dir=_SESSION_DIR / "hub_data", port=HUB_PORT) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_model_dirs() -> dict[str, Path]:
    """Every tiny model family, built once per session: {family: folder}."""
    from selfalign.tiny_zoo import FAMILIES, build_tiny_model

    root = _SESSION_DIR / "tiny_models"
    return {family: build_tiny_model(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_clip_dir() -> Path:
    from selfalign.tiny_zoo import build_tiny_clip

    return build_tiny_clip(_SESSION_DIR / "tiny_models" / "clip")


@pytest.fixture(scope="session")
def local_datasets(tmp_path_factory) -> dict[str, Path]:
    """The tiny preference and SFT sets, written in Hub layout to local folders."""
    from selfalign.tiny_zoo.data import preference_dataset, save_hub_layout, sft_dataset

    root = tmp_path_factory.mktemp("datasets")
    return {
        "dpo": save_hub_layout(preference_dataset(num_rows=4, seed=1), root / "pairs"),
        "sft": save_hub_layout(sft_dataset(num_rows=4, seed=1), root / "sft"),
    }


def pytest_sessionfinish(session, exitstatus):
    import shutil

    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """24 distinct shape images (3 sizes, 2 of them not square) in nested folders, one exact duplicate
    and three bad files: what the image builders are run on."""
    from selfalign.tiny_zoo.data import COLOURS, SHAPES, draw_shape

    folder = tmp_path_factory.mktemp("images")
    for colour in COLOURS:
        for shape in SHAPES:
            for size in [(48, 48), (64, 40), (40, 64)]:
                subfolder = folder / colour
                subfolder.mkdir(exist_ok=True)
                draw_shape(colour, shape, size).save(subfolder / f"{shape}-{size[0]}x{size[1]}.png")
    shutil.copy(folder / "red" / "circle-48x48.png", folder / "red" / "copy-of-circle.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    (folder / "truncated.png").write_bytes((folder / "blue" / "square-48x48.png").read_bytes()[:100])
    return folder
