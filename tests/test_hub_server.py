"""Contract tests of the offline Hub server, driven only through the real client libraries.

Each test creates its own repos (uuid suffix): the server lives for the whole session.
"""

import hashlib
import http.client
import re
import signal
import socket
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


def _repo_id(prefix: str) -> str:
    return f"selfalign-test/{prefix}-{uuid.uuid4().hex[:8]}"


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def test_create_repo_conflict_exist_ok_and_delete(hub_server):
    api = HfApi()
    repo_id = _repo_id("create")

    url = api.create_repo(repo_id, repo_type="dataset")
    assert (url.repo_id, url.repo_type) == (repo_id, "dataset")
    assert url.startswith(hub_server.url)
    assert api.repo_exists(repo_id, repo_type="dataset")
    assert not api.repo_exists(repo_id)  # a model of that name does not exist
    assert not api.repo_exists(_repo_id("never-created"), repo_type="dataset")

    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo(repo_id, repo_type="dataset")
    assert conflict.value.response.status_code == 409
    assert api.create_repo(repo_id, repo_type="dataset", exist_ok=True).repo_id == repo_id

    # Like the Hub, a new repo starts with one commit holding a default .gitattributes.
    info = api.dataset_info(repo_id)
    assert [sibling.rfilename for sibling in info.siblings] == [".gitattributes"]
    assert [commit.title for commit in api.list_repo_commits(repo_id, repo_type="dataset")] == [
        "initial commit"
    ]

    api.delete_repo(repo_id, repo_type="dataset")
    assert not api.repo_exists(repo_id, repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo(repo_id, repo_type="dataset")
    api.delete_repo(repo_id, repo_type="dataset", missing_ok=True)


def test_write_without_token_is_refused(hub_server):
    anonymous = HfApi(token=False)
    repo_id = _repo_id("anonymous")

    with pytest.raises(HfHubHTTPError) as refused:
        anonymous.create_repo(repo_id)
    assert refused.value.response.status_code == 401
    assert not HfApi().repo_exists(repo_id)

    HfApi().create_repo(repo_id)
    with pytest.raises(HfHubHTTPError) as refused:
        anonymous.upload_file(path_or_fileobj=b"data", path_in_repo="file.txt", repo_id=repo_id)
    assert refused.value.response.status_code == 401
    assert anonymous.list_repo_files(repo_id) == [".gitattributes"]  # reading needs no token


def test_dataset_with_images_push_then_load_plain_and_streaming(hub_server):
    from datasets import Dataset, Image, load_dataset
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, size=(6 + i, 9, 3), dtype=np.uint8) for i in range(5)]
    dataset = Dataset.from_dict(
        {
            "image": [PILImage.fromarray(array) for array in pixels],
            "caption": [f"a {i}-pixel-high noise patch" for i in range(5)],
            "label": list(range(5)),
        }
    ).cast_column("image", Image())
    repo_id = _repo_id("images")

    dataset.push_to_hub(repo_id)

    files = HfApi().list_repo_files(repo_id, repo_type="dataset")
    assert "README.md" in files
    assert any(path.startswith("data/train-") and path.endswith(".parquet") for path in files)
    for loaded in (
        load_dataset(repo_id, split="train"),
        list(load_dataset(repo_id, split="train", streaming=True)),
    ):
        rows = list(loaded)
        assert [(row["caption"], row["label"]) for row in rows] == list(
            zip(dataset["caption"], dataset["label"], strict=True)
        )
        for row, expected in zip(rows, pixels, strict=True):
            np.testing.assert_array_equal(np.asarray(row["image"]), expected)


