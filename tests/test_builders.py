"""The builder runner under real builders: resume after SIGKILL, 1 vs 2 processes, rejects, republishing."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
from datasets import load_dataset
from helpers import REPO, run_builder
from huggingface_hub import HfApi


def samples_args(image_folder: Path, policy: Path, output_dir: Path) -> list[str]:
    return [
        "--config", str(REPO / "recipes" / "tiny" / "samples.yaml"),
        "--image_folder", str(image_folder),
        "--policy_model", str(policy),
        "--output_dir", str(output_dir),
    ]  # fmt: skip


def rows_of(folder: Path) -> list[dict]:
    """Every row of a built dataset, images as pixel arrays, read like a user would."""
    rows = load_dataset(str(folder), split="train").to_list()
    for row in rows:
        for key in ("image", "images"):
            if key in row:
                images = row[key] if isinstance(row[key], list) else [row[key]]
                row[key] = [np.asarray(image).tolist() for image in images]
    return rows


def test_images_builder_keeps_good_inputs_and_reports_the_rest(image_folder, tmp_path):
    output = tmp_path / "images"
    run_builder("images", "--config", str(REPO / "recipes" / "tiny" / "images.yaml"),
                "--image_folder", str(image_folder), "--output_dir", str(output), "--shard_size", "5")  # fmt: skip

    rows = load_dataset(str(output), split="train")
    assert len(rows) == 24
    assert len(set(rows["id"])) == 24
    assert all(text for text in rows["instruction"]), "every image gets a prompt from the prompt set"
    rejects = [json.loads(line) for line in (output / "rejects.jsonl").read_text().splitlines()]
    assert sorted((r["source"], r["reason"]) for r in rejects) == [
        ("empty.png", "empty_file"),
        ("notes.jpg", "not_an_image"),
        ("red/copy-of-circle.png", "duplicate"),
        ("truncated.png", "truncated"),
    ]
    card = (output / "README.md").read_text()
    for reason in ("empty_file", "not_an_image", "duplicate", "truncated"):
        assert reason in card


def test_killed_build_resumes_to_the_same_dataset(image_folder, tiny_model_dirs, tmp_path):
    policy = tiny_model_dirs["qwen2_vl"]
    reference = tmp_path / "uninterrupted"
    run_builder("samples", *samples_args(image_folder, policy, reference))

    interrupted = tmp_path / "interrupted"
    command = [
        sys.executable,
        str(REPO / "dataset_builders" / "samples.py"),
        *samples_args(image_folder, policy, interrupted),
    ]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = interrupted / "shards"
    deadline = time.monotonic() + 300
    while len(list(shards.glob("shard-*.parquet"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished_before_kill = len(list(shards.glob("shard-*.parquet")))
    assert 2 <= finished_before_kill < 7, "the kill must land mid-run"
    assert not (interrupted / "README.md").exists()

    result = run_builder("samples", *samples_args(image_folder, policy, interrupted))
    assert rows_of(interrupted) == rows_of(reference)
    assert (interrupted / "rejects.jsonl").read_text() == (reference / "rejects.jsonl").read_text()
    assert "building" in result.stderr  # the progress bar


def test_two_processes_build_the_same_dataset_as_one(image_folder, tiny_model_dirs, tmp_path):
    policy = tiny_model_dirs["qwen2_vl"]
    one, two = tmp_path / "one", tmp_path / "two"
    # One thread per process in both runs, as torchrun sets by default: a float sum's rounding depends
    # on how many threads share it (about 1e-6 on a log-probability), whatever the sharding does.
    one_thread = {"OMP_NUM_THREADS": "1"}
    run_builder("samples", *samples_args(image_folder, policy, one), env=one_thread)
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    result = run_builder(
        "samples", *samples_args(image_folder, policy, two), launcher=torchrun, env=one_thread
    )

    assert "process 0 of 2" in result.stderr and "process 1 of 2" in result.stderr
    assert rows_of(two) == rows_of(one)
    assert sorted(p.name for p in (two / "data").iterdir()) == sorted(
        p.name for p in (one / "data").iterdir()
    )


def test_republishing_a_finished_build_makes_no_new_commit(hub_server, image_folder, tmp_path):
    repo_id = f"tests/images-{uuid.uuid4().hex[:8]}"
    args = ["--config", str(REPO / "recipes" / "tiny" / "images.yaml"), "--image_folder", str(image_folder),
            "--output_dir", str(tmp_path / "out"), "--push_to_hub", "true", "--hub_dataset_id", repo_id]  # fmt: skip
    published = run_builder("images", *args)
    # The HTTP client's line per Hub request is silenced; the builder's own progress is not.
    assert "HTTP Request" not in published.stderr and "rows written" in published.stderr
    commits = HfApi().list_repo_commits(repo_id, repo_type="dataset")
    run_builder("images", *args)
    assert HfApi().list_repo_commits(repo_id, repo_type="dataset") == commits
    assert len(load_dataset(repo_id, split="train")) == 24


def test_finished_shards_are_not_mixed_with_another_builds(image_folder, tmp_path):
    args = ["--config", str(REPO / "recipes" / "tiny" / "images.yaml"), "--image_folder", str(image_folder),
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    run_builder("images", *args)
    changed = subprocess.run(
        [sys.executable, str(REPO / "dataset_builders" / "images.py"), *args, "--prompt_set", "caption"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert changed.returncode != 0
    assert "Traceback" not in changed.stderr
    assert "holds shards of a build with other settings" in changed.stderr


def test_ids_come_from_content_and_prompt_whatever_ids_the_source_gives(image_folder, tmp_path):
    """Two questions on one image are two rows; one image under two given ids is one row."""
    manifest = image_folder / "manifest.jsonl"
    rows = [
        {"image": "red/circle-48x48.png", "id": "q1", "instruction": "What colour is the circle?"},
        {"image": "red/circle-48x48.png", "id": "q2", "instruction": "What shape is it?"},
        {"image": "blue/square-48x48.png", "id": "img-a", "instruction": "Describe it."},
        {"image": "blue/square-48x48.png", "id": "img-b", "instruction": "Describe it."},
    ]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "out"
    run_builder("images", "--manifest", str(manifest), "--output_dir", str(output))
    manifest.unlink()

    built = load_dataset(str(output), split="train")
    assert built["source_id"] == ["q1", "q2", "img-a"]
    assert len(set(built["id"])) == 3
    rejects = [json.loads(line) for line in (output / "rejects.jsonl").read_text().splitlines()]
    assert [(r["source"], r["reason"]) for r in rejects] == [("blue/square-48x48.png", "duplicate")]
