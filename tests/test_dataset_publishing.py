"""A preference set from builder shards to the Hub: layout, card, plot, one-commit pushes, DPO training.

The shards are made the way the builder runner makes them (`Dataset.from_list(...).to_parquet`), in
TRL's conversational vision format with provenance columns (DESIGN.md §3).
"""

import json
import logging
import uuid
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict, Features, Image, List, Value, load_dataset
from huggingface_hub import DatasetCard, DatasetCardData, HfApi

from selfalign.errors import SelfAlignError
from selfalign.publish.dataset import push_dataset, size_category, write_hub_layout
from selfalign.publish.dataset_card import DatasetCardInfo, write_dataset_card
from selfalign.tiny_zoo.data import COLOURS, draw_shape

TURN = List({"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})})
FEATURES = Features(
    {
        "id": Value("string"),
        "images": List(Image()),
        "prompt": TURN,
        "chosen": TURN,
        "rejected": TURN,
        "method": Value("string"),
        "chosen_score": Value("float64"),
        "rejected_score": Value("float64"),
        "num_candidates": Value("int32"),
    }
)
SIZES = [(48, 48), (64, 40), (40, 64), (56, 36)]
REJECTIONS = [
    {"source": "broken.jpg", "reason": "truncated", "detail": "image file is truncated"},
    {"source": "empty.png", "reason": "empty_file", "detail": "0 bytes"},
    {"source": "tiny.png", "reason": "too_small", "detail": "4x4 is below reject_below_side 8"},
    {"source": "copy.png", "reason": "duplicate", "detail": "same image and prompt as a.png"},
]


def preference_rows(count: int, *, seed: int) -> list[dict]:
    """Rows of the preference contract; chosen names the shape's colour, rejected a wrong one."""
    rng = np.random.default_rng(seed)
    colours, rows = list(COLOURS), []
    for index in range(count):
        colour, wrong = rng.choice(colours, size=2, replace=False)
        shape = ("circle", "square")[index % 2]
        prompt = "Describe the image."
        rows.append(
            {
                "id": f"{seed}-{index:04d}",
                "images": [draw_shape(colour, shape, SIZES[index % len(SIZES)])],
                "prompt": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
                ],
                "chosen": [
                    {"role": "assistant", "content": [{"type": "text", "text": f"A {colour} {shape}."}]}
                ],
                "rejected": [
                    {"role": "assistant", "content": [{"type": "text", "text": f"A {wrong} {shape}."}]}
                ],
                "method": "csr",
                "chosen_score": float(rng.normal(0.8, 0.1)),
                "rejected_score": float(rng.normal(0.3, 0.1)),
                "num_candidates": 5,
            }
        )
    return rows


def write_shards(rows: list[dict], folder: Path, sizes: list[int]) -> list[Path]:
    """The rows cut into shards of `sizes` rows (0 is an empty shard), written as the runner does."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, start = [], 0
    for index, size in enumerate(sizes):
        path = folder / f"shard-{index:05d}.parquet"
        part = rows[start : start + size]
        shard = (
            Dataset.from_list(part, features=FEATURES)
            if part
            else Dataset.from_dict({name: [] for name in FEATURES}, features=FEATURES)
        )
        shard.to_parquet(str(path))
        paths.append(path)
        start += size
    assert start == len(rows)
    return paths


def card_info(**changes) -> DatasetCardInfo:
    values = {
        "pretty_name": "Tiny CSR pairs",
        "builder": "dataset_builders/csr_pairs.py",
        "recipe": {"num_beams": 5, "clip_weight": 0.9, "prompt_set": "describe"},
        "models": {"policy": "tiny/qwen2-vl@0123abcd", "scorer": "tiny/clip@4567ef01"},
        "method": "csr",
        "rejections": {"truncated": 1, "empty_file": 1, "too_small": 1, "duplicate": 1},
        "tags": ("shapes",),
        "license": "apache-2.0",
        "description": "Preference pairs over coloured shapes, for tests.",
    }
    return DatasetCardInfo(**{**values, **changes})


def build(folder: Path, rows: list[dict], *, config_name="default", split="train", info=None) -> Path:
    """What a builder does at the end: shards -> Hub layout + rejects file + card."""
    first = min(4, len(rows))
    shards = write_shards(
        rows, folder / "shards", [first, 0, len(rows) - first]
    )  # runners make empty shards too
    write_hub_layout(shards, folder, split=split, config_name=config_name, rows_per_file=4)
    (folder / "rejects.jsonl").write_text("".join(json.dumps(line) + "\n" for line in REJECTIONS))
    write_dataset_card(folder, info or card_info(), split=split, config_name=config_name)
    return folder


def assert_same_rows(loaded, expected: list[dict]) -> None:
    """Same values in the same order, and the same pixels in every image."""
    loaded = list(loaded)
    assert len(loaded) == len(expected)
    for row, want in zip(loaded, expected, strict=True):
        assert {key: value for key, value in row.items() if key != "images"} == {
            key: value for key, value in want.items() if key != "images"
        }
        assert [image.size for image in row["images"]] == [image.size for image in want["images"]]
        for image, want_image in zip(row["images"], want["images"], strict=True):
            np.testing.assert_array_equal(np.asarray(image.convert("RGB")), np.asarray(want_image))


def normalised_turns(rows: list[dict]) -> list[dict]:
    """Rows as `datasets` gives them back: a missing struct field comes back as None."""
    for row in rows:
        for column in ("prompt", "chosen", "rejected"):
            for turn in row[column]:
                turn["content"] = [
                    {"type": part["type"], "text": part.get("text")} for part in turn["content"]
                ]
    return rows


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return normalised_turns(preference_rows(10, seed=0))


@pytest.fixture(scope="module")
def built(rows, tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("pairs"), rows)


@pytest.fixture(scope="module")
def published(built, hub_server) -> str:
    repo_id = f"tests/pairs-{uuid.uuid4().hex[:8]}"
    push_dataset(built, repo_id, private=True, commit_message="Tiny CSR pairs")
    return repo_id


def test_hub_layout_loads_as_the_concatenated_shards_with_deterministic_bytes(built, rows, tmp_path):
    files = sorted(path.relative_to(built).as_posix() for path in (built / "data").iterdir())
    assert files == [f"data/train-{index:05d}-of-00003.parquet" for index in range(3)]
    loaded = load_dataset(str(built), split="train")
    assert loaded.features == FEATURES
    assert_same_rows(loaded, rows)

    # The same rows, shards cut elsewhere: byte-identical files.
    again = tmp_path / "again"
    write_hub_layout(write_shards(rows, tmp_path / "shards", [3, 3, 3, 1]), again, rows_per_file=4)
    for name in files:
        assert (again / name).read_bytes() == (built / name).read_bytes()

    # Rewriting with bigger files leaves no stale file behind.
    written = write_hub_layout(write_shards(rows, tmp_path / "shards2", [10]), again, rows_per_file=100)
    assert (
        [path.name for path in (again / "data").iterdir()]
        == ["train-00000-of-00001.parquet"]
        == [path.name for path in written]
    )
    assert_same_rows(load_dataset(str(again), split="train"), rows)


def test_layout_refuses_shards_that_disagree_and_bad_names(rows, tmp_path):
    good = write_shards(rows[:2], tmp_path / "a", [2])
    other = tmp_path / "other.parquet"
    Dataset.from_list([{"id": "x"}]).to_parquet(str(other))
    with pytest.raises(SelfAlignError, match="different columns"):
        write_hub_layout([*good, other], tmp_path / "out")
    with pytest.raises(SelfAlignError, match="not a valid split name"):
        write_hub_layout(good, tmp_path / "out", split="train-2")


def test_card_metadata_statistics_plot_and_rejections(built, rows, hub_server, monkeypatch):
    card = DatasetCard.load(built / "README.md")
    card.validate(repo_type="dataset")
    assert DatasetCardData(**card.data.to_dict()).to_dict() == card.data.to_dict()
    data = card.data
    assert data.license == "apache-2.0"
    assert data.task_categories == ["image-text-to-text"]
    assert {"vlm", "dpo", "preference", "csr", "shapes"} <= set(data.tags)
    assert data.size_categories == ["n<1K"]
    known_sizes = json.loads(
        (Path(datasets.__file__).parent / "utils/resources/size_categories.json").read_text()
    )
    assert {size_category(10**power) for power in range(14)} == set(known_sizes) - {"unknown"}
    assert data.configs == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}
    ]
    assert [(split["name"], split["num_examples"]) for split in data.dataset_info["splits"]] == [
        ("train", 10)
    ]

    chosen = np.array([row["chosen_score"] for row in rows])
    margin = chosen - np.array([row["rejected_score"] for row in rows])
    assert f"| mean | {chosen.mean():.4g} |" in card.text
    assert f"| {np.median(margin):.4g} |" in card.text
    assert "| count | 10 | 10 | 10 |" in card.text
    assert "![Histograms of chosen and rejected scores](score_distribution.png)" in card.text
    assert "4 inputs were rejected" in card.text
    assert "| truncated | 1 |" in card.text and "[rejects.jsonl](rejects.jsonl)" in card.text
    assert "| policy | [tiny/qwen2-vl](https://huggingface.co/tiny/qwen2-vl) | 0123abcd |" in card.text
    assert "clip_weight: 0.9" in card.text

    # A second render of the same data is byte-identical, plot included, and reads only the score
    # columns beyond the Parquet footers.
    first_card, first_plot = (
        (built / "README.md").read_bytes(),
        (built / "score_distribution.png").read_bytes(),
    )
    assert first_plot.startswith(b"\x89PNG")
    read_columns = []
    read_table = pq.read_table
    monkeypatch.setattr(
        pq,
        "read_table",
        lambda *args, **kwargs: read_columns.append(kwargs.get("columns")) or read_table(*args, **kwargs),
    )
    write_dataset_card(built, card_info())
    assert read_columns and all(columns == ["chosen_score", "rejected_score"] for columns in read_columns)
    assert (built / "README.md").read_bytes() == first_card
    assert (built / "score_distribution.png").read_bytes() == first_plot


def test_card_without_scores_local_paths_and_secrets(tmp_path):
    images_only = Features({"id": Value("string"), "images": List(Image())})
    shard = tmp_path / "shard-00000.parquet"
    Dataset.from_list(
        [{"id": "a", "images": [draw_shape("red", "circle", (32, 32))]}], features=images_only
    ).to_parquet(str(shard))
    output = tmp_path / "images"
    write_hub_layout([shard], output)
    local_model = tmp_path / "my_policy"
    local_model.mkdir()
    info = card_info(
        recipe={
            "image_folder": str(tmp_path),
            "hub_token": "hf_not_for_cards",
            "api_key": "x",
            "seed": 3,
            "max_new_tokens": 64,  # a count of tokens, not a credential
        },
        models={"policy": f"{local_model}@main"},
        method=None,
        rejections={},
        tags=(),
    )

    card = DatasetCard.load(write_dataset_card(output, info))

    assert "## Scores" not in card.text and not (output / "score_distribution.png").exists()
    assert {"dpo", "preference"}.isdisjoint(card.data.tags)
    assert f"image_folder: {tmp_path.name}" in card.text and str(tmp_path) not in card.text
    assert "hf_not_for_cards" not in card.text and "`hub_token` is left out" in card.text
    assert "`api_key` is left out" in card.text
    assert "max_new_tokens: 64" in card.text
    assert "| policy | `my_policy` (a local folder) | main |" in card.text
    assert "No input was rejected." in card.text


def test_scores_that_are_missing_or_infinite_are_left_out_of_the_statistics(tmp_path):
    rows = preference_rows(4, seed=5)
    rows[1]["rejected_score"] = float("-inf")
    rows[2]["chosen_score"] = None
    output = tmp_path / "out"
    write_hub_layout(write_shards(rows, tmp_path / "shards", [4]), output)

    card = DatasetCard.load(write_dataset_card(output, card_info(rejections={})))

    assert "| count | 2 | 2 | 2 |" in card.text
    assert "2 rows without two finite scores are left out of these statistics." in card.text
    assert (output / "score_distribution.png").is_file()


def test_push_then_load_from_the_hub_and_a_rerun_makes_no_commit(built, published, rows):
    api = HfApi()
    assert set(api.list_repo_files(published, repo_type="dataset")) == {
        ".gitattributes",
        "README.md",
        "score_distribution.png",
        "rejects.jsonl",
        *(f"data/train-{index:05d}-of-00003.parquet" for index in range(3)),
    }
    assert api.dataset_info(published).private
    assert_same_rows(load_dataset(published, split="train"), rows)
    assert_same_rows(load_dataset(published, split="train", streaming=True), rows)
    assert DatasetCard.load(published, repo_type="dataset").content == (built / "README.md").read_text()

    commits = api.list_repo_commits(published, repo_type="dataset")
    url = push_dataset(built, published, private=True, commit_message="Tiny CSR pairs again")
    assert api.list_repo_commits(published, repo_type="dataset") == commits
    assert url.endswith(f"/datasets/{published}/commit/{commits[0].commit_id}")


def test_second_config_split_and_branch_keep_earlier_data_loadable(published, rows, tmp_path):
    round2_rows = normalised_turns(preference_rows(3, seed=1))
    round2 = build(tmp_path / "round2", round2_rows, config_name="round2")
    push_dataset(round2, published, commit_message="Round 2")
    assert_same_rows(load_dataset(published, "default", split="train"), rows)
    assert_same_rows(load_dataset(published, "round2", split="train"), round2_rows)
    commits = HfApi().list_repo_commits(published, repo_type="dataset")
    push_dataset(round2, published, commit_message="Round 2 again")  # the merged card is deterministic too
    assert HfApi().list_repo_commits(published, repo_type="dataset") == commits
    # The local folder still describes only what it holds.
    assert [entry["config_name"] for entry in DatasetCard.load(round2 / "README.md").data.configs] == [
        "round2"
    ]

    # A test split written next to the train split of the same folder joins the card.
    test_rows = normalised_turns(preference_rows(5, seed=2))
    build(round2, test_rows, config_name="round2", split="test")
    assert isinstance(local := load_dataset(str(round2), "round2"), DatasetDict) and set(local) == {
        "train",
        "test",
    }

    # An iteration on a new branch: its default train split replaces main's (3 files -> 2) there only.
    iteration_rows = normalised_turns(preference_rows(6, seed=3))
    iteration = build(tmp_path / "iteration2", iteration_rows)
    url = push_dataset(iteration, published, revision="iteration-2", commit_message="Iteration 2")
    branch_files = HfApi().list_repo_files(published, repo_type="dataset", revision="iteration-2")
    assert sorted(name for name in branch_files if name.startswith("data/train")) == [
        "data/train-00000-of-00002.parquet",
        "data/train-00001-of-00002.parquet",
    ]
    assert "/commit/" in url
    assert_same_rows(load_dataset(published, split="train", revision="iteration-2"), iteration_rows)
    assert_same_rows(load_dataset(published, "round2", split="train", revision="iteration-2"), round2_rows)
    assert_same_rows(load_dataset(published, "default", split="train"), rows)


def test_a_push_racing_another_fails_instead_of_dropping_its_configs(
    built, hub_server, monkeypatch, tmp_path
):
    repo_id = f"tests/race-{uuid.uuid4().hex[:8]}"
    push_dataset(built, repo_id, commit_message="First")
    round2 = build(tmp_path / "round2", normalised_turns(preference_rows(3, seed=1)), config_name="round2")
    list_repo_files = HfApi.list_repo_files

    def another_push_lands_meanwhile(self, *args, **kwargs):
        files = list_repo_files(self, *args, **kwargs)
        HfApi().upload_file(
            path_or_fileobj=b"x",
            path_in_repo="other.txt",
            repo_id=repo_id,
            repo_type="dataset",
            revision="round-2",
        )
        return files

    monkeypatch.setattr(HfApi, "list_repo_files", another_push_lands_meanwhile)
    with pytest.raises(SelfAlignError, match="changed while this push was being prepared"):
        push_dataset(round2, repo_id, revision="round-2", commit_message="Second")


def test_no_token_in_files_cards_or_logs(rows, hub_server, tmp_path, monkeypatch, caplog, capfd):
    token = f"hf_marker_{uuid.uuid4().hex}"
    monkeypatch.setenv("HF_TOKEN", token)
    caplog.set_level(logging.DEBUG)
    info = card_info(
        recipe={"hub_token": token, "extra_headers": f"Authorization: Bearer {token}", "seed": 1}
    )
    folder = build(tmp_path / "out", rows[:5], info=info)
    repo_id = f"tests/secret-{uuid.uuid4().hex[:8]}"
    push_dataset(folder, repo_id, commit_message="No secrets here")
    load_dataset(repo_id, split="train")

    written = [path for path in folder.rglob("*") if path.is_file()]
    written += [path for path in hub_server.data_dir.rglob("*") if path.is_file()]
    assert [path for path in written if token.encode() in path.read_bytes()] == []
    captured = capfd.readouterr()
    assert token not in caplog.text + captured.out + captured.err
    assert "`extra_headers` is left out: it contains the Hub token." in (folder / "README.md").read_text()


def test_dpo_trains_a_step_on_the_set_loaded_from_the_hub(published, tiny_model_dirs, tmp_path):
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig, DPOTrainer

    model_dir = tiny_model_dirs["qwen2_vl"]
    trainer = DPOTrainer(
        model=AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32),
        args=DPOConfig(
            output_dir=str(tmp_path / "dpo"),
            max_steps=1,
            per_device_train_batch_size=2,
            learning_rate=1e-2,
            max_length=None,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            activation_checkpointing=False,
        ),
        train_dataset=load_dataset(published, split="train"),
        processing_class=AutoProcessor.from_pretrained(model_dir),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    )
    lora_b = {
        name: param.detach().clone() for name, param in trainer.model.named_parameters() if "lora_B" in name
    }

    trainer.train()

    assert trainer.state.global_step == 1
    moved = [
        name
        for name, param in trainer.model.named_parameters()
        if "lora_B" in name and not torch.equal(param, lora_b[name])
    ]
    assert moved
