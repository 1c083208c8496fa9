"""`GenerationBackend` on a transformers `AutoModelForImageTextToText`, batched, with a seed per row.

Batching. Requests are cut into batches of `batch_size` in the order given. Each prompt is
rendered with the processor's chat template and the batch is tokenized with left padding, together
with its images. `generate(num_return_sequences=n)` then expands every prompt into n rows, request
major (row i*n + j is sample j of request i). In transformers 5 the vision encoder runs *before*
that expansion (`mm_encoder_outputs`, for llava, llava_next, qwen2_vl and qwen2_5_vl alike), so
each image is encoded once per request, not once per sample; the tests count it.

Seed per row. `generate` samples every row from one global RNG, so what a row gets depends on
which rows share its batch. Instead, `_RowSampler` (a LogitsProcessor) picks every token itself:
row (request i, sample j) owns a CPU `torch.Generator` seeded from (request seed, j) and draws one
uniform number per step from it; the token is found by inverting the row's cumulative distribution
(after temperature and top-p) at that number. The processor then returns scores that allow only
that token, so `generate`'s own multinomial draw has a single choice. A row's tokens therefore
depend only on its own seed and logits. (`generate` refuses `num_return_sequences > 1` without
`do_sample`, hence the forced draw rather than greedy decoding; it still advances the global RNG,
so generation runs under `torch.random.fork_rng` to leave the caller's RNG untouched.) Temperature 0
is greedy: the argmax, no draw.

This makes batch independence exact in the sampling logic; it holds up to floating point. Padding
changes the shapes the kernels see, so a row's logits can differ in the last bits between batch
compositions (about 1e-7 on the CPU tests). A token flips only if a draw, or for greedy the gap
between the two best logits, falls within that difference; the tests never see it on CPU, bf16 on
GPU makes it likelier, and it changes which sample is drawn, not the distribution it comes from.

Log-probs. The processor is the only one in the list (the checkpoint's own sampling defaults, e.g.
Qwen2-VL's repetition penalty, are dropped: `SamplingParams` is the whole sampling spec), so the
scores it receives are the model's raw logits, the same tensor `output_logits=True` would return.
It keeps the log-softmax of the chosen token per row and step, instead of all rows x steps x vocab
logits, and `Completion.logprob` sums them up to the completion's end.

Ends. A stopping criterion records, per row, the step and reason it finished: EOS (any of the
generation config's EOS ids) or a stop string (transformers' `StopStringCriteria`, which needs the
tokenizer and matches across token boundaries). Tokens after that step are padding and dropped.

Prefix reuse (for CSR's sentence tree, done in `selfalign.samples.tree`): after a forward
pass over images + prompt with `use_cache=True`, `generate(input_ids=prompt + continuation,
past_key_values=<copy of the cache>)` continues without `pixel_values` (Qwen2-VL also needs
`image_grid_thw`; it keeps its M-RoPE offsets in `model.model.rope_deltas`, set by the last prefill).
The tree search shares `_row_generator` and `_next_tokens` with `_RowSampler`, and its reference
implementation calls `_sample_rows`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Sequence

import torch
from transformers import (
    AutoModelForImageTextToText,
    BatchFeature,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)

from selfalign.errors import SelfAlignError
from selfalign.models import load_vlm_processor, pin_revision
from selfalign.samples.sampler import Completion, FinishReason, GenerationRequest, SamplingParams

logger = logging.getLogger(__name__)


def _row_generator(seed: int, *stream: int) -> torch.Generator:
    """The random stream `stream` of the request with `seed`: a sample index, or a tree node's child indices."""
    key = ":".join(str(part) for part in (seed, *stream))
    digest = hashlib.sha256(key.encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "big"))


def _next_tokens(
    scores: torch.FloatTensor,
    generators: Sequence[torch.Generator],
    temperature: float,
    top_p: float,
    never_sampled: Sequence[int] = (),
) -> tuple[torch.LongTensor, torch.FloatTensor]:
    """Each row's next token, drawn with the row's own generator, and its log-prob under the raw `scores`.

    Temperature 0 takes the argmax and draws nothing. `never_sampled` tokens are never chosen; the
    log-probs stay those of the unwarped distribution.
    """
    allowed = scores
    if never_sampled:
        banned = torch.tensor(never_sampled, dtype=torch.long, device=scores.device)
        allowed = scores.index_fill(1, banned, -math.inf)
    chosen = allowed.argmax(dim=-1) if temperature == 0 else _draw(allowed, generators, temperature, top_p)
    return chosen, scores.log_softmax(dim=-1).gather(1, chosen[:, None]).squeeze(1)


