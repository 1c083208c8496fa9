"""The tokenizers, trained on the spot on the corpus with each family's own pre-tokenization and laid
out like the real vocabularies: Llama/Mistral's SentencePiece-style BPE, Qwen2's byte-level BPE and
CLIP's lower-cased BPE with word ends."""

from __future__ import annotations

import json

from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTokenizer, LlamaTokenizer, Qwen2Tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_PRETOKENIZE_REGEX

from selfalign.tiny_zoo.corpus import shapes_corpus

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


def llama_tokenizer(chat_template: str) -> LlamaTokenizer:
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


def qwen2_tokenizer(chat_template: str) -> Qwen2Tokenizer:
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


def clip_tokenizer() -> CLIPTokenizer:
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
