"""The Hub's HTTP API as `huggingface_hub`, `datasets` and `transformers` call it: one handler per endpoint.

Response fields follow what the clients parse (`huggingface_hub.hf_api` ModelInfo/DatasetInfo,
RepoFile/RepoFolder, GitCommitInfo, GitRefs, CommitInfo; `_commit_api` for preupload and commit;
`huggingface_hub.lfs` for the Git-LFS batch API; `file_download.get_hf_file_metadata` for resolve
headers). One module per group of endpoints: `repos`, `writes`, `lfs`, `downloads`; `app` dispatches.
"""

from .app import HubApp

__all__ = ["HubApp"]