def _draw(
    scores: torch.FloatTensor, generators: Sequence[torch.Generator], temperature: float, top_p: float
) -> torch.LongTensor:
    """Inverse-CDF sampling: one uniform number per row, from the row's own generator."""
    probs = (scores / temperature).softmax(dim=-1)
    uniform = torch.stack([torch.rand((), generator=g) for g in generators]).to(scores.device)
    if top_p >= 1:
        # No nucleus: the CDF in token order; sorting the vocabulary per row and step would cost
        # more than the model's forward pass on small models.
        return _invert(probs.cumsum(dim=-1), uniform)
    # Stable sort: equal probabilities keep token order, so the argmax comes first as in argmax().
    sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True, stable=True)
    # Nucleus: the most likely tokens until their mass reaches top_p (the first is always kept).
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    cumulative = (sorted_probs * (mass_before < top_p)).cumsum(dim=-1)
    return sorted_ids.gather(1, _invert(cumulative, uniform)[:, None]).squeeze(1)


def _invert(cumulative: torch.FloatTensor, uniform: torch.FloatTensor) -> torch.LongTensor:
    """Per row, the first index whose cumulative mass exceeds `uniform` x the row's total mass.

    The target is kept below the total (the product can round up to it), so the index found is
    always one whose own mass is positive: never past the end, never a banned token.
    """
    total = cumulative[:, -1:]
    targets = torch.minimum(uniform[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cumulative, targets, right=True).squeeze(1)


class _RowSampler(LogitsProcessor):
    """Chooses each row's next token from the row's own generator and forces `generate` to take it."""

    def __init__(
        self,
        generators: Sequence[torch.Generator],
        temperature: float,
        top_p: float,
        never_sampled: Sequence[int] = (),
    ):
        self.generators = generators  # one per row, in generate's row order
        self.temperature = temperature
        self.top_p = top_p
        self.never_sampled = never_sampled
        self.chosen_logprobs: list[torch.Tensor] = []  # one (rows,) tensor per step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        chosen, logprobs = _next_tokens(
            scores, self.generators, self.temperature, self.top_p, self.never_sampled
        )
        self.chosen_logprobs.append(logprobs)
        forced = torch.full_like(scores, -math.inf)
        return forced.scatter_(1, chosen[:, None], 0.0)


class _FinishRecorder(StoppingCriteria):
    """Stops rows at a stop string and records, per row, how many tokens it generated and why it ended.

    The record stays on the model's device, so that it costs no host synchronisation per step.
    """

    def __init__(
        self, prompt_length: int, eos_token_ids: torch.Tensor, stop_strings: StoppingCriteria | None
    ):
        self.prompt_length = prompt_length
        self.eos_token_ids = eos_token_ids
        self.stop_strings = stop_strings
        self.lengths: torch.Tensor | None = None  # per row: tokens generated when it ended, 0 while running
        self.ended_at_eos: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        hit_eos = torch.isin(input_ids[:, -1], self.eos_token_ids.to(input_ids.device))
        hit_stop = (
            torch.zeros_like(hit_eos) if self.stop_strings is None else self.stop_strings(input_ids, scores)
        )
        if self.lengths is None:
            self.lengths = torch.zeros_like(input_ids[:, -1])
            self.ended_at_eos = torch.zeros_like(hit_eos)
        ends_now = (hit_eos | hit_stop) & (self.lengths == 0)
        self.lengths = torch.where(ends_now, input_ids.shape[1] - self.prompt_length, self.lengths)
        self.ended_at_eos |= ends_now & hit_eos
        return hit_stop  # EOS is stopped by generate's own criterion

    def finishes(self, max_length: int) -> list[tuple[int, FinishReason]]:
        """Per row: how many tokens it generated and why it ended."""
        return [
            (length, "eos" if at_eos else "stop_string") if length else (max_length, "length")
            for length, at_eos in zip(self.lengths.tolist(), self.ended_at_eos.tolist(), strict=True)
        ]