def _tiny_llama(folder):
    """A ~1k-parameter Llama and a word-level tokenizer trained on the spot, saved to `folder`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        ["a red circle left of a blue square", "two green triangles", "no shapes here"],
        trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]"]),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


def test_model_upload_folder_snapshot_and_from_pretrained(hub_server, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = _tiny_llama(tmp_path / "model")
    repo_id = _repo_id("tiny-llama")
    api = HfApi()
    api.create_repo(repo_id)

    api.upload_folder(folder_path=tmp_path / "model", repo_id=repo_id, commit_message="Add tiny llama")

    weights = next(entry for entry in api.list_repo_tree(repo_id) if entry.path == "model.safetensors")
    assert weights.lfs is not None  # *.safetensors is LFS by the default .gitattributes, as on the Hub
    snapshot = snapshot_download(repo_id)
    for local_file in (tmp_path / "model").iterdir():
        assert _read(f"{snapshot}/{local_file.name}") == local_file.read_bytes(), local_file.name

    reloaded = AutoModelForCausalLM.from_pretrained(repo_id)
    assert sum(parameter.numel() for parameter in reloaded.parameters()) < 2000
    expected_state = model.state_dict()
    assert reloaded.state_dict().keys() == expected_state.keys()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, expected_state[name]), name
    text = "a red circle left of two green triangles"
    assert AutoTokenizer.from_pretrained(repo_id)(text).input_ids == tokenizer(text).input_ids


def test_history_old_revisions_branches_and_tags(hub_server):
    api = HfApi()
    repo_id = _repo_id("history")
    api.create_repo(repo_id)
    first = api.upload_file(path_or_fileobj=b"version 1", path_in_repo="notes.txt", repo_id=repo_id)
    second = api.upload_file(path_or_fileobj=b"version 2", path_in_repo="notes.txt", repo_id=repo_id)
    third = api.upload_file(path_or_fileobj=b"other", path_in_repo="docs/other.txt", repo_id=repo_id)

    commits = api.list_repo_commits(repo_id)
    assert [commit.commit_id for commit in commits[:3]] == [third.oid, second.oid, first.oid]
    assert [commit.title for commit in commits] == [
        "Upload docs/other.txt with huggingface_hub",
        "Upload notes.txt with huggingface_hub",
        "Upload notes.txt with huggingface_hub",
        "initial commit",
    ]
    assert all(commit.authors == ["selfalign-tester"] for commit in commits)
    assert _read(hf_hub_download(repo_id, "notes.txt")) == b"version 2"
    assert _read(hf_hub_download(repo_id, "notes.txt", revision=first.oid)) == b"version 1"
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "docs/other.txt", revision=second.oid)

    # A branch name with "/" travels URL-encoded; commits to it leave main alone.
    api.create_branch(repo_id, branch="exp/old-notes", revision=first.oid)
    assert _read(hf_hub_download(repo_id, "notes.txt", revision="exp/old-notes")) == b"version 1"
    on_branch = api.upload_file(
        path_or_fileobj=b"branch edit", path_in_repo="notes.txt", repo_id=repo_id, revision="exp/old-notes"
    )
    assert _read(hf_hub_download(repo_id, "notes.txt", revision="exp/old-notes")) == b"branch edit"
    assert _read(hf_hub_download(repo_id, "notes.txt", revision="main")) == b"version 2"
    assert [c.commit_id for c in api.list_repo_commits(repo_id, revision="exp/old-notes")][:2] == [
        on_branch.oid,
        first.oid,
    ]

    api.create_tag(repo_id, tag="v1.0", revision=first.oid)
    assert _read(hf_hub_download(repo_id, "notes.txt", revision="v1.0")) == b"version 1"
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_tag(repo_id, tag="v1.0")
    assert conflict.value.response.status_code == 409
    with pytest.raises(HfHubHTTPError):  # tags are not branches: no commits on them
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id, revision="v1.0")

    refs = api.list_repo_refs(repo_id)
    assert {ref.name: ref.target_commit for ref in refs.branches} == {
        "main": third.oid,
        "exp/old-notes": on_branch.oid,
    }
    assert {ref.name: ref.target_commit for ref in refs.tags} == {"v1.0": first.oid}

    api.delete_branch(repo_id, branch="exp/old-notes")
    api.delete_tag(repo_id, tag="v1.0")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "notes.txt", revision="exp/old-notes")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(_repo_id("missing"), "notes.txt")


def test_deletes_parent_commit_and_pull_requests(hub_server):
    api = HfApi()
    repo_id = _repo_id("operations")
    api.create_repo(repo_id)
    base = api.create_commit(
        repo_id,
        operations=[
            CommitOperationAdd("keep.txt", b"keep"),
            CommitOperationAdd("logs/a.txt", b"a"),
            CommitOperationAdd("logs/deep/b.txt", b"b"),
        ],
        commit_message="Add files",
    )
    api.create_commit(
        repo_id,
        operations=[CommitOperationDelete("logs/"), CommitOperationAdd("new.txt", b"new")],
        commit_message="Drop logs",
        parent_commit=base.oid,
    )
    assert sorted(api.list_repo_files(repo_id)) == [".gitattributes", "keep.txt", "new.txt"]

    with pytest.raises(HfHubHTTPError) as stale:  # main has moved on since `base`
        api.upload_file(
            path_or_fileobj=b"late", path_in_repo="late.txt", repo_id=repo_id, parent_commit=base.oid
        )
    assert stale.value.response.status_code == 412
    with pytest.raises(EntryNotFoundError):
        api.delete_file("never-there.txt", repo_id)

    pr = api.upload_file(
        path_or_fileobj=b"proposal", path_in_repo="keep.txt", repo_id=repo_id, create_pr=True
    )
    assert pr.pr_revision == "refs/pr/1"
    assert _read(hf_hub_download(repo_id, "keep.txt", revision=pr.pr_revision)) == b"proposal"
    assert _read(hf_hub_download(repo_id, "keep.txt")) == b"keep"
    assert [ref.ref for ref in api.list_repo_refs(repo_id, include_pull_requests=True).pull_requests] == [
        "refs/pr/1"
    ]


def test_download_headers_range_requests_and_pagination(hub_server):
    api = HfApi()
    repo_id = _repo_id("files")
    api.create_repo(repo_id, repo_type="dataset")
    text = b"0123456789" * 10
    blob = bytes(range(256)) * 4  # binary content goes to LFS whatever its name
    many = [CommitOperationAdd(f"shards/{i:04d}.txt", f"row {i}".encode()) for i in range(1100)]
    commit = api.create_commit(
        repo_id,
        operations=[CommitOperationAdd("text.txt", text), CommitOperationAdd("blob.dat", blob), *many],
        commit_message="Many files",
        repo_type="dataset",
    )

    regular = get_hf_file_metadata(hf_hub_url(repo_id, "text.txt", repo_type="dataset"))
    assert regular.commit_hash == commit.oid
    assert regular.etag == hashlib.sha1(b"blob %d\0" % len(text) + text).hexdigest()  # git blob id
    assert regular.size == len(text)
    lfs = get_hf_file_metadata(hf_hub_url(repo_id, "blob.dat", repo_type="dataset"))
    assert (lfs.etag, lfs.size) == (hashlib.sha256(blob).hexdigest(), len(blob))

    fs = HfFileSystem()
    with fs.open(f"datasets/{repo_id}/text.txt", "rb", block_size=8) as file:
        file.seek(37)
        assert file.read(5) == text[37:42]
    with fs.open(f"datasets/{repo_id}/blob.dat", "rb", block_size=0) as file:
        assert file.read() == blob

    # 1100 entries are more than one page of the tree listing: the client follows the Link header.
    listed = [entry.path for entry in api.list_repo_tree(repo_id, "shards", repo_type="dataset")]
    assert listed == [operation.path_in_repo for operation in many]
    assert len(fs.glob(f"datasets/{repo_id}/shards/*.txt")) == 1100


def test_concurrent_commits_all_land(hub_server):
    api = HfApi()
    repo_id = _repo_id("concurrent")
    api.create_repo(repo_id)

    def upload(i: int):
        return api.upload_file(
            path_or_fileobj=f"writer {i}".encode(), path_in_repo=f"w/{i}.txt", repo_id=repo_id
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        commits = list(pool.map(upload, range(16)))

    # Commits are serialised, each on top of the previous one: none is lost.
    history = [commit.commit_id for commit in api.list_repo_commits(repo_id)]
    assert sorted(history[:16]) == sorted(commit.oid for commit in commits)
    assert sorted(path for path in api.list_repo_files(repo_id) if path.startswith("w/")) == sorted(
        f"w/{i}.txt" for i in range(16)
    )


def test_command_line_server_prints_settings_and_stops_on_ctrl_c(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "selfalign.hub_server", "--port", str(port), "--data-dir", str(tmp_path)]
    # Ctrl+C as in a terminal: a shell without job control starts background jobs with SIGINT
    # ignored, children inherit that, and Python then installs no KeyboardInterrupt handler.
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # A client keeping its connection alive, as the Hub clients' pools do, must not hold Ctrl+C.
    kept_alive = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        banner = [process.stdout.readline() for _ in range(5)]
        assert f"export HF_ENDPOINT=http://127.0.0.1:{port}\n" in [line.lstrip() for line in banner]
        assert any("HF_HUB_DISABLE_XET=1" in line for line in banner)
        assert HfApi(endpoint=f"http://127.0.0.1:{port}", token="any").whoami()["name"] == "selfalign-tester"
        kept_alive.request("GET", "/api/whoami-v2", headers={"authorization": "Bearer any"})
        assert kept_alive.getresponse().read()
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        kept_alive.close()
    assert (tmp_path / "repos").is_dir()


def test_card_validation_rejects_bad_metadata(hub_server):
    from huggingface_hub import DatasetCard, ModelCard

    DatasetCard(
        "---\nlicense: mit\nsize_categories:\n- n<1K\ntask_categories:\n- image-text-to-text\n---\n# ok\n"
    ).validate()
    for text, error in [
        ("---\nsize_categories:\n- 5 rows\n---\n", "unknown value '5 rows'"),
        ("---\ntags: {a: b}\n---\n", "'tags' must be a string or a list of strings"),
        ("---\nconfigs:\n- data_files: x\n---\n", "'config_name' and 'data_files'"),
    ]:
        with pytest.raises(ValueError, match=re.escape(error)):
            DatasetCard(text).validate()
    with pytest.raises(ValueError, match="'pipeline_tag' must be a string"):
        ModelCard("---\npipeline_tag: [a, b]\n---\n").validate()
