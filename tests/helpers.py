"""Small helpers shared by the tests."""

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """Import `scripts/<name>.py` as a module, so tests can call its `main()` in-process."""
    path = REPO / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"selfalign_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args: str, cwd: Path | None = None, env: dict | None = None):
    """Run `scripts/<name>.py` the way a user does; return the CompletedProcess."""
    import subprocess

    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / f"{name}.py"), *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_builder(name: str, *args: str, launcher: tuple[str, ...] = (), env: dict[str, str] | None = None):
    """Run `dataset_builders/<name>.py` the way a user does (optionally under a launcher such as
    torchrun, with `env` added to the environment); fail the test with its stderr if it fails; return
    the CompletedProcess."""
    import os
    import subprocess

    command = [*launcher, str(REPO / "dataset_builders" / f"{name}.py"), *args]
    if not launcher:
        command.insert(0, sys.executable)
    result = subprocess.run(
        command, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def describe_inputs(processor, image):
    """Model inputs asking a VLM to describe `image`, as the card's usage snippet builds them."""
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(images=[image], text=prompt, return_tensors="pt")
