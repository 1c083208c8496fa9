"""The batched sampler on every tiny family: batching, padding and process count never change a sample."""

import math
import re

import pytest
import torch
from huggingface_hub import HfApi

from selfalign.errors import SelfAlignError
from selfalign.publish.hub import push_folder
from selfalign.samples import GenerationRequest, SamplingParams, TransformersBackend, sample
from selfalign.tiny_zoo import FAMILIES, LLAVA_CHAT_TEMPLATE
from selfalign.tiny_zoo.data import draw_shape

# Prompts of different lengths and images of different sizes and aspect ratios, so that batches
# are left-padded and (for llava_next and the Qwen families) hold different numbers of image tokens.
PROMPTS = (
    "Describe the image.",
    "How many shapes are there in the image? Answer with yes or no.",
    "What is in the image?",
    "Describe the image in detail. Please look carefully, count every object and mention only what is visible.",
    "Yes?",
)
IMAGE_SIZES = ((48, 48), (80, 40), (40, 72), (64, 64), (32, 56))


def make_requests(count: int = 5, first_seed: int = 100) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            images=(draw_shape(("red", "blue", "green")[i % 3], "circle", IMAGE_SIZES[i % 5]),),
            messages=(
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPTS[i % 5]}]},
            ),
            seed=first_seed + i,
        )
        for i in range(count)
    ]


def tokens(results) -> list[list[tuple]]:
    """What must be identical between runs (log-probs may differ in the last bits with padding)."""
    return [[(c.token_ids, c.text, c.finish_reason) for c in row] for row in results]


def chat_inputs(backend: TransformersBackend, request: GenerationRequest, token_ids=()):
    """The prompt tokenized by transformers' own processor.apply_chat_template, then `token_ids`."""
    images = iter(request.images)
    messages = [
        {
            **message,
            "content": [
                {**part, "image": next(images)} if part["type"] == "image" else part
                for part in message["content"]
            ],
        }
        for message in request.messages
    ]
    inputs = backend.processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    continuation = torch.tensor([token_ids], dtype=torch.long)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], continuation], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(continuation)], dim=1)
    if "mm_token_type_ids" in inputs:  # Qwen: 0 marks text tokens
        inputs["mm_token_type_ids"] = torch.cat(
            [inputs["mm_token_type_ids"], torch.zeros_like(continuation)], dim=1
        )
    return inputs


def teacher_forced_logprob(backend: TransformersBackend, request: GenerationRequest, token_ids) -> float:
    inputs = chat_inputs(backend, request, token_ids)
    with torch.no_grad():
        logits = backend.model(**inputs).logits[0].double()
    positions = torch.arange(inputs["input_ids"].shape[1] - len(token_ids) - 1, logits.shape[0] - 1)
    return float(logits[positions].log_softmax(-1)[torch.arange(len(token_ids)), list(token_ids)].sum())


