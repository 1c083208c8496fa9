"""On-disk storage of Hub repositories: content-addressed blobs, immutable commits, refs.

Layout under the data directory:

    blobs/<sha256[:2]>/<sha256[2:]>            file contents, shared by all repos
    repos/<type>s/<namespace>/<name>/repo.json  creation date and visibility
    repos/<type>s/<namespace>/<name>/refs.json  {"refs/heads/main": "<commit id>", "refs/tags/v1": ...}
    repos/<type>s/<namespace>/<name>/commits/<commit id>.json
                                                parent, author, date, message and the full
                                                mapping path -> file entry (a snapshot)
    tmp/                                        uploads in progress

Commit files are written once and never changed; refs.json is replaced atomically, so readers need
no lock. Every mutation (repo creation/deletion, commit, ref change) holds one lock.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from .errors import HubError, bad_request, entry_not_found, repo_not_found, revision_not_found

REPO_TYPES = ("model", "dataset", "space")
DEFAULT_BRANCH = "main"

# The Hub stores files of 10 MB and more in LFS, whatever their name.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

# What the Hub writes into the `.gitattributes` of a new repo: the file types it keeps in LFS.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib",
        "*.lfs.*", "*.lz4", "*.mds", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz",
        "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar",
        "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm",
        "*.xz", "*.zip", "*.zst", "*tfevents*",
        "*.mp3", "*.ogg", "*.wav", "*.flac", "*.jpg", "*.jpeg", "*.png", "*.webp",
    )
)  # fmt: skip

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_COMMIT_ID_RE = re.compile(r"[0-9a-f]{40}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def now_iso() -> str:
    """The Hub's date format, which `huggingface_hub.utils.parse_datetime` expects."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def git_blob_sha1(data: bytes) -> str:
    """The id git gives a file's content: sha1 over a `blob <size>\\0` header and the bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The small text file git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class RepoId:
    repo_type: str  # "model", "dataset" or "space"
    namespace: str
    name: str

    def __post_init__(self):
        if self.repo_type not in REPO_TYPES:
            raise bad_request(f"Invalid repo type: {self.repo_type}")
        for part in (self.namespace, self.name):
            if not _NAME_RE.fullmatch(part) or ".." in part or "--" in part:
                raise bad_request(f"Invalid repo id: {self.namespace}/{self.name}")

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def url_path(self) -> str:
        """Where the repo lives on the website: `org/name`, `datasets/org/name`, `spaces/org/name`."""
        prefix = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        return f"{prefix}{self}"


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int
    lfs: bool
    git_oid: str  # git blob id of the content, or of the LFS pointer for LFS files (as in git)

    @property
    def etag(self) -> str:
        """What the Hub sends as ETag and the client uses as cache key: sha256 for LFS, git id otherwise."""
        return self.sha256 if self.lfs else self.git_oid

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size))


@dataclass(frozen=True)
class Commit:
    id: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, FileEntry]

    def folder_exists(self, folder: str) -> bool:
        prefix = folder + "/"
        return folder == "" or any(path.startswith(prefix) for path in self.files)

    def folder_oid(self, folder: str) -> str:
        """A stable id for a folder's content (git-style tree ids are not needed by the clients)."""
        prefix = folder + "/" if folder else ""
        listing = "".join(
            f"{path} {entry.git_oid}\n"
            for path, entry in sorted(self.files.items())
            if path.startswith(prefix)
        )
        return hashlib.sha1(b"tree\0" + listing.encode()).hexdigest()

    def list_folder(self, folder: str, recursive: bool) -> list[tuple[str, FileEntry | None]]:
        """(path, entry) under `folder`, sub-folders first with entry None, each group sorted by path."""
        prefix = folder + "/" if folder else ""
        folders: set[str] = set()
        files: list[tuple[str, FileEntry | None]] = []
        for path, entry in self.files.items():
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            if recursive:
                folders.update(prefix + "/".join(parts[:depth]) for depth in range(1, len(parts)))
                files.append((path, entry))
            elif len(parts) > 1:
                folders.add(prefix + parts[0])
            else:
                files.append((path, entry))
        return [(path, None) for path in sorted(folders)] + sorted(files, key=lambda item: item[0])

    def fingerprint(self, path: str) -> str | None:
        """What changes whenever the file or folder at `path` changes; None if absent."""
        if path in self.files:
            return self.files[path].git_oid
        return self.folder_oid(path) if self.folder_exists(path) else None


