"""The offline tiny model zoo: each family loads, renders its real chat format, runs, trains with TRL."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from PIL import Image, ImageDraw
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    CLIPModel,
    CLIPProcessor,
    GenerationConfig,
)
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from selfalign.tiny_zoo import BUILD_MARKER, FAMILIES, PRESETS, build_tiny_clip, build_tiny_model

# What each family's template must render for: system, user (image + text), assistant, user (text),
# then the generation prompt. These are the markers of the real checkpoints' formats.
EXPECTED_RENDERING = {
    "llava": (
        "<s>Be brief. USER: <image>\nWhat is in the image? ASSISTANT: A red circle.</s>"
        "USER: Where is it? ASSISTANT:"
    ),
    "llava_next": (
        "<s>[INST] Be brief.\n\n<image>\nWhat is in the image? [/INST] A red circle.</s>"
        "[INST] Where is it? [/INST]"
    ),
    "qwen2_vl": (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is in the image?<|im_end|>\n"
        "<|im_start|>assistant\nA red circle.<|im_end|>\n"
        "<|im_start|>user\nWhere is it?<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
}
EXPECTED_RENDERING["qwen2_5_vl"] = EXPECTED_RENDERING["qwen2_vl"]

# The token that ends an assistant reply (and is trained on) in each family.
TURN_END = {"llava": "</s>", "llava_next": "</s>", "qwen2_vl": "<|im_end|>", "qwen2_5_vl": "<|im_end|>"}


def _shapes_image(width: int, height: int, color: str) -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).ellipse((width // 4, height // 4, width // 2, height // 2), fill=color)
    return image


# Two aspect ratios: landscape and a tall portrait.
IMAGES = [_shapes_image(64, 40, "red"), _shapes_image(30, 90, "blue")]


def _user_turn(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def _assistant_turn(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def _load(folder: Path):
    return AutoProcessor.from_pretrained(folder), AutoModelForImageTextToText.from_pretrained(folder)


def _left_padded_batch(processor, questions: list[str]):
    prompts = [processor.apply_chat_template(_user_turn(q), add_generation_prompt=True) for q in questions]
    # The templates render bos themselves, so the tokenizer must not add another.
    return processor(
        text=prompts,
        images=IMAGES[: len(questions)],
        padding=True,
        padding_side="left",
        add_special_tokens=False,
        return_tensors="pt",
    )


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_unknown_family_names_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="llava, llava_next, qwen2_vl, qwen2_5_vl"):
        build_tiny_model("idefics", tmp_path / "idefics")


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_loads_with_auto_classes_and_consistent_special_tokens(tiny_model_dirs, family):
    folder = tiny_model_dirs[family]
    processor, model = _load(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)

    assert sum(path.stat().st_size for path in folder.iterdir()) < 5 * 1024 * 1024
    assert processor.chat_template and tokenizer.chat_template == processor.chat_template
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)

    # The ids in config.json and generation_config.json are the tokenizer's.
    generation_config = GenerationConfig.from_pretrained(folder)
    stop_ids = generation_config.eos_token_id
    stop_ids = stop_ids if isinstance(stop_ids, list) else [stop_ids]
    assert tokenizer.eos_token_id == stop_ids[0]
    assert generation_config.pad_token_id == tokenizer.pad_token_id
    for config in (model.config, model.config.get_text_config()):
        assert config.eos_token_id == tokenizer.eos_token_id
        assert config.pad_token_id == tokenizer.pad_token_id
        assert config.bos_token_id == generation_config.bos_token_id
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids(processor.image_token)


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_renders_the_family_format(tiny_model_dirs, family):
    processor = AutoProcessor.from_pretrained(tiny_model_dirs[family])
    conversation = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        *_user_turn("What is in the image?"),
        *_assistant_turn("A red circle."),
        {"role": "user", "content": [{"type": "text", "text": "Where is it?"}]},
    ]
    rendered = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert rendered == EXPECTED_RENDERING[family]

    # Plain string content renders like a single text part, in the processor and the tokenizer.
    as_strings = [{"role": m["role"], "content": m["content"][-1]["text"]} for m in conversation]
    as_strings[1]["content"] = [{"type": "image"}, {"type": "text", "text": as_strings[1]["content"]}]
    assert (
        processor.tokenizer.apply_chat_template(as_strings, add_generation_prompt=True, tokenize=False)
        == rendered
    )

    # Tokenizing through the processor keeps the template's bos and adds no second one.
    with_image = [
        {"role": "user", "content": [{"type": "image", "image": IMAGES[0]}, {"type": "text", "text": "Hi"}]}
    ]
    encoded = processor.apply_chat_template(
        with_image, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    bos_id = processor.tokenizer.bos_token_id
    assert encoded["input_ids"][0].count(bos_id) == (0 if bos_id is None else 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_left_padded_forward_and_generate(tiny_model_dirs, family):
    processor, model = _load(tiny_model_dirs[family])
    model.eval()
    questions = ["Describe the image.", "How many red circles are there in the image?"]
    batch = _left_padded_batch(processor, questions)

    # The shorter prompt is padded on the left: every row ends with a real token.
    assert not batch["attention_mask"][:, 0].all() and batch["attention_mask"][:, -1].all()
    image_tokens = (batch["input_ids"] == model.config.image_token_id).sum(dim=1)
    assert 4 <= image_tokens.min() and image_tokens.max() <= 100
    # The forward pass checks that image tokens and image features agree.
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape

    generated = model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert generated.shape[1] > batch["input_ids"].shape[1]

    # Left padding must not change what each prompt generates on its own.
    for row, question in enumerate(questions):
        alone = processor(
            text=[processor.apply_chat_template(_user_turn(question), add_generation_prompt=True)],
            images=[IMAGES[row]],
            add_special_tokens=False,
            return_tensors="pt",
        )
        alone_generated = model.generate(**alone, max_new_tokens=6, do_sample=False)
        new_tokens = alone_generated[0, alone["input_ids"].shape[1] :]
        assert torch.equal(generated[row, batch["input_ids"].shape[1] :], new_tokens)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_optimizer_step_changes_the_weights(tiny_model_dirs, family):
    processor, model = _load(tiny_model_dirs[family])
    conversations = [
        _user_turn("Describe the image.") + _assistant_turn("There is a red circle."),
        _user_turn("What color is the circle?") + _assistant_turn("The circle is blue."),
    ]
    texts = [processor.apply_chat_template(conversation) for conversation in conversations]
    batch = processor(text=texts, images=IMAGES, padding=True, add_special_tokens=False, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = model(**batch, labels=labels).loss
    loss.backward()
    optimizer.step()

    assert torch.isfinite(loss)
    changed = {name for name, param in model.named_parameters() if not torch.equal(before[name], param)}
    assert any("lm_head" in name for name in changed)
    assert any("visual" in name or "vision_tower" in name for name in changed)


def test_build_is_deterministic_and_reused(tmp_path):
    first = build_tiny_model("qwen2_vl", tmp_path / "first")
    again = build_tiny_model("qwen2_vl", tmp_path / "again")
    other_seed = build_tiny_model("qwen2_vl", tmp_path / "other_seed", seed=1)

    assert _folder_bytes(first) == _folder_bytes(again)
    assert (first / "model.safetensors").read_bytes() != (other_seed / "model.safetensors").read_bytes()
    assert (first / "tokenizer.json").read_bytes() == (other_seed / "tokenizer.json").read_bytes()

    # A complete build is returned as is; a different seed replaces it.
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model("qwen2_vl", first) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime
    build_tiny_model("qwen2_vl", first, seed=1)
    assert json.loads((first / BUILD_MARKER).read_text())["seed"] == 1
    assert _folder_bytes(first) == _folder_bytes(other_seed)

    # A folder that holds something else is never overwritten.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_tiny_model("llava", foreign)


def test_builds_are_identical_across_processes(tmp_path, tiny_model_dirs, tiny_clip_dir):
    # The BPE trainer's hash maps are seeded per process, so only a fresh process shows
    # whether tokenizer training is really deterministic.
    script = (
        "import sys; from selfalign.tiny_zoo import build_tiny_clip, build_tiny_model; "
        "build_tiny_model('llava', sys.argv[1]); build_tiny_clip(sys.argv[2])"
    )
    subprocess.run([sys.executable, "-c", script, tmp_path / "llava", tmp_path / "clip"], check=True)
    assert _folder_bytes(tmp_path / "llava") == _folder_bytes(tiny_model_dirs["llava"])
    assert _folder_bytes(tmp_path / "clip") == _folder_bytes(tiny_clip_dir)


def _preference_dataset():
    return Dataset.from_dict(
        {
            "images": [[IMAGES[0]], [IMAGES[1]]],
            "prompt": [_user_turn("Describe the image."), _user_turn("What color is the circle?")],
            "chosen": [_assistant_turn("There is a red circle."), _assistant_turn("The circle is blue.")],
            "rejected": [_assistant_turn("There is a green star."), _assistant_turn("The circle is red.")],
        }
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_trl_dpo_trains_with_lora(tiny_model_dirs, family, tmp_path):
    processor, model = _load(tiny_model_dirs[family])
    dataset = _preference_dataset()
    args = DPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-2,
        max_length=None,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=processor, peft_config=lora
    )

    # TRL splits the rendered conversation into prompt and completion at the generation prompt.
    batch = trainer.data_collator([dataset[0], dataset[1]])
    completion = batch["input_ids"][0][batch["completion_mask"][0].bool()]
    assert processor.tokenizer.decode(completion).strip() == "There is a red circle." + TURN_END[family]

    before = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}
    trainer.train()
    changed = {
        name for name, param in trainer.model.named_parameters() if not torch.equal(before[name], param)
    }
    # Every adapter of the language model moved and no base weight did. (Not every adapter of the
    # vision tower: LLaVA never reads its last layer.)
    language_adapters = {name for name in before if "lora_B" in name and "language_model" in name}
    assert language_adapters and language_adapters <= changed
    assert all("lora_" in name for name in changed)


@pytest.mark.parametrize("family", FAMILIES)
def test_trl_sft_trains_on_assistant_tokens(tiny_model_dirs, family, tmp_path):
    processor, model = _load(tiny_model_dirs[family])
    dataset = Dataset.from_dict(
        {
            "images": [[IMAGES[0]], [IMAGES[1]]],
            "messages": [
                _user_turn("Describe the image.") + _assistant_turn("There is a red circle."),
                _user_turn("What color is the circle?") + _assistant_turn("The circle is blue."),
            ],
        }
    )
    args = SFTConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-2,
        max_length=None,
        assistant_only_loss=True,  # needs the templates' {% generation %} blocks
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)

    batch = trainer.data_collator([dataset[0], dataset[1]])
    labels = batch["labels"][0]
    assert processor.tokenizer.decode(labels[labels != -100]) == "There is a red circle." + TURN_END[family]

    before = model.lm_head.weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, model.lm_head.weight)


def test_tiny_clip_scores_images_and_truncated_text(tiny_clip_dir):
    processor = CLIPProcessor.from_pretrained(tiny_clip_dir)
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    long_text = " ".join(["there is a small red circle at the top left of the image."] * 20)
    inputs = processor(
        text=[long_text, "a blue circle"], images=IMAGES, padding=True, truncation=True, return_tensors="pt"
    )
    assert inputs["input_ids"].shape == (2, 77)

    with torch.no_grad():
        # transformers 5 returns model outputs here; the projected features are the pooler output.
        image_features = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        text_features = model.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).pooler_output
    assert image_features.shape == text_features.shape == (2, model.config.projection_dim)
    assert torch.isfinite(image_features @ text_features.T).all()


def test_llava_starts_from_a_clip_vision_tower(tmp_path, tiny_clip_dir):
    clip_dir = tmp_path / "clip"
    clip = CLIPModel.from_pretrained(tiny_clip_dir)
    with torch.no_grad():  # a "trained" CLIP: weights no random build has
        for parameter in clip.vision_model.parameters():
            parameter.add_(0.5)
    clip.save_pretrained(clip_dir)

    folder = build_tiny_model("llava", tmp_path / "llava", vision_tower=clip_dir)
    tower = AutoModelForImageTextToText.from_pretrained(folder).model.vision_tower.state_dict()
    expected = clip.vision_model.state_dict()
    assert tower.keys() == expected.keys()
    assert all(torch.equal(tower[name], expected[name]) for name in expected)
    assert json.loads((folder / BUILD_MARKER).read_text())["vision_tower_sha256"]

    # Another CLIP is another build, not a reuse of this one.
    rebuilt = build_tiny_model("llava", tmp_path / "llava", vision_tower=tiny_clip_dir)
    tower = AutoModelForImageTextToText.from_pretrained(rebuilt).model.vision_tower.state_dict()
    untouched = CLIPModel.from_pretrained(tiny_clip_dir).vision_model.state_dict()
    assert all(torch.equal(tower[name], untouched[name]) for name in untouched)

    with pytest.raises(ValueError, match="CLIP-based families"):
        build_tiny_model("qwen2_vl", tmp_path / "qwen", vision_tower=clip_dir)
    with pytest.raises(FileNotFoundError, match="no CLIP checkpoint"):
        build_tiny_model("llava", tmp_path / "llava2", vision_tower=tmp_path / "missing")


def test_a_clip_fits_the_llava_of_its_own_size_preset_only(tmp_path):
    clip_dir = build_tiny_clip(tmp_path / "clip", preset="shapes")
    vision = CLIPModel.from_pretrained(clip_dir).config.vision_config
    size = (vision.hidden_size, vision.num_hidden_layers)
    assert size == (PRESETS["shapes"].clip_width, PRESETS["shapes"].clip_depth)
    assert size != (PRESETS["tiny"].clip_width, PRESETS["tiny"].clip_depth)

    folder = build_tiny_model("llava", tmp_path / "llava", preset="shapes", vision_tower=clip_dir)
    tower = AutoModelForImageTextToText.from_pretrained(folder).model.vision_tower
    assert tower.config.hidden_size == vision.hidden_size
    with pytest.raises(ValueError, match="does not fit this model's vision tower"):
        build_tiny_model("llava", tmp_path / "tiny_llava", vision_tower=clip_dir)
    with pytest.raises(ValueError, match="Unknown size preset 'huge'"):
        build_tiny_clip(tmp_path / "huge", preset="huge")
