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

plus a tiny CLIP (``CLIPModel`` + ``CLIPProcessor``) for CLIP image-sentence scores.

Builds are deterministic: the same seed gives byte-identical weights and tokenizer files. A folder
holding a complete build of the same spec is reused, so building is cheap to repeat.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tokenizers
import torch
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlamaTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaProcessor,
    MistralConfig,
    PreTrainedModel,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_PRETOKENIZE_REGEX

FAMILIES: tuple[str, ...] = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl")

BUILD_MARKER = "tiny_zoo_build.json"

# ---------------------------------------------------------------------------------------------
# Corpus: the words the tiny models will be trained on (shapes world, critic, verifier, reviser)
# ---------------------------------------------------------------------------------------------

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white", "gray", "pink", "brown")
SHAPES = ("circle", "square", "triangle", "star", "rectangle", "diamond", "heart", "hexagon")
SIZES = ("small", "medium", "large", "big", "tiny")
COUNT_WORDS = ("one", "two", "three", "four")
POSITIONS = (
    "left", "right", "top", "bottom", "center",
    "top left", "top right", "bottom left", "bottom right",
)  # fmt: skip

RELATIONS = ("above", "below", "to the left of", "to the right of", "next to", "far from")

_FIXED_SENTENCES = (
    # The plain-text markers of the chat templates, so that they tokenize into a few pieces.
    "USER: Describe the image. ASSISTANT: There is a red circle.",
    "[INST] What is in the image? [/INST] There is a blue square.",
    "system",
    "user",
    "assistant",
    # Prompts and short answers.
    "Describe the image.",
    "Describe the image in detail.",
    "Describe this picture briefly.",
    "What is in the image?",
    "What do you see in this picture?",
    "What shapes are in the image?",
    "How many shapes are there in the image?",
    "Are there any stars in the image?",
    "Answer with yes or no.",
    "Answer the question using a single word or phrase.",
    "Yes.",
    "No.",
    "Yes, there is.",
    "No, there is not.",
    "There are no shapes in the image.",
    "The image shows a white background with a few coloured shapes.",
    "The background of the image is white.",
    "The shapes do not overlap.",
    "I am not sure.",
    "I can not see that in the image.",
    "You are a helpful assistant.",
    "A chat between a curious human and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    # Critic (EACO): scoring instructions and the scores format.
    "You are a critic. Evaluate the response to the question about the image.",
    "Rate the response on each dimension with a score from 1 to 5.",
    "Question: What is in the image?",
    "Response: There is a red circle and a blue square.",
    "Helpfulness: 4",
    "Visual Faithfulness: 2",
    "Ethical Considerations: 5",
    "Overall: 3",
    "Rationale: The response mentions a shape that is not in the image.",
    "Rationale: The response is accurate, complete and relevant to the question.",
    "The score is 1, 2, 3, 4 or 5, where 5 is the best.",
    # Verifier and reviser (IPA): criteria, feedback and refinement.
    "Instruction: Describe the colours of the shapes.",
    "Reference answer: There are two shapes, a green star and a yellow triangle.",
    "Compare the response with the reference answer.",
    "Does the response entail the reference answer?",
    "Is the response complete?",
    "Does the response contradict the reference answer?",
    "Does the response follow the instruction?",
    "Entailment: pass",
    "Completeness: fail",
    "No contradiction: pass",
    "Instruction compliance: pass",
    "Feedback: The response misses one shape and gives the wrong colour for another.",
    "Write feedback on the response, then write a refined answer.",
    "Refined answer: The image shows a large orange hexagon at the top right.",
    "The answer is correct.",
    "The answer is incorrect.",
    "The answer is incomplete.",
    # General English, so that prompts outside the shapes world still tokenize into real pieces.
    "The quick brown fox jumps over the lazy dog.",
    "Please think step by step and explain your answer.",
    "This is a photo of a cat sitting on a table next to a cup of coffee.",
    "A man is riding a bicycle down the street while people walk by.",
    "Two children are playing with a ball in the park on a sunny day.",
    "The text in the picture says hello world.",
    "Thank you for your question, I will do my best to help.",
    "The scene contains several objects of different sizes and colours.",
    "Five, six, seven, eight, nine and ten are numbers bigger than four.",
    "Each object is drawn near the middle, the corner or the edge of the picture.",
    "Please look carefully, count every object and mention only what is visible.",
    "The model should not describe things that are not there; that would be a hallucination.",
    "First, second, third and last are words for order; many, few, some, all, none and both are quantities.",
    "It might be bright, dark, light, round, pointed, filled, empty, thin, thick, tall or short.",
    "Although the picture looks simple, because the shapes are small they can be hard to see.",
    "We write, read, ask, tell, show, find, give, make, know, think, believe and check answers.",
    "Which one, when, why, who and whose are question words as well.",
)