@dataclass(frozen=True)
class AddFile:
    path: str
    entry: FileEntry


@dataclass(frozen=True)
class DeleteFile:
    path: str


@dataclass(frozen=True)
class DeleteFolder:
    path: str


Operation = AddFile | DeleteFile | DeleteFolder


def validate_path_in_repo(path: str) -> str:
    parts = path.split("/")
    if not path or any(part in ("", ".", "..") for part in parts) or parts[0] == ".git":
        raise bad_request(f"Invalid path in repo: {path!r}")
    return path


class HubStorage:
    """The repos, commits, refs and blobs of one data directory (layout in the module docstring)."""

    def __init__(self, data_dir: str | Path):
        self.root = Path(data_dir)
        self._blobs = self.root / "blobs"
        self._tmp = self.root / "tmp"
        self._repos = self.root / "repos"
        for folder in (self._blobs, self._tmp, self._repos):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()

    # ---- blobs --------------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        # Oids come from clients: checking their form also keeps them from naming other paths.
        if not _SHA256_RE.fullmatch(sha256):
            raise bad_request(f"Invalid sha256 oid: {sha256!r}")
        return self._blobs / sha256[:2] / sha256[2:]

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        path = self.blob_path(sha256)
        return path.is_file() and (size is None or path.stat().st_size == size)

    def store_regular_file(self, data: bytes) -> FileEntry:
        sha256 = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha256):
            self._write_blob(sha256, [data])
        return FileEntry(sha256=sha256, size=len(data), lfs=False, git_oid=git_blob_sha1(data))

    def receive_lfs_object(self, sha256: str, size: int, chunks: Iterable[bytes]) -> None:
        """Store an uploaded LFS object, refusing content that does not match its announced oid/size."""
        self._write_blob(sha256, chunks, expected_size=size)

    def lfs_file_entry(self, sha256: str, size: int | None = None) -> FileEntry:
        """The entry of a file committed as `lfsFile`: its content must have been uploaded before."""
        if not self.has_blob(sha256, size):
            raise bad_request(f"LFS object {sha256} was not uploaded (or has another size)")
        actual_size = self.blob_path(sha256).stat().st_size
        pointer = lfs_pointer(sha256, actual_size)
        return FileEntry(sha256=sha256, size=actual_size, lfs=True, git_oid=git_blob_sha1(pointer))

    def _write_blob(self, sha256: str, chunks: Iterable[bytes], expected_size: int | None = None) -> None:
        digest, size = hashlib.sha256(), 0
        with tempfile.NamedTemporaryFile(dir=self._tmp, delete=False) as tmp:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                tmp.write(chunk)
        if digest.hexdigest() != sha256 or (expected_size is not None and size != expected_size):
            os.unlink(tmp.name)
            raise bad_request(f"Uploaded content does not match oid {sha256} and size {expected_size}")
        self.blob_path(sha256).parent.mkdir(exist_ok=True)
        os.replace(tmp.name, self.blob_path(sha256))

    # ---- repos --------------------------------------------------------------------------------

    def _repo_dir(self, repo: RepoId) -> Path:
        return self._repos / f"{repo.repo_type}s" / repo.namespace / repo.name

    def _existing_repo_dir(self, repo: RepoId) -> Path:
        repo_dir = self._repo_dir(repo)
        if not (repo_dir / "refs.json").is_file():
            raise repo_not_found(str(repo))
        return repo_dir

    def create_repo(self, repo: RepoId, *, private: bool, author: str) -> None:
        """Create the repo with the Hub's initial commit (a default `.gitattributes` on `main`)."""
        with self._lock:
            repo_dir = self._repo_dir(repo)
            if repo_dir.exists():
                raise HubError(409, f"You already created this {repo.repo_type} repo: {repo}")
            (repo_dir / "commits").mkdir(parents=True)
            _write_json(repo_dir / "repo.json", {"createdAt": now_iso(), "private": private})
            gitattributes = self.store_regular_file(DEFAULT_GITATTRIBUTES.encode())
            initial = self._write_commit(
                repo, None, {".gitattributes": gitattributes}, "initial commit", "", author
            )
            _write_json(repo_dir / "refs.json", {f"refs/heads/{DEFAULT_BRANCH}": initial.id})

    def delete_repo(self, repo: RepoId) -> None:
        with self._lock:
            shutil.rmtree(self._existing_repo_dir(repo))

    def repo_metadata(self, repo: RepoId) -> dict:
        return _read_json(self._existing_repo_dir(repo) / "repo.json")

    def refs(self, repo: RepoId) -> dict[str, str]:
        return _read_json(self._existing_repo_dir(repo) / "refs.json")

    def read_commit(self, repo: RepoId, commit_id: str) -> Commit:
        data = _read_json(self._existing_repo_dir(repo) / "commits" / f"{commit_id}.json")
        files = {path: FileEntry(**entry) for path, entry in data.pop("files").items()}
        return Commit(id=commit_id, files=files, **data)

    def resolve(self, repo: RepoId, revision: str) -> Commit:
        """A branch, tag, full ref (`refs/convert/parquet`, `refs/pr/1`) or 40-hex commit id."""
        refs = self.refs(repo)
        for ref in (revision, f"refs/heads/{revision}", f"refs/tags/{revision}"):
            if ref.startswith("refs/") and ref in refs:
                return self.read_commit(repo, refs[ref])
        if _COMMIT_ID_RE.fullmatch(revision) and self._commit_exists(repo, revision):
            return self.read_commit(repo, revision)
        raise revision_not_found(revision)

    def history(self, repo: RepoId, head: Commit) -> Iterator[Commit]:
        """`head` and its ancestors, newest first."""
        commit: Commit | None = head
        while commit is not None:
            yield commit
            commit = self.read_commit(repo, commit.parent) if commit.parent else None

    def last_change(self, repo: RepoId, head: Commit, path: str) -> Commit:
        """The oldest ancestor of `head` since which `path` has not changed."""
        fingerprint = head.fingerprint(path)
        last = head
        for commit in self.history(repo, head):
            if commit.fingerprint(path) != fingerprint:
                break
            last = commit
        return last

    def _commit_exists(self, repo: RepoId, commit_id: str) -> bool:
        return (self._existing_repo_dir(repo) / "commits" / f"{commit_id}.json").is_file()

    # ---- writes ------------------------------------------------------------------------------

    def commit(
        self,
        repo: RepoId,
        revision: str,
        operations: list[Operation],
        *,
        title: str,
        message: str,
        author: str,
        parent_commit: str | None = None,
        create_pr: bool = False,
    ) -> tuple[Commit, str]:
        """Apply `operations` on top of branch `revision` (or open a PR against it). Returns (commit, ref)."""
        with self._lock:
            refs = self.refs(repo)
            ref = self._branch_ref(refs, revision)
            head = self.read_commit(repo, refs[ref])
            if create_pr:
                base = self.resolve(repo, parent_commit) if parent_commit else head
                ref = f"refs/pr/{1 + sum(name.startswith('refs/pr/') for name in refs)}"
            else:
                if parent_commit and not head.id.startswith(parent_commit):
                    raise HubError(412, "A commit has happened since. Please refresh and try again.")
                base = head
            files = _apply_operations(base.files, operations)
            commit = self._write_commit(repo, base.id, files, title, message, author)
            self._set_ref(repo, refs, ref, commit.id)
            return commit, ref

    def create_ref(self, repo: RepoId, ref: str, revision: str) -> None:
        """Create a branch or tag pointing at `revision`; 409 if it exists."""
        with self._lock:
            refs = self.refs(repo)
            if ref in refs:
                raise HubError(409, f"Reference already exists: {ref}")
            self._set_ref(repo, refs, ref, self.resolve(repo, revision).id)

    def delete_ref(self, repo: RepoId, ref: str) -> None:
        with self._lock:
            refs = self.refs(repo)
            if ref not in refs:
                raise revision_not_found(ref)
            if ref == f"refs/heads/{DEFAULT_BRANCH}":
                raise HubError(403, "The default branch cannot be deleted")
            del refs[ref]
            _write_json(self._repo_dir(repo) / "refs.json", refs)

    def _set_ref(self, repo: RepoId, refs: dict[str, str], ref: str, commit_id: str) -> None:
        refs[ref] = commit_id
        _write_json(self._repo_dir(repo) / "refs.json", refs)

    @staticmethod
    def _branch_ref(refs: dict[str, str], revision: str) -> str:
        """The ref a commit to `revision` moves: commits go to branches, PRs and conversions, not tags."""
        ref = revision if revision.startswith("refs/") else f"refs/heads/{revision}"
        if ref in refs and not ref.startswith("refs/tags/"):
            return ref
        if ref in refs or f"refs/tags/{revision}" in refs or _COMMIT_ID_RE.fullmatch(revision):
            raise bad_request(f"Invalid rev id: {revision} (commits can only be made to a branch)")
        raise revision_not_found(revision)

    def _write_commit(
        self,
        repo: RepoId,
        parent: str | None,
        files: dict[str, FileEntry],
        title: str,
        message: str,
        author: str,
    ) -> Commit:
        record = {
            "parent": parent,
            "title": title,
            "message": message,
            "author": author,
            "date": now_iso(),
            "files": {path: asdict(entry) for path, entry in sorted(files.items())},
        }
        # Like git, the id is the sha1 of the commit's content (which includes its parent and date).
        commit_id = hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()
        _write_json(self._repo_dir(repo) / "commits" / f"{commit_id}.json", record)
        return Commit(id=commit_id, **{**record, "files": dict(sorted(files.items()))})


