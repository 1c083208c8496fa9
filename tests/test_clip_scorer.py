"""The CLIP scorer on the tiny CLIP (scores by hand, one encoding per image, truncation, batching) and CSR's
sentence cleaning."""

import pytest
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from selfalign.errors import SelfAlignError
from selfalign.scores import CleanedSentence, ClipScorer, SentenceCleaning, clean_sentence

SENTENCES = [
    ["There is a red circle.", "The image shows a blue square at the top left.", "A cat."],
    ["There are two green stars.", ""],
    ["Yes."],
]
LONG_SENTENCE = "There is a small red circle next to the big blue square. " * 8  # about 110 tokens


@pytest.fixture(scope="module")
def images():
    return [Image.new("RGB", (48, 40), colour) for colour in ((220, 30, 30), (30, 200, 40), (40, 40, 230))]


@pytest.fixture(scope="module")
def scorer(tiny_clip_dir):
    return ClipScorer(str(tiny_clip_dir), batch_size=4, device="cpu")


@pytest.fixture(scope="module")
def reference(tiny_clip_dir):
    """A separately loaded CLIP, to compute scores the plain way: one image and one sentence at a time."""
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip_dir)

    @torch.no_grad()
    def score(image, sentence):
        pixels = processor.image_processor([image], return_tensors="pt")["pixel_values"]
        text = processor.tokenizer([sentence], truncation=True, max_length=77, return_tensors="pt")
        image_features = model.get_image_features(pixel_values=pixels).pooler_output[0]
        text_features = model.get_text_features(**text).pooler_output[0]
        cosine = torch.nn.functional.cosine_similarity(image_features, text_features, dim=0)
        return (model.logit_scale.exp() * cosine).item()

    return score


def test_scores_are_logit_scale_times_cosine(scorer, images, reference):
    scores = scorer.score(images, SENTENCES)
    assert [len(row) for row in scores] == [3, 2, 1]
    for image, sentences, row in zip(images, SENTENCES, scores, strict=True):
        assert row == pytest.approx([reference(image, sentence) for sentence in sentences], abs=1e-5)
    assert scorer.revision == "local"


def test_each_image_is_encoded_once(scorer, images):
    encoded_rows = []

    def count_images(module, args, kwargs, output):
        pixel_values = kwargs["pixel_values"] if "pixel_values" in kwargs else args[0]
        encoded_rows.append(pixel_values.shape[0])

    hook = scorer.model.vision_model.register_forward_hook(count_images, with_kwargs=True)
    try:
        before = scorer.stats.images_encoded
        many = [f"There is a red circle number {i}." for i in range(12)]
        # images[0] serves two rows; images[2] has no sentences and is not encoded at all.
        scores = scorer.score([images[0], images[1], images[0], images[2]], [many, many[:3], many[:2], []])
    finally:
        hook.remove()
    assert sum(encoded_rows) == 2
    assert scorer.stats.images_encoded - before == 2
    # The same image embedding, against text encoded in a batch of 2 instead of 12: equal up to the
    # rounding of a different batch shape.
    assert scores[2] == pytest.approx(scores[0][:2], rel=1e-5)
    assert scores[3] == []


def test_long_sentences_are_truncated_and_counted(scorer, images, reference):
    tokens = len(scorer.processor.tokenizer(LONG_SENTENCE)["input_ids"])
    assert tokens > 77
    before_truncated, before_encoded = scorer.stats.sentences_truncated, scorer.stats.sentences_encoded
    scores = scorer.score(images[:2], [[LONG_SENTENCE, "A cat."], [LONG_SENTENCE]])
    assert scorer.stats.sentences_truncated - before_truncated == 2
    assert scorer.stats.sentences_encoded - before_encoded == 3
    assert scores[0][0] == pytest.approx(reference(images[0], LONG_SENTENCE), abs=1e-5)
    # Cut at 77 tokens: what follows the cut no longer matters.
    [[longer]] = scorer.score(images[:1], [[LONG_SENTENCE + " A dog."]])
    assert longer == pytest.approx(scores[0][0], abs=1e-5)


