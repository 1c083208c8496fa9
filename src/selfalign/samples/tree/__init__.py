"""CSR's sentence-level tree search: the rules (`rules.py`), applied depth by depth (`search_driver.py`),
with one expander per way of writing the children's sentences: batched on reused KV caches
(`shared_cache_expander.py`, over `shared_prefix_attention.py`) or one node at a time, the reference
(`one_node_expander.py`)."""

from selfalign.samples.tree.one_node_expander import search_trees_one_node_at_a_time
from selfalign.samples.tree.rules import (
    NodeFinishReason,
    SentenceTree,
    TreeNode,
    TreeSearchParams,
    TreeSearchStats,
)
from selfalign.samples.tree.shared_cache_expander import search_trees

__all__ = [
    "NodeFinishReason",
    "SentenceTree",
    "TreeNode",
    "TreeSearchParams",
    "TreeSearchStats",
    "search_trees",
    "search_trees_one_node_at_a_time",
]