@pytest.fixture(scope="module")
def backends(tiny_model_dirs) -> dict[str, TransformersBackend]:
    return {family: TransformersBackend(str(tiny_model_dirs[family]), batch_size=5) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_greedy_equals_one_at_a_time_and_transformers_greedy(family, backends, tiny_model_dirs):
    requests = make_requests()
    params = SamplingParams(temperature=0, max_new_tokens=12)
    batched = sample(backends[family], requests, params)
    one_at_a_time = sample(TransformersBackend(str(tiny_model_dirs[family]), batch_size=1), requests, params)
    assert tokens(batched) == tokens(one_at_a_time)
    for row_batched, row_single in zip(batched, one_at_a_time, strict=True):
        assert row_batched[0].logprob == pytest.approx(row_single[0].logprob, abs=1e-4)

    # Temperature 0 is plain greedy decoding, on the prompt tokenized by transformers itself (one BOS).
    model = backends[family].model
    for request, (completion,) in zip(requests[:2], batched[:2], strict=True):
        inputs = chat_inputs(backends[family], request)
        with torch.no_grad():
            greedy = model.generate(**inputs, do_sample=False, max_new_tokens=12)
        assert completion.token_ids == tuple(greedy[0, inputs["input_ids"].shape[1] :].tolist())


@pytest.mark.parametrize("template_writes_bos", [True, False])
def test_prompts_start_with_exactly_one_bos(template_writes_bos, tiny_model_dirs):
    """The tiny zoo's template writes <s> itself (like Mistral's); llava-hf's leave it to the tokenizer."""
    backend = TransformersBackend(str(tiny_model_dirs["llava"]))
    if not template_writes_bos:
        backend.processor.chat_template = LLAVA_CHAT_TEMPLATE.replace("{{- bos_token -}}", "", 1)
    inputs = backend._encode(make_requests())
    bos = backend.tokenizer.bos_token_id
    for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True):
        prompt = ids[mask.bool()].tolist()
        assert prompt[0] == bos and prompt.count(bos) == 1


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_seeded_samples_do_not_depend_on_batching_or_order(family, tiny_model_dirs):
    requests = make_requests()
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=10)
    reference = tokens(
        sample(TransformersBackend(str(tiny_model_dirs[family]), batch_size=5), requests, params)
    )
    order = [3, 0, 4, 1, 2]
    for batch_size in (1, 2, 5):
        backend = TransformersBackend(str(tiny_model_dirs[family]), batch_size=batch_size)
        assert tokens(sample(backend, requests, params)) == reference
        shuffled = tokens(sample(backend, [requests[i] for i in order], params))
        assert [shuffled[order.index(i)] for i in range(len(requests))] == reference

    # The n samples of a request differ, and another seed gives other samples.
    assert all(len({token_ids for token_ids, _, _ in row}) == 3 for row in reference)
    reseeded = tokens(sample(backend, make_requests(first_seed=7), params))
    assert all(new != old for new, old in zip(reseeded, reference, strict=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_n_samples_come_from_one_encoding_of_the_image(family, backends):
    backend = backends[family]
    tower = getattr(backend.model.model, "vision_tower", None) or backend.model.model.visual
    encoded = []  # per vision forward: how many images (llava, Qwen) or tiles (llava_next) it encoded

    def count(module, args, kwargs, output):
        if "grid_thw" in kwargs:  # Qwen: one (t, h, w) row per image
            encoded.append(len(kwargs["grid_thw"]))
        else:  # CLIP: one pixel row per image, or per anyres tile
            encoded.append(len(args[0]))

    handle = tower.register_forward_hook(count, with_kwargs=True)
    try:
        requests = make_requests()
        sample(backend, requests, SamplingParams(n=1, max_new_tokens=3))
        once = list(encoded)
        encoded.clear()
        sample(backend, requests, SamplingParams(n=4, max_new_tokens=3))
    finally:
        handle.remove()
    assert len(encoded) == 1  # one batch of 5 requests, one vision forward
    assert encoded == once  # 4 samples per request encode exactly what 1 sample does
    if family != "llava_next":  # llava_next encodes each image as several anyres tiles
        assert encoded == [len(requests)]


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_logprob_is_the_teacher_forced_log_likelihood(family, backends):
    backend = backends[family]
    requests = make_requests(3)
    results = sample(backend, requests, SamplingParams(n=2, temperature=0.8, top_p=0.9, max_new_tokens=24))
    for request, row in zip(requests, results, strict=True):
        for completion in row:
            expected = teacher_forced_logprob(backend, request, completion.token_ids)
            assert completion.logprob == pytest.approx(expected, abs=1e-4)


def test_image_placeholder_tokens_are_never_sampled(backends):
    """Fed back as text, a sampled placeholder would ask for an image that is not there."""
    backend = backends["llava"]
    image_token = backend.processor.image_token_id
    assert backend.never_sampled == (image_token,)

    def favour_the_placeholder(module, inputs, logits):
        logits[..., image_token] += 100.0  # the model's first choice at every step
        return logits

    hook = backend.model.lm_head.register_forward_hook(favour_the_placeholder)
    try:
        for temperature in (0.0, 1.0):
            results = sample(backend, make_requests(2), SamplingParams(n=2, temperature=temperature))
            completions = [completion for row in results for completion in row]
            assert all(completion.num_tokens > 0 for completion in completions)
            assert all(image_token not in completion.token_ids for completion in completions)
    finally:
        hook.remove()


def test_temperature_zero_and_tiny_top_p_pick_the_argmax(backends):
    requests = make_requests()
    greedy = sample(backends["qwen2_vl"], requests, SamplingParams(temperature=0, max_new_tokens=8))
    nucleus = sample(backends["qwen2_vl"], requests, SamplingParams(n=3, top_p=1e-6, max_new_tokens=8))
    assert tokens(nucleus) == [row * 3 for row in tokens(greedy)]
    hot = sample(backends["qwen2_vl"], requests, SamplingParams(temperature=1.0, max_new_tokens=8))
    assert tokens(hot) != tokens(greedy)


def test_stop_strings_stop_and_are_kept_in_the_text(backends):
    backend = backends["llava"]
    requests = make_requests()
    free = sample(backend, requests, SamplingParams(temperature=0, max_new_tokens=16))
    # A word the first request's greedy completion writes after a few tokens.
    first = free[0][0]
    stop = next(
        word
        for index in range(3, first.num_tokens)
        if len(word := backend.tokenizer.decode(first.token_ids[index]).strip()) >= 3 and word.isalpha()
    )
    stopped = sample(
        backend, requests, SamplingParams(temperature=0, max_new_tokens=16, stop_strings=(stop,))
    )
    for (unstopped,), (completion,) in zip(free, stopped, strict=True):
        if stop in unstopped.text:
            assert completion.finish_reason == "stop_string"
            assert completion.text == unstopped.text[: unstopped.text.index(stop) + len(stop)]
            assert unstopped.token_ids[: completion.num_tokens] == completion.token_ids
            assert completion.num_tokens < unstopped.num_tokens
        else:  # rows of the same batch that never write it run on, unpadded
            assert completion.token_ids == unstopped.token_ids
            assert completion.finish_reason == unstopped.finish_reason == "length"
    assert stopped[0][0].finish_reason == "stop_string"


def test_eos_and_length_end_completions_without_padding(backends):
    """EOS is made likely (a sixth of the probability at every step), so rows end at different steps."""
    backend = backends["llava"]
    eos = backend.tokenizer.eos_token_id

    def make_eos_likely(module, args, output):
        others = torch.cat([output[..., :eos], output[..., eos + 1 :]], dim=-1)
        output[..., eos] = others.logsumexp(dim=-1) - math.log(5)
        return output

    handle = backend.model.lm_head.register_forward_hook(make_eos_likely)
    try:
        requests = make_requests(4)
        results = sample(backend, requests, SamplingParams(n=4, temperature=1.0, max_new_tokens=6))
        recomputed = teacher_forced_logprob(backend, requests[0], results[0][0].token_ids)
    finally:
        handle.remove()
    completions = [completion for row in results for completion in row]
    reasons = {completion.finish_reason for completion in completions}
    assert reasons == {"eos", "length"}
    for completion in completions:
        assert completion.num_tokens == len(completion.token_ids)
        assert backend.tokenizer.pad_token_id not in completion.token_ids
        assert eos not in completion.token_ids[:-1]
        if completion.finish_reason == "eos":
            assert completion.token_ids[-1] == eos and completion.num_tokens <= 6
        else:
            assert completion.num_tokens == 6
    assert results[0][0].logprob == pytest.approx(recomputed, abs=1e-4)


def test_revision_is_recorded_for_cards(hub_server, tiny_model_dirs, backends):
    assert backends["llava"].revision == "local"
    repo_id = "selfalign-tests/sampler-tiny-llava"
    push_folder(tiny_model_dirs["llava"], repo_id, commit_message="Tiny LLaVA for the sampler")
    from_hub = TransformersBackend(repo_id)
    assert from_hub.model_name_or_path == repo_id
    assert re.fullmatch(r"[0-9a-f]{40}", from_hub.revision)
    assert from_hub.revision == HfApi().model_info(repo_id).sha


@pytest.mark.parametrize(
    "values",
    [
        {"n": 0},
        {"temperature": -0.1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"max_new_tokens": 0},
        {"stop_strings": ("",)},
    ],
)
def test_invalid_sampling_params_are_refused(values):
    with pytest.raises(SelfAlignError):
        SamplingParams(**values)
