"""What every method asks of a policy: N completions per (images, prompt), reproducible from a seed.

The methods (EACO, CSR, IPA) build `GenerationRequest`s and call `sample`; they never call a model's
`generate` themselves, so a faster backend (vLLM) can replace `TransformersBackend` without touching
them. The contract a backend keeps:

- one list per request, in request order, each holding `params.n` completions;
- completion j of a request depends only on the model, the request (images, messages, seed), the
  params and j: never on which other requests share its batch, on the batch size, or on how many
  processes share the work;
- `Completion.token_ids` are the sampled tokens, up to and including the one that ended the
  completion (EOS, or the token that completed a stop string), without padding;
- `Completion.text` is the decoded completion without special tokens; when a stop string ended it,
  the text ends with that stop string (kept, not stripped, so that e.g. a sentence keeps its full
  stop), even if the token that completed it carried more characters;
- `Completion.logprob` is the sum of the log-probabilities of `token_ids` under the model's own
  distribution (before temperature or top-p), so it can be recomputed by teacher forcing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from PIL import Image

from selfalign.errors import SelfAlignError

logger = logging.getLogger(__name__)

FinishReason = Literal["eos", "stop_string", "length"]


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # samples per prompt, via num_return_sequences
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 128
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.n < 1:
            raise SelfAlignError(f"the number of samples per prompt must be at least 1, got {self.n}")
        if self.temperature < 0:
            raise SelfAlignError(f"temperature must be 0 (greedy) or positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SelfAlignError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise SelfAlignError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if any(not stop for stop in self.stop_strings):
            raise SelfAlignError("stop strings must not be empty")


@dataclass(frozen=True)
class GenerationRequest:
    images: tuple[Image.Image, ...]
    # A user turn: [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ...}]}]
    messages: tuple[dict, ...]
    seed: int  # the row's own seed: samples depend on it, not on batch composition or process count


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]
    logprob: float  # sum of the sampled tokens' log-probs under the (unwarped) model distribution
    num_tokens: int
    finish_reason: FinishReason


class GenerationBackend(Protocol):
    """A model that samples completions; see the module docstring for the contract."""

    model_name_or_path: str
    revision: str  # the commit the weights came from ("local" for a folder), for cards

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> list[list[Completion]]: ...


def sample(
    backend: GenerationBackend, requests: Sequence[GenerationRequest], params: SamplingParams
) -> list[list[Completion]]:
    """`params.n` completions for each request, in request order: the one generation loop of the methods.

    The backend batches the requests as suits it (a fixed batch size for transformers, continuous
    batching for vLLM); the result does not depend on how.
    """
    requests = list(requests)
    if not requests:
        return []
    logger.debug(
        "sampling %d requests x %d from %s@%s",
        len(requests),
        params.n,
        backend.model_name_or_path,
        backend.revision,
    )
    completions = backend.generate(requests, params)
    if len(completions) != len(requests) or any(len(row) != params.n for row in completions):
        raise RuntimeError(
            f"{type(backend).__name__} returned {[len(row) for row in completions]} completions for "
            f"{len(requests)} requests x {params.n}"
        )
    return completions