def shapes_corpus() -> list[str]:
    """The fixed English corpus the tiny tokenizers are trained on (about 950 sentences)."""
    sentences = list(_FIXED_SENTENCES)
    for i, (color, shape) in enumerate(itertools.product(COLORS, SHAPES)):
        size = SIZES[i % len(SIZES)]
        position = POSITIONS[i % len(POSITIONS)]
        count = COUNT_WORDS[i % len(COUNT_WORDS)]
        plural = "is one" if count == "one" else f"are {count}"
        noun = shape if count == "one" else f"{shape}s"
        relation = RELATIONS[i % len(RELATIONS)]
        other_color, other_shape = COLORS[(i + 3) % len(COLORS)], SHAPES[(i + 5) % len(SHAPES)]
        sentences += [
            f"There is a {color} {shape} in the image.",
            f"There is a {size} {color} {shape} at the {position} of the image.",
            f"Is there a {color} {shape} in the image?",
            f"Yes, there is a {color} {shape}.",
            f"No, there is no {color} {shape} in the image.",
            f"How many {color} {shape}s are there?",
            f"There {plural} {color} {noun}.",
            f"What color is the {shape}? The {shape} is {color}.",
            f"Where is the {color} {shape}? It is at the {position}.",
            f"The {color} {shape} is {relation} the {other_color} {other_shape}.",
        ]
    return sentences


# ---------------------------------------------------------------------------------------------
# Tokenizers: trained with each family's own pre-tokenization, laid out like the real vocabularies
# ---------------------------------------------------------------------------------------------

# Upper bound on the learned part of each vocabulary; the corpus runs out of merges below it.
_LEARNED_VOCAB_SIZE = 1200