class TransformersBackend:
    """Samples from an `AutoModelForImageTextToText` (Hub id or folder) in batches of `batch_size` prompts."""

    def __init__(
        self,
        model_name_or_path: str,
        *,
        revision: str | None = None,
        dtype: str = "auto",
        batch_size: int = 8,
        device: str | None = None,
        image_max_pixels: int | None = None,
    ):
        if batch_size < 1:
            raise SelfAlignError(f"batch_size must be at least 1, got {batch_size}")
        self.model_name_or_path = model_name_or_path
        self.batch_size = batch_size
        resolved, self.revision = pin_revision(model_name_or_path, revision)
        self.processor = load_vlm_processor(model_name_or_path, resolved, image_max_pixels)
        try:
            self.model = AutoModelForImageTextToText.from_pretrained(
                model_name_or_path, revision=resolved, dtype=dtype
            )
        except (OSError, ValueError) as error:
            raise SelfAlignError(
                f"could not load a vision-language model from '{model_name_or_path}': {error}"
            ) from error
        self.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        checkpoint_config = self.model.generation_config
        eos = checkpoint_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_token_ids = torch.tensor([eos] if isinstance(eos, int) else list(eos))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        pad = checkpoint_config.pad_token_id
        # Only the special tokens are kept from the checkpoint's generation config: its sampling
        # defaults would add logits processors in front of ours and change the distribution.
        self.model.generation_config = GenerationConfig(
            bos_token_id=checkpoint_config.bos_token_id,
            eos_token_id=eos,
            pad_token_id=self.tokenizer.pad_token_id if pad is None else pad,
        )
        # The tokens the model replaces by image or video features are never sampled: fed back as
        # text they would ask for an image that is not there.
        placeholders = (
            getattr(self.model.config, name, None) for name in ("image_token_id", "video_token_id")
        )
        self.never_sampled = tuple(token_id for token_id in placeholders if isinstance(token_id, int))

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> list[list[Completion]]:
        completions = []
        for start in range(0, len(requests), self.batch_size):
            completions += self._generate_batch(requests[start : start + self.batch_size], params)
        return completions

    def _encode(self, requests: Sequence[GenerationRequest]) -> BatchFeature:
        texts = [
            self.processor.apply_chat_template(list(request.messages), add_generation_prompt=True)
            for request in requests
        ]
        # Templates that write the BOS themselves (Mistral's, the tiny zoo's) must not get a second one
        # from the tokenizer; those that leave it to the tokenizer (llava-hf's) need it added. This is
        # the rule of processor.apply_chat_template(tokenize=True).
        # One template renders every prompt, so the first one answers for the batch.
        bos = self.tokenizer.bos_token
        adds_bos = bos is not None and texts[0].startswith(bos)
        inputs = self.processor(
            text=texts,
            images=[list(request.images) for request in requests],
            padding=True,
            return_tensors="pt",
            add_special_tokens=not adds_bos,
        )
        return inputs.to(self.model.device, dtype=self.model.dtype)

    @torch.inference_mode()
    def _generate_batch(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> list[list[Completion]]:
        started = time.perf_counter()
        inputs = self._encode(requests)
        num_rows = len(requests) * params.n
        # Row order of generate's expansion: all samples of request 0, then of request 1, ...
        generators = [_row_generator(request.seed, j) for request in requests for j in range(params.n)]
        stop_strings = (
            StopStringCriteria(self.tokenizer, list(params.stop_strings)) if params.stop_strings else None
        )
        generated, logprobs, finishes = self._sample_rows(
            inputs,
            _RowSampler(generators, params.temperature, params.top_p, self.never_sampled),
            params.n,
            params.max_new_tokens,
            stop_strings,
        )
        rows = [
            self._completion(generated[row, :length], logprobs[row, :length], reason, params)
            for row, (length, reason) in enumerate(finishes)
        ]
        logger.debug(
            "generated %d rows (%d requests x %d) from %d prompt tokens in %.2fs, longest %d tokens",
            num_rows,
            len(requests),
            params.n,
            inputs["input_ids"].shape[1],
            time.perf_counter() - started,
            generated.shape[1],
        )
        return [rows[start : start + params.n] for start in range(0, num_rows, params.n)]

    def _sample_rows(
        self,
        inputs: BatchFeature,
        sampler: LogitsProcessor,
        num_return_sequences: int,
        max_new_tokens: int,
        stop: StoppingCriteria | None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, FinishReason]]]:
        """One `generate` call: per row the generated tokens, their log-probs and (length, finish reason).

        `sampler` chooses every token and records its log-prob in `chosen_logprobs` (`_RowSampler`).
        """
        prompt_length = inputs["input_ids"].shape[1]
        recorder = _FinishRecorder(prompt_length, self.eos_token_ids, stop)
        config = GenerationConfig(
            do_sample=True,  # required for num_return_sequences > 1; the row sampler leaves one choice
            top_k=0,
            num_return_sequences=num_return_sequences,
            max_new_tokens=max_new_tokens,
        )
        cuda_devices = [self.model.device] if self.model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices):
            sequences = self.model.generate(
                **inputs,
                generation_config=config,
                logits_processor=LogitsProcessorList([sampler]),
                stopping_criteria=StoppingCriteriaList([recorder]),
            )
        generated = sequences[:, prompt_length:].cpu()
        logprobs = torch.stack(sampler.chosen_logprobs, dim=1).double().cpu()
        return generated, logprobs, recorder.finishes(max_length=generated.shape[1])

    def _completion(
        self, token_ids: torch.Tensor, logprobs: torch.Tensor, reason: FinishReason, params: SamplingParams
    ) -> Completion:
        text_ids = token_ids[:-1] if reason == "eos" else token_ids
        text = self.tokenizer.decode(text_ids, skip_special_tokens=True)
        if reason == "stop_string":
            # The completing token may run past the stop string ("st" + "opera" for "stop"): cut after it.
            # The match may also begin inside the prompt, then the text holds no whole stop string.
            ends = [text.find(stop) + len(stop) for stop in params.stop_strings if stop in text]
            if ends:
                text = text[: min(ends)]
        return Completion(
            text=text,
            token_ids=tuple(token_ids.tolist()),
            logprob=float(logprobs.sum()),
            num_tokens=len(token_ids),
            finish_reason=reason,
        )