def _apply_operations(files: dict[str, FileEntry], operations: list[Operation]) -> dict[str, FileEntry]:
    files = dict(files)
    for operation in operations:
        if isinstance(operation, AddFile):
            files[operation.path] = operation.entry
        elif isinstance(operation, DeleteFile):
            if files.pop(operation.path, None) is None:
                raise entry_not_found(f"A file with this name doesn't exist: {operation.path}")
        else:
            doomed = [path for path in files if path.startswith(operation.path + "/")]
            if not doomed:
                raise entry_not_found(f"A folder with this name doesn't exist: {operation.path}")
            for path in doomed:
                del files[path]
    # As in git, a path cannot be both a file and a folder.
    folders = {str(parent) for path in files for parent in PurePosixPath(path).parents if str(parent) != "."}
    if clashes := sorted(folders & files.keys()):
        raise bad_request(f"Paths used both as a file and as a folder: {', '.join(clashes)}")
    return files


def is_lfs_path(path: str, gitattributes: str) -> bool:
    """Whether `.gitattributes` puts `path` in LFS (`pattern filter=lfs ...` lines).

    Approximates git's matching: a pattern without `/` matches the file name, one with `/` the
    whole path (fnmatch's `*` also crosses `/`, which is what `saved_model/**/*` needs).
    """
    name = path.rsplit("/", 1)[-1]
    for line in gitattributes.splitlines():
        pattern, *attributes = line.split() or [""]
        if "filter=lfs" in attributes:
            target = path if "/" in pattern else name
            if fnmatch.fnmatchcase(target, pattern):
                return True
    return False


def _write_json(path: Path, data) -> None:
    """Write via a temporary file and rename, so that readers never see a half-written file."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(data, tmp, indent=1)
    os.replace(tmp.name, path)


def _read_json(path: Path):
    with open(path) as file:
        return json.load(file)
