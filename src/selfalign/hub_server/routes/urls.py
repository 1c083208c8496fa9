"""How requests name a repo and a revision, in the API (`/api/datasets/org/name`) and on the website
(`/datasets/org/name`, `/org/name` for models)."""

API_REPO = r"/api/(?P<kind>models|datasets|spaces)/(?P<namespace>[^/]+)/(?P<name>[^/]+)"
WEB_REPO = r"/(?:(?P<kind>datasets|spaces)/)?(?P<namespace>[^/]+)/(?P<name>[^/]+?)"
# Clients percent-encode revisions (`refs%2Fpr%2F1`); like the Hub, also accept these two ref
# families unencoded.
REVISION = r"(?P<revision>refs/(?:convert|pr)/[^/]+|[^/]+)"
REPO_TYPE_BY_KIND = {None: "model", "models": "model", "datasets": "dataset", "spaces": "space"}
