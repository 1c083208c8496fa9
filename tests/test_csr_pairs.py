"""dataset_builders/csr_pairs.py on tiny models: sentence trees -> CLIP-calibrated pairs -> a DPO-ready dataset."""

import json
import re
import shutil

import pytest
from datasets import load_dataset
from helpers import REPO, run_builder

from selfalign.pairs import NO_PAIR_REASONS


def csr_args(image_folder, tiny_model_dirs, tiny_clip_dir, output_dir, *extra: str) -> list[str]:
    return [
        "--config", str(REPO / "recipes" / "tiny" / "csr" / "pairs.yaml"),
        "--image_folder", str(image_folder),
        "--policy_model", str(tiny_model_dirs["llava"]),
        "--clip_model", str(tiny_clip_dir),
        "--output_dir", str(output_dir),
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def built(image_folder, tiny_model_dirs, tiny_clip_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("csr") / "pairs"
    result = run_builder("csr_pairs", *csr_args(image_folder, tiny_model_dirs, tiny_clip_dir, output))
    return output, result


def test_pairs_are_trl_preference_rows_with_csr_provenance(built):
    output, result = built
    rows = load_dataset(str(output), split="train")
    assert len(rows) == 24  # the 24 distinct images of the folder; the duplicate and bad files rejected
    for row in rows:
        assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"][0]["type"] == "image"
        chosen, rejected = row["chosen"][0], row["rejected"][0]
        assert chosen["role"] == rejected["role"] == "assistant"
        assert chosen["content"][0]["text"] != rejected["content"][0]["text"]
        # Rank fusion: lower is better, so the chosen path scores below the rejected one.
        assert row["chosen_score"] < row["rejected_score"]
        assert row["num_candidates"] >= 2 and row["num_nodes"] > row["num_candidates"]
        assert (row["method"], row["iteration"]) == ("csr", 1)
        # Rows name models, never local paths.
        assert (row["policy_model"], row["scorer_model"]) == ("llava", "clip")
    # Each batch of prompts encodes its images once for the whole tree search, never once per node.
    calls, images = map(
        int, re.search(r"(\d+) vision encoder calls for (\d+) images", result.stderr).groups()
    )
    assert images == 25 and calls == 7  # 25 loaded images (the duplicate too) in shards of 4: 7 batches


def test_the_card_says_how_pairs_were_chosen_and_plots_clip_scores(built):
    output, _ = built
    card = (output / "README.md").read_text()
    assert "rank fusion as in the released code" in card and "a = 0.9" in card
    assert "Statistics of `chosen_clip_score`, `rejected_clip_score`" in card
    assert (output / "score_distribution.png").read_bytes().startswith(b"\x89PNG")
    assert "| scorer | `clip` (a local folder) |" in card


def test_same_pairs_whatever_the_batch_size(built, image_folder, tiny_model_dirs, tiny_clip_dir, tmp_path):
    """Each row grows its tree from its own seed, so the batch does not choose its samples. Padding still
    changes the last bits of the logits; a near-uniform tiny model occasionally flips a sampled token on
    that (selfalign.samples.tree.rules, "Determinism"), so a row or two may differ, not the dataset."""
    output, _ = built
    other = tmp_path / "batch1"
    run_builder(
        "csr_pairs", *csr_args(image_folder, tiny_model_dirs, tiny_clip_dir, other, "--batch_size", "1")
    )
    columns = ["id", "chosen", "rejected", "num_nodes"]
    batched = load_dataset(str(output), split="train").select_columns(columns).to_list()
    one_by_one = load_dataset(str(other), split="train").select_columns(columns).to_list()
    assert [row["id"] for row in one_by_one] == [row["id"] for row in batched]
    assert sum(a == b for a, b in zip(one_by_one, batched, strict=True)) >= len(batched) - 2


def test_a_resumed_build_counts_what_every_shard_dropped(
    built, image_folder, tiny_model_dirs, tiny_clip_dir, tmp_path
):
    """The card's cleaning tallies cover every shard, not only those the resumed run built."""
    output, _ = built
    resumed = tmp_path / "resumed"
    shutil.copytree(output / "shards", resumed / "shards")
    (resumed / "shards" / "shard-00000.parquet").unlink()  # the run was killed before shard 0 finished
    run_builder("csr_pairs", *csr_args(image_folder, tiny_model_dirs, tiny_clip_dir, resumed))

    def dropped(folder) -> int:
        card = (folder / "README.md").read_text()
        return int(re.search(r"cleaning rules, with their subtrees: (\d+)", card).group(1))

    redone = json.loads((resumed / "shards" / "shard-00000.counts.json").read_text())
    assert dropped(output) > sum(count for reason, count in redone.items() if reason != "truncated")
    assert dropped(resumed) == dropped(output)


def test_trees_without_a_pair_are_rejected_with_their_reason(
    image_folder, tiny_model_dirs, tiny_clip_dir, tmp_path
):
    # One child per node: every tree is a single response, nothing to compare.
    output = tmp_path / "single"
    run_builder(
        "csr_pairs", *csr_args(image_folder, tiny_model_dirs, tiny_clip_dir, output, "--children", "1")
    )
    rejects = [json.loads(line) for line in (output / "rejects.jsonl").read_text().splitlines()]
    # The 24 distinct images and the duplicate (only a row could show it to be one).
    assert sum(reject["reason"] == "single_path" for reject in rejects) == 25
    card = (output / "README.md").read_text()
    assert "single_path" in card and NO_PAIR_REASONS["single_path"] in card


@pytest.mark.parametrize("size", ["7b", "13b"])
def test_the_seed_pairs_recipe_runs_on_the_tiny_llava(
    size, image_folder, tiny_model_dirs, tiny_clip_dir, tmp_path
):
    """The llava-1.5 recipe unchanged but for the models, the images, bf16 and the length caps."""
    output = tmp_path / "pairs"
    run_builder("csr_pairs", "--config", str(REPO / "recipes" / f"llava-1.5-{size}" / "csr" / "pairs.yaml"),
                "--policy_model", str(tiny_model_dirs["llava"]), "--clip_model", str(tiny_clip_dir),
                "--image_folder", str(image_folder), "--dtype", "float32", "--output_dir", str(output),
                "--max_depth", "2", "--max_sentence_tokens", "8", "--max_total_tokens", "16",
                "--sentence_ends", "e")  # fmt: skip
    rows = load_dataset(str(output), split="train")
    assert len(rows) > 0 and set(rows["fusion"]) == {"rank (clip_weight 0.9)"}
    # Children drawn as released: diverse decoding, and the card says so.
    assert "diverse greedy decoding with diversity penalty 3.0" in (output / "README.md").read_text()