def test_batch_size_does_not_change_scores(tiny_clip_dir, scorer, images):
    one_at_a_time = ClipScorer(str(tiny_clip_dir), batch_size=1, device="cpu")
    all_at_once = ClipScorer(str(tiny_clip_dir), batch_size=64, device="cpu")
    sentences = [*SENTENCES[:2], [LONG_SENTENCE, "Yes."]]
    expected = scorer.score(images, sentences)
    for other in (one_at_a_time, all_at_once):
        scores = other.score(images, sentences)
        for row, expected_row in zip(scores, expected, strict=True):
            assert row == pytest.approx(expected_row, abs=1e-5)
    assert scorer.score(images, sentences) == expected  # deterministic


def test_empty_input(scorer, images):
    assert scorer.score([], []) == []
    assert scorer.score(images[:2], [[], []]) == [[], []]


def test_bad_input_raises(scorer, images, tmp_path):
    with pytest.raises(SelfAlignError, match="2 images and 1 sentence lists"):
        scorer.score(images[:2], [["A cat."]])
    with pytest.raises(SelfAlignError, match="must be a list of sentences"):
        scorer.score(images[:1], ["A cat."])
    with pytest.raises(SelfAlignError, match="batch_size"):
        ClipScorer("unused", batch_size=0)
    with pytest.raises(SelfAlignError, match="could not load a CLIP model"):
        ClipScorer(str(tmp_path))


# Sentence cleaning, as the released CSR code does it.


def test_clean_sentence_leaves_clean_text_unchanged():
    for sentence in (
        "There is a red circle.",
        "The sign says: 50% off (today only), really?",
        "图中有一个红色的圆",
    ):
        assert clean_sentence(sentence) == CleanedSentence(sentence, symbols_removed=0, drop_reason=None)
    cleaned = clean_sentence(" There is a red circle at the top-left. ")
    assert (cleaned.text, cleaned.symbols_removed) == ("There is a red circle at the top-left.", 0)


def test_clean_sentence_strips_stray_symbols():
    cleaned = clean_sentence("A happy dog 🐶🐶 ~ playing.")
    assert cleaned.kept
    assert (cleaned.text, cleaned.symbols_removed) == ("A happy dog   playing.", 3)
    assert clean_sentence("🐶🐶 A dog.").text == "A dog."
    # Letters of every script stay; punctuation outside the whitelist goes, the Chinese full stop too.
    assert clean_sentence("图中有一个红色的圆。").text == "图中有一个红色的圆"
    kept = clean_sentence("A dog 🐶.", SentenceCleaning(strip_symbols=False))
    assert (kept.text, kept.symbols_removed) == ("A dog 🐶.", 0)


@pytest.mark.parametrize(
    ("sentence", "reason"),
    [
        ("The sign reads Добро пожаловать.", "foreign_script"),
        ("The word is ねこ.", "foreign_script"),
        ("It says 안녕하세요 on the wall.", "foreign_script"),
        ("A cat&nbsp;&nbsp;on a mat.", "html_entities"),
        ("It is the the the the the the cat.", "repetition"),
        ("The cat is very very very very very very very cute.", "repetition"),
        ("Wow" + "!" * 11, "repetition"),
        ("A list: , , , , , , , , , , , , ,", "repetition"),
        ("One\n\ntwo\n\nthree\n\nfour.", "newlines"),
        ("Ok.", "too_short"),
        ("🐶🐶", "too_short"),
    ],
)
def test_clean_sentence_drops_degenerate_sentences(sentence, reason):
    assert clean_sentence(sentence).drop_reason == reason


def test_each_cleaning_check_can_be_switched_off():
    off = SentenceCleaning(
        drop_foreign_script=False,
        drop_html_entities=False,
        drop_repetition=False,
        max_newlines=None,
        min_chars=0,
    )
    degenerate = ("Добро пожаловать.", "a&nbsp;&nbsp;b", "no no no no no no", "a\n\n\n\n\n\nb", "Ok", "")
    for sentence in degenerate:
        assert clean_sentence(sentence, off).kept
    assert clean_sentence("Five are fine.\n\n\n\n\nHere.").kept
    assert clean_sentence("One\ntwo\nthree", SentenceCleaning(max_newlines=1)).drop_reason == "newlines"
    with pytest.raises(SelfAlignError, match="min_chars"):
        SentenceCleaning(min_chars=-1)
