"""CLIP image-sentence scores for CSR: `logit_scale.exp() * cosine(image embedding, sentence embedding)`.

The released CSR code (`YiyangZhou/CSR`, `inference_csr/score.py`, `get_clip_score`) scores each new
sentence of the sentence tree, after `text_cleaning`, against the prompt's image with
`openai/clip-vit-large-patch14-336`: one `CLIPModel` forward per sentence on
`processor(text=[sentence], images=image)`, keeping `logits_per_image`, i.e. the learned logit
scale (100 for the OpenAI checkpoints) times the cosine of the projected embeddings. It re-encodes
the image for every sentence and does not truncate, so a sentence over CLIP's 77 positions would
fail (its sentences, at most 70 policy tokens, rarely get there). It cuts the new sentence out of
the decoded text by character offset (`len(parent_text) + 3`); here callers pass the sentence.

The paper writes the score as `max(100 * cos, 0)`; the clipping at 0 belongs to the paper's
weighted reward and is applied there (`selfalign.pairs.csr_fusion`), not here, since the released
rank fusion only compares scores.

Here the score is the same number, computed in batches:

- each distinct image object of a call is encoded once (`batch_size` images per forward), however
  many sentences it has, and its normalised embedding is reused for all of them;
- the sentences of all images are encoded together, `batch_size` per forward;
- a sentence longer than the text model's positions is cut to fit (keeping its end-of-text token,
  which CLIP pools), and counted in `stats.sentences_truncated`.

Padding changes the shapes the kernels see, so a score can differ in the last bits between batch
sizes (under 1e-6 with the tiny CLIP on CPU), never more.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from selfalign.errors import SelfAlignError
from selfalign.models import pin_revision

logger = logging.getLogger(__name__)


@dataclass
class ScorerStats:
    """Running totals over every `score` call of one scorer (images looked at, sentences scored)."""

    images_encoded: int = 0
    sentences_encoded: int = 0
    sentences_truncated: int = 0


def check_sentence_groups(images: Sequence[Image.Image], sentences: Sequence[Sequence[str]]) -> None:
    """A scorer's input: one list of sentences per image."""
    if len(images) != len(sentences):
        raise SelfAlignError(
            f"score needs one list of sentences per image, got {len(images)} images and "
            f"{len(sentences)} sentence lists"
        )
    for i, group in enumerate(sentences):
        if isinstance(group, str):  # a bare string would be scored character by character
            raise SelfAlignError(f"sentences[{i}] must be a list of sentences, got the string {group!r}")


class ClipScorer:
    """Scores sentences against their image with a `CLIPModel` (Hub id or folder)."""

    def __init__(
        self,
        model_name_or_path: str,
        revision: str | None = None,
        batch_size: int = 64,
        device: str | None = None,
    ):
        if batch_size < 1:
            raise SelfAlignError(f"batch_size must be at least 1, got {batch_size}")
        self.model_name_or_path = model_name_or_path
        self.batch_size = batch_size
        resolved, self.revision = pin_revision(model_name_or_path, revision)
        try:
            self.processor = CLIPProcessor.from_pretrained(model_name_or_path, revision=resolved)
            self.model = CLIPModel.from_pretrained(model_name_or_path, revision=resolved)
        except (OSError, ValueError) as error:
            raise SelfAlignError(
                f"could not load a CLIP model from '{model_name_or_path}': {error}"
            ) from error
        self.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
        self.max_text_tokens = self.model.config.text_config.max_position_embeddings
        self.stats = ScorerStats()

    @torch.inference_mode()
    def score(self, images: Sequence[Image.Image], sentences: Sequence[Sequence[str]]) -> list[list[float]]:
        """For each image i, the CLIP score of each of `sentences[i]` against it, in the order given."""
        check_sentence_groups(images, sentences)
        # Only images with sentences are encoded, each distinct image object once.
        rows = [row for row, group in enumerate(sentences) if group]
        if not rows:
            return [[] for _ in images]
        position: dict[int, int] = {}  # id(image) -> its row in image_embeddings
        distinct_images = []
        for row in rows:
            if id(images[row]) not in position:
                position[id(images[row])] = len(distinct_images)
                distinct_images.append(images[row])
        image_embeddings = self._embed_images(distinct_images)

        flat_sentences = [sentence for group in sentences for sentence in group]
        flat_images = [position[id(images[row])] for row in rows for _ in sentences[row]]
        text_embeddings = self._embed_texts(flat_sentences)
        cosines = (text_embeddings * image_embeddings[flat_images]).sum(dim=-1)
        flat_scores = (self.model.logit_scale.exp().float() * cosines).tolist()

        scores, start = [], 0
        for group in sentences:
            scores.append(flat_scores[start : start + len(group)])
            start += len(group)
        return scores

    def _embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised image embeddings, one row per image."""
        embeddings = []
        for start in range(0, len(images), self.batch_size):
            batch = self.processor.image_processor(
                list(images[start : start + self.batch_size]), return_tensors="pt"
            )
            pixel_values = batch["pixel_values"].to(self.model.device, self.model.dtype)
            embeddings.append(self.model.get_image_features(pixel_values=pixel_values).pooler_output.float())
        self.stats.images_encoded += len(images)
        return torch.nn.functional.normalize(torch.cat(embeddings), dim=-1)

    def _embed_texts(self, sentences: Sequence[str]) -> torch.Tensor:
        """L2-normalised sentence embeddings, one row per sentence, long sentences truncated."""
        tokenizer = self.processor.tokenizer
        lengths = [len(ids) for ids in tokenizer(list(sentences), verbose=False)["input_ids"]]
        truncated = sum(length > self.max_text_tokens for length in lengths)
        if truncated:
            logger.debug(
                "%d of %d sentences cut to %d tokens", truncated, len(sentences), self.max_text_tokens
            )
        embeddings = []
        for start in range(0, len(sentences), self.batch_size):
            batch = tokenizer(
                list(sentences[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_text_tokens,
                return_tensors="pt",
            ).to(self.model.device)
            features = self.model.get_text_features(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            )
            embeddings.append(features.pooler_output.float())
        self.stats.sentences_encoded += len(sentences)
        self.stats.sentences_truncated += truncated
        return torch.nn.functional.normalize(torch.cat(embeddings), dim=-1)