def _train_bpe(
    trainee: Tokenizer, corpus: list[str], **trainer_kwargs
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train ``trainee`` on ``corpus``; return its learned vocabulary and merges."""
    trainer = trainers.BpeTrainer(vocab_size=_LEARNED_VOCAB_SIZE, show_progress=False, **trainer_kwargs)
    trainee.train_from_iterator(corpus, trainer=trainer)
    model = json.loads(trainee.to_str())["model"]
    return model["vocab"], [tuple(merge) for merge in model["merges"]]


def _llama_tokenizer(chat_template: str) -> LlamaTokenizer:
    """SentencePiece-style BPE like Llama's and Mistral's: ``<unk> <s> </s>``, 256 byte-fallback pieces, words.

    Special tokens follow the llava-hf checkpoints: ``<image>`` and ``<pad>`` appended after the vocabulary.
    """
    trainee = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    # While training, split like SentencePiece does (words, punctuation, single digits) so that no
    # piece spans two of them; at use, LlamaTokenizer's own unsplit Metaspace then gives the same pieces.
    trainee.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(prepend_scheme="first", split=True),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    learned, merges = _train_bpe(trainee, shapes_corpus())
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{byte:02X}>": 3 + byte for byte in range(256)}
    for piece in sorted(learned, key=learned.get):
        vocab.setdefault(piece, len(vocab))
    tokenizer = LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        add_bos_token=True,
        add_eos_token=False,
        padding_side="left",
        model_max_length=4096,
    )
    tokenizer.add_special_tokens({"extra_special_tokens": ["<image>"], "pad_token": "<pad>"})
    tokenizer.chat_template = chat_template
    return tokenizer


# The real Qwen2-VL / Qwen2.5-VL special tokens, in their vocabulary order.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)  # fmt: skip


def _byte_level_pre_tokenizer(regex: str, behavior: str, invert: bool) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior=behavior, invert=invert),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _qwen2_tokenizer(chat_template: str) -> Qwen2Tokenizer:
    """Byte-level BPE with Qwen2's pre-tokenizer; ``<|endoftext|>`` and the ChatML tokens come last."""
    trainee = Tokenizer(models.BPE())
    trainee.normalizer = normalizers.NFC()
    trainee.pre_tokenizer = _byte_level_pre_tokenizer(
        QWEN2_PRETOKENIZE_REGEX, behavior="isolated", invert=False
    )
    vocab, merges = _train_bpe(trainee, shapes_corpus(), initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # Like the Instruct checkpoints: eos is <|im_end|> (ends a turn), pad is <|endoftext|>, no bos or unk.
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=32768,
    )
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in QWEN_SPECIAL_TOKENS])
    tokenizer.add_special_tokens(
        {"eos_token": "<|im_end|>", "extra_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])}
    )
    tokenizer.chat_template = chat_template
    return tokenizer


# CLIP's word splitting (the pattern of its tokenizer), applied after lower-casing.
_CLIP_SPLIT_REGEX = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
# Offset into Unicode's private use area that turns a byte character into its word-final twin.
_WORD_END_OFFSET = 0xE000


def _clip_tokenizer() -> CLIPTokenizer:
    """Lower-cased byte-level BPE with ``</w>`` word ends like CLIP's; 77-token context like the real one.

    The BPE trainer's ``end_of_word_suffix`` numbers the ``x</w>`` symbols in hash order, so its ties
    (and so the merges) change from run to run. Instead, each word's last character is swapped for a
    private-use twin that stands for ``x</w>``: every symbol is then a character of a fixed alphabet,
    training is deterministic, and the twins are renamed to ``x</w>`` afterwards.
    """
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    pre_tokenizer = _byte_level_pre_tokenizer(_CLIP_SPLIT_REGEX, behavior="removed", invert=True)

    def with_word_ends(sentence: str) -> str:
        words = [word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(sentence))]
        return " ".join(word[:-1] + chr(ord(word[-1]) + _WORD_END_OFFSET) for word in words)

    def to_clip_piece(piece: str) -> str:
        last = ord(piece[-1])
        return piece[:-1] + chr(last - _WORD_END_OFFSET) + "</w>" if last >= _WORD_END_OFFSET else piece

    byte_chars = list(bytes_to_unicode().values())
    trainee = Tokenizer(models.BPE())
    trainee.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    learned, merges = _train_bpe(
        trainee,
        [with_word_ends(sentence) for sentence in shapes_corpus()],
        initial_alphabet=byte_chars + [chr(ord(char) + _WORD_END_OFFSET) for char in byte_chars],
    )
    # Like CLIP's vocabulary: every byte, every byte ending a word, the learned pieces, then the specials.
    vocab = {piece: index for index, piece in enumerate(byte_chars + [char + "</w>" for char in byte_chars])}
    for piece in sorted(learned, key=learned.get):
        vocab.setdefault(to_clip_piece(piece), len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    clip_merges = [(to_clip_piece(left), to_clip_piece(right)) for left, right in merges]
    return CLIPTokenizer(vocab=vocab, merges=clip_merges, model_max_length=77)


# ---------------------------------------------------------------------------------------------
# Chat templates, written from the real formats. Message content is a string or a list of
# {"type": "image"} / {"type": "text", "text": ...} parts. Assistant replies sit in
# {% generation %} blocks so that TRL's assistant_only_loss (return_assistant_tokens_mask) works.
#
# The Llama/Mistral templates start with bos_token (as Mistral's own template does; llava-hf's
# leave it to the tokenizer). TRL tokenizes templated text with add_special_tokens=False, and
# processor.apply_chat_template(tokenize=True) skips special tokens when the text starts with bos,
# so training and generation both see exactly one <s>. Tokenizing a rendered prompt yourself:
# pass add_special_tokens=False.
# ---------------------------------------------------------------------------------------------

# Binds `parts`: the message content as a list of parts.
_CONTENT_AS_PARTS = r"""
  {%- if message.content is string -%}
    {%- set parts = [{'type': 'text', 'text': message.content}] -%}
  {%- else -%}
    {%- set parts = message.content -%}
  {%- endif -%}"""

# Binds `text`: the text parts of the message, joined.
_TEXT_OF_PARTS = r"""
  {%- set text = parts | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}"""

# LLaVA-1.5 (vicuna v1): "USER: <image>\n{question} ASSISTANT: {answer}</s>USER: ...".
# Images come before the text of a user turn; the generation prompt is "ASSISTANT:".
LLAVA_CHAT_TEMPLATE = (
    r"""{{- bos_token -}}
{%- for message in messages -%}"""
    + _CONTENT_AS_PARTS
    + _TEXT_OF_PARTS
    + r"""
  {%- if message.role == 'system' -%}
    {{- text + ' ' -}}
  {%- elif message.role == 'user' -%}
    {{- 'USER: ' -}}
    {%- for part in parts if part.type == 'image' -%}{{- '<image>\n' -}}{%- endfor -%}
    {{- text + ' ' -}}
  {%- elif message.role == 'assistant' -%}
    {{- 'ASSISTANT: ' -}}
    {%- generation -%}{{- text + eos_token -}}{%- endgeneration -%}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"""
)

# LLaVA-NeXT on Mistral: "[INST] <image>\n{question} [/INST] {answer}</s>[INST] ...". Mistral has no
# system role: a system message is put at the top of the first user turn. The reply follows
# [/INST] directly, so add_generation_prompt adds nothing.
LLAVA_NEXT_CHAT_TEMPLATE = (
    r"""{{- bos_token -}}
{%- set system = namespace(text='') -%}
{%- for message in messages -%}"""
    + _CONTENT_AS_PARTS
    + _TEXT_OF_PARTS
    + r"""
  {%- if message.role == 'system' -%}
    {%- set system.text = text + '\n\n' -%}
  {%- elif message.role == 'user' -%}
    {{- '[INST] ' + system.text -}}
    {%- set system.text = '' -%}
    {%- for part in parts if part.type == 'image' -%}{{- '<image>\n' -}}{%- endfor -%}
    {{- text + ' [/INST]' -}}
  {%- elif message.role == 'assistant' -%}
    {{- ' ' -}}
    {%- generation -%}{{- text + eos_token -}}{%- endgeneration -%}
  {%- endif -%}
{%- endfor -%}"""
)

# Qwen2-VL / Qwen2.5-VL (ChatML): a default system message, images and text in the order given,
# each image as <|vision_start|><|image_pad|><|vision_end|> ("Picture N: " first if add_vision_id).
QWEN2_VL_CHAT_TEMPLATE = (
    r"""{%- set image_count = namespace(value=0) -%}
{%- for message in messages -%}
  {%- if loop.first and message.role != 'system' -%}
    {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' -}}
  {%- endif -%}
  {{- '<|im_start|>' + message.role + '\n' -}}"""
    + _CONTENT_AS_PARTS
    + r"""
  {%- set rendered = namespace(text='') -%}
  {%- for part in parts -%}
    {%- if part.type == 'image' -%}
      {%- set image_count.value = image_count.value + 1 -%}
      {%- if add_vision_id -%}
        {%- set rendered.text = rendered.text + 'Picture ' + image_count.value | string + ': ' -%}
      {%- endif -%}
      {%- set rendered.text = rendered.text + '<|vision_start|><|image_pad|><|vision_end|>' -%}
    {%- elif part.type == 'video' -%}
      {%- set rendered.text = rendered.text + '<|vision_start|><|video_pad|><|vision_end|>' -%}
    {%- elif part.type == 'text' -%}
      {%- set rendered.text = rendered.text + part.text -%}
    {%- endif -%}
  {%- endfor -%}
  {%- if message.role == 'assistant' -%}
    {%- generation -%}{{- rendered.text + '<|im_end|>' -}}{%- endgeneration -%}
  {%- else -%}
    {{- rendered.text + '<|im_end|>' -}}
  {%- endif -%}
  {{- '\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"""
)


# ---------------------------------------------------------------------------------------------
# Sizes. Two presets: "tiny" (the default: text hidden 64 x 2 layers, Qwen vision width 32 x 2
# blocks, CLIP vision width 32 x 3 layers), small enough for every test, and "shapes", a wider and
# deeper one for the shapes-world policy, which must learn to caption from scratch in a few CPU
# minutes (recipes/shapes/policy_sft.yaml), with a CLIP tower wide enough to tell shapes apart
# (recipes/shapes/clip.yaml). Images, patches and tokenizers are the same in both.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSize:
    """The sizes a preset sets: the text model's, the Qwen vision tower's and the CLIP vision tower's
    (LLaVA's, and the tiny CLIP's image encoder)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vision_width: int
    vision_depth: int
    clip_width: int
    clip_depth: int
    clip_heads: int

    def text_size(self) -> dict:
        return {
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
        }


PRESETS: dict[str, ModelSize] = {
    "tiny": ModelSize(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vision_width=32,
        vision_depth=2,
        clip_width=32,
        clip_depth=3,
        clip_heads=2,
    ),
    "shapes": ModelSize(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vision_width=64,
        vision_depth=2,
        # 32 x 3 could not tell shapes apart however trained (shape discrimination <= 0.75, see
        # recipes/shapes/clip.yaml); 64 x 4 can, once pretrained on the scenes' objects.
        clip_width=64,
        clip_depth=4,
        clip_heads=4,
    ),
}
DEFAULT_PRESET = "tiny"
_CLIP_IMAGE_SIZE = 32  # LLaVA's image (and LLaVA-NeXT's tile) side: (32 / 8)^2 = 16 patches
_PATCH_SIZE = 8
# LLaVA-NeXT's anyres grids (height, width): 1x2, 2x1 and 2x2 tiles, like the real 336-px pinpoints.
_LLAVA_NEXT_PINPOINTS = [[32, 64], [64, 32], [64, 64]]
# Qwen2-VL resizes to a multiple of patch * merge = 16 px within min/max pixel counts:
# 4 to 16 merged tokens per image (64x64 px -> 8x8 patches -> 16 tokens).
_QWEN_MIN_PIXELS = 32 * 32
_QWEN_MAX_PIXELS = 64 * 64

_Build = tuple[PreTrainedModel, ProcessorMixin, GenerationConfig]


def _token_ids(tokenizer, bos: str, eos: str, pad: str) -> dict[str, int]:
    """bos/eos/pad ids, set in the text config and (as in the real config.json files) at the top level."""
    tokens = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}
    return {name: tokenizer.convert_tokens_to_ids(token) for name, token in tokens.items()}


def _clip_vision_config(size: ModelSize) -> CLIPVisionConfig:
    # At least three layers: LLaVA reads features from the second-to-last one (vision_feature_layer=-2).
    return CLIPVisionConfig(
        hidden_size=size.clip_width,
        intermediate_size=2 * size.clip_width,
        num_hidden_layers=size.clip_depth,
        num_attention_heads=size.clip_heads,
        image_size=_CLIP_IMAGE_SIZE,
        patch_size=_PATCH_SIZE,
        projection_dim=32,
    )


def _clip_image_processing() -> dict:
    """Resize the short side, center-crop a square: one CLIP image (or LLaVA-NeXT tile) of 32 px."""
    return {
        "size": {"shortest_edge": _CLIP_IMAGE_SIZE},
        "crop_size": {"height": _CLIP_IMAGE_SIZE, "width": _CLIP_IMAGE_SIZE},
    }


def _llava_config_kwargs(tokenizer, size: ModelSize) -> dict:
    return {
        "vision_config": _clip_vision_config(size),
        "image_token_index": tokenizer.convert_tokens_to_ids("<image>"),
        "image_seq_length": (_CLIP_IMAGE_SIZE // _PATCH_SIZE) ** 2,
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": -2,
    }


def _llava_processor_kwargs() -> dict:
    # CLIP prepends a CLS embedding that vision_feature_select_strategy="default" drops again. The
    # processor counts patches + num_additional_image_tokens - 1 image tokens, so the CLS must be
    # counted here (1), or image tokens and image features disagree.
    return {
        "patch_size": _PATCH_SIZE,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,
    }


def _build_llava(seed: int, size: ModelSize) -> _Build:
    tokenizer = _llama_tokenizer(LLAVA_CHAT_TEMPLATE)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(**_clip_image_processing()),
        tokenizer=tokenizer,
        chat_template=LLAVA_CHAT_TEMPLATE,
        **_llava_processor_kwargs(),
    )
    token_ids = _token_ids(tokenizer, bos="<s>", eos="</s>", pad="<pad>")
    # Vicuna-7B style Llama: multi-head attention, 4k context.
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        num_key_value_heads=size.num_attention_heads,
        **size.text_size(),
        **token_ids,
    )
    config = LlavaConfig(text_config=text_config, **_llava_config_kwargs(tokenizer, size), **token_ids)
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config), processor, GenerationConfig(**token_ids)


def _build_llava_next(seed: int, size: ModelSize) -> _Build:
    tokenizer = _llama_tokenizer(LLAVA_NEXT_CHAT_TEMPLATE)
    image_processor = LlavaNextImageProcessor(
        image_grid_pinpoints=_LLAVA_NEXT_PINPOINTS, **_clip_image_processing()
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=LLAVA_NEXT_CHAT_TEMPLATE,
        **_llava_processor_kwargs(),
    )
    token_ids = _token_ids(tokenizer, bos="<s>", eos="</s>", pad="<pad>")
    # Mistral-7B-v0.2 style: grouped-query attention, no sliding window, rope theta 1e6.
    text_config = MistralConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=32768,
        num_key_value_heads=size.num_key_value_heads,
        sliding_window=None,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        **size.text_size(),
        **token_ids,
    )
    config = LlavaNextConfig(
        text_config=text_config,
        image_grid_pinpoints=_LLAVA_NEXT_PINPOINTS,
        **_llava_config_kwargs(tokenizer, size),
        **token_ids,
    )
    torch.manual_seed(seed)
    return LlavaNextForConditionalGeneration(config), processor, GenerationConfig(**token_ids)


def _qwen_vision_processing() -> dict:
    sizes = {
        "size": {"shortest_edge": _QWEN_MIN_PIXELS, "longest_edge": _QWEN_MAX_PIXELS},
        "patch_size": _PATCH_SIZE,
        "temporal_patch_size": 2,
        "merge_size": 2,
    }
    # Qwen2-VL processors need a video processor too, even for image-only use.
    return {
        "image_processor": Qwen2VLImageProcessor(**sizes),
        "video_processor": Qwen2VLVideoProcessor(**sizes),
    }


def _qwen_config_kwargs(tokenizer, vision_config: dict, size: ModelSize) -> dict:
    """Text config, vision config, and the vision and bos/eos/pad token ids of a Qwen2(.5)-VL config."""
    # The Instruct checkpoints' ids: a turn ends with <|im_end|>; <|endoftext|> is bos and pad.
    token_ids = _token_ids(tokenizer, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>")
    # Multimodal RoPE: the (temporal, height, width) sections split head_dim / 2 frequencies in the
    # real models' 16:24:24 proportion (8 frequencies -> [2, 3, 3] at the tiny size).
    eighth = size.hidden_size // size.num_attention_heads // 2 // 8
    text_config = {
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 32768,
        "num_key_value_heads": size.num_key_value_heads,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "mrope_section": [2 * eighth, 3 * eighth, 3 * eighth],
        },
        **size.text_size(),
        **token_ids,
    }
    vision_token_ids = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }
    return {
        "text_config": text_config,
        "vision_config": vision_config,
        **{name: tokenizer.convert_tokens_to_ids(token) for name, token in vision_token_ids.items()},
        **token_ids,
    }


def _qwen_generation_config(tokenizer) -> GenerationConfig:
    # As in the Instruct checkpoints: stop at the end of the turn or at <|endoftext|>.
    endoftext, im_end = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    return GenerationConfig(bos_token_id=endoftext, eos_token_id=[im_end, endoftext], pad_token_id=endoftext)


def _build_qwen2_vl(seed: int, size: ModelSize) -> _Build:
    tokenizer = _qwen2_tokenizer(QWEN2_VL_CHAT_TEMPLATE)
    processor = Qwen2VLProcessor(
        tokenizer=tokenizer, chat_template=QWEN2_VL_CHAT_TEMPLATE, **_qwen_vision_processing()
    )
    vision_config = {
        "depth": size.vision_depth,
        "embed_dim": size.vision_width,
        "hidden_size": size.hidden_size,  # the patch merger projects into the text model's width
        "num_heads": 2,
        "mlp_ratio": 2,
        "patch_size": _PATCH_SIZE,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    config = Qwen2VLConfig(**_qwen_config_kwargs(tokenizer, vision_config, size))
    torch.manual_seed(seed)
    return Qwen2VLForConditionalGeneration(config), processor, _qwen_generation_config(tokenizer)


def _build_qwen2_5_vl(seed: int, size: ModelSize) -> _Build:
    tokenizer = _qwen2_tokenizer(QWEN2_VL_CHAT_TEMPLATE)
    processor = Qwen2_5_VLProcessor(
        tokenizer=tokenizer, chat_template=QWEN2_VL_CHAT_TEMPLATE, **_qwen_vision_processing()
    )
    vision_config = {
        "depth": size.vision_depth,
        "hidden_size": size.vision_width,
        "intermediate_size": 2 * size.vision_width,
        "out_hidden_size": size.hidden_size,
        "num_heads": 2,
        "patch_size": _PATCH_SIZE,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        # Window attention over 32-px windows (2x2 merged tokens); the last block attends globally,
        # like the real model's full-attention blocks 7, 15, 23, 31.
        "window_size": 32,
        "fullatt_block_indexes": [size.vision_depth - 1],
    }
    config = Qwen2_5_VLConfig(**_qwen_config_kwargs(tokenizer, vision_config, size))
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config), processor, _qwen_generation_config(tokenizer)


_BUILDERS: dict[str, Callable[[int, ModelSize], _Build]] = {
    "llava": _build_llava,
    "llava_next": _build_llava_next,
    "qwen2_vl": _build_qwen2_vl,
    "qwen2_5_vl": _build_qwen2_5_vl,
}


# ---------------------------------------------------------------------------------------------
# Building into a folder, reusing a complete build of the same spec
# ---------------------------------------------------------------------------------------------


def _build_spec(name: str, seed: int, preset: str = DEFAULT_PRESET) -> dict:
    """What determines a build's bytes: this module's code, the seed, the size preset and the library versions."""
    code_hash = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    return {
        "name": name,
        "seed": seed,
        "preset": preset,
        "code_sha256": code_hash,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


def _is_complete_build(folder: Path, spec: dict) -> bool:
    marker = folder / BUILD_MARKER
    return marker.is_file() and json.loads(marker.read_text()) == spec


def _build_into(output_dir: str | Path, spec: dict, write_files: Callable[[Path], None]) -> Path:
    """Write a build into a temporary sibling folder, add the marker last, then move it into place.

    An interrupted build never leaves a half-written ``output_dir``; an older build (another seed or
    version) is replaced, but a folder that holds something else is never deleted.
    """
    output_dir = Path(output_dir)
    if _is_complete_build(output_dir, spec):
        return output_dir
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / BUILD_MARKER).is_file():
        raise FileExistsError(
            f"{output_dir} is not empty and holds no tiny-zoo build; refusing to overwrite it"
        )
    staging = output_dir.with_name(f".{output_dir.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)  # left over by an interrupted build
    staging.mkdir(parents=True)
    try:
        write_files(staging)
        (staging / BUILD_MARKER).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def _preset_size(preset: str) -> ModelSize:
    if preset not in PRESETS:
        raise ValueError(f"Unknown size preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[preset]


def build_tiny_model(
    family: str,
    output_dir: str | Path,
    seed: int = 0,
    preset: str = DEFAULT_PRESET,
    vision_tower: str | Path | None = None,
) -> Path:
    """Build a tiny random checkpoint of ``family`` (model, processor, tokenizer) into ``output_dir``.

    ``preset`` picks the sizes (``PRESETS``): "tiny" for tests, "shapes" for the shapes-world policy.
    ``vision_tower``, for the CLIP-based families (``llava``, ``llava_next``), is a tiny CLIP
    checkpoint (``build_tiny_clip``, trained by ``scripts/train_clip.py``) whose vision encoder
    replaces the random one, as LLaVA starts from a pretrained CLIP: a random tower trained jointly
    with the language model from scratch is ignored by it (see recipes/shapes/policy_sft.yaml).
    The folder loads with ``AutoProcessor`` and ``AutoModelForImageTextToText``. Returns ``output_dir``.
    """
    if family not in _BUILDERS:
        raise ValueError(f"Unknown tiny model family {family!r}; valid families: {', '.join(FAMILIES)}")
    size = _preset_size(preset)
    spec = _build_spec(family, seed, preset)
    if vision_tower is not None:
        if family not in CLIP_VISION_FAMILIES:
            raise ValueError(
                f"vision_tower applies to the CLIP-based families ({', '.join(CLIP_VISION_FAMILIES)}), "
                f"not to {family!r}"
            )
        spec["vision_tower_sha256"] = _clip_weights_sha256(Path(vision_tower))

    def write_files(folder: Path) -> None:
        model, processor, generation_config = _BUILDERS[family](seed, size)
        if vision_tower is not None:
            _load_clip_vision_tower(model, Path(vision_tower))
        model.generation_config = generation_config
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    return _build_into(output_dir, spec, write_files)


CLIP_VISION_FAMILIES = ("llava", "llava_next")


def _clip_weights_sha256(clip_dir: Path) -> str:
    weights = clip_dir / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{clip_dir} holds no CLIP checkpoint (no model.safetensors)")
    return hashlib.sha256(weights.read_bytes()).hexdigest()


def _load_clip_vision_tower(model: PreTrainedModel, clip_dir: Path) -> None:
    clip = CLIPModel.from_pretrained(clip_dir)
    try:
        model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    except RuntimeError as error:
        raise ValueError(
            f"the CLIP in {clip_dir} does not fit this model's vision tower (build it with build_tiny_clip): {error}"
        ) from error


def build_tiny_clip(output_dir: str | Path, seed: int = 0, preset: str = DEFAULT_PRESET) -> Path:
    """Build a tiny random ``CLIPModel`` + ``CLIPProcessor`` into ``output_dir`` and return it.

    Its image encoder has the size of ``preset``'s CLIP tower, so that it fits the llava models of
    that preset (``build_tiny_model(..., vision_tower=...)``); the text encoder is the same in all.
    """
    size = _preset_size(preset)

    def write_files(folder: Path) -> None:
        tokenizer = _clip_tokenizer()
        text_config = {
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
        config = CLIPConfig(
            text_config=text_config, vision_config=_clip_vision_config(size).to_dict(), projection_dim=32
        )
        torch.manual_seed(seed)
        CLIPModel(config).save_pretrained(folder)
        image_processor = CLIPImageProcessor(**_clip_image_processing())
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)

    return _build_into(output_dir, _build_spec("clip", seed, preset), write_files)
