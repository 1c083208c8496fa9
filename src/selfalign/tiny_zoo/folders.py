"""Building into a folder: what a build's bytes depend on, written to a marker file last, and the
reuse of a folder that holds a complete build of the same spec."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import tokenizers
import torch
import transformers

from selfalign.tiny_zoo.configs import DEFAULT_PRESET

BUILD_MARKER = "tiny_zoo_build.json"


def build_spec(name: str, seed: int, preset: str = DEFAULT_PRESET) -> dict:
    """What determines a build's bytes: the package's code, the seed, the size preset and the library versions."""
    # Every module of the package, as a build's bytes come from several of them (a change to data.py,
    # which builds no model, only costs a needless rebuild).
    code_hash = hashlib.sha256()
    for module in sorted(Path(__file__).parent.glob("*.py")):
        code_hash.update(module.name.encode() + b"\0" + module.read_bytes())
    return {
        "name": name,
        "seed": seed,
        "preset": preset,
        "code_sha256": code_hash.hexdigest(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


def _is_complete_build(folder: Path, spec: dict) -> bool:
    marker = folder / BUILD_MARKER
    return marker.is_file() and json.loads(marker.read_text()) == spec


def build_into(output_dir: str | Path, spec: dict, write_files: Callable[[Path], None]) -> Path:
    """Write a build into a temporary sibling folder, add the marker last, then move it into place.

    An interrupted build never leaves a half-written ``output_dir``; an older build (another seed or
    version) is replaced, but a folder that holds something else is never deleted.
    """
    output_dir = Path(output_dir)
    if _is_complete_build(output_dir, spec):
        return output_dir
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / BUILD_MARKER).is_file():
        raise FileExistsError(
            f"{output_dir} is not empty and holds no tiny-zoo build; refusing to overwrite it"
        )
    staging = output_dir.with_name(f".{output_dir.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)  # left over by an interrupted build
    staging.mkdir(parents=True)
    try:
        write_files(staging)
        (staging / BUILD_MARKER).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir
