"""Offline tiny model zoo: small random checkpoints shaped like the real VLM families.

Nothing can be downloaded here, so tests and the demo run on models built from configs: a BPE
tokenizer trained on the spot on a built-in corpus (the vocabulary of the synthetic shapes world
plus the words of the critic, verifier and reviser prompts), the family's real special tokens and a
chat template written from the facts of the real format, an image processor with tiny image sizes
so each image costs few tokens, and randomly initialised weights (about 1 MB per folder).

Each builder mirrors one family of the released checkpoints the recipes target:

- ``llava``: LLaVA-1.5 (CLIP vision tower + Llama, vicuna ``USER: ... ASSISTANT:`` template)
- ``llava_next``: LLaVA-NeXT / v1.6 (CLIP + Mistral, ``[INST] ... [/INST]``, anyres tiling)
- ``qwen2_vl`` / ``qwen2_5_vl``: Qwen2-VL / Qwen2.5-VL (ChatML template, dynamic resolution)

plus a tiny CLIP (``CLIPModel`` + ``CLIPProcessor``) for CLIP image-sentence scores, and tiny
datasets of coloured shapes (``selfalign.tiny_zoo.data``).

Builds are deterministic: the same seed gives byte-identical weights and tokenizer files. A folder
holding a complete build of the same spec is reused, so building is cheap to repeat.

Modules: ``corpus`` (the tokenizers' training text), ``tokenizers``, ``chat_templates``, ``configs``
(size presets and shared config pieces), one per family (``llava``, ``llava_next``, ``qwen2_vl``),
``clip``, ``folders`` (building into a folder, reuse), ``families`` (``build_tiny_model``), ``data``.
"""

from selfalign.tiny_zoo.chat_templates import LLAVA_CHAT_TEMPLATE
from selfalign.tiny_zoo.clip import build_tiny_clip
from selfalign.tiny_zoo.configs import PRESETS
from selfalign.tiny_zoo.corpus import shapes_corpus
from selfalign.tiny_zoo.families import FAMILIES, build_tiny_model
from selfalign.tiny_zoo.folders import BUILD_MARKER

__all__ = [
    "BUILD_MARKER",
    "FAMILIES",
    "LLAVA_CHAT_TEMPLATE",
    "PRESETS",
    "build_tiny_clip",
    "build_tiny_model",
    "shapes_corpus",
]
