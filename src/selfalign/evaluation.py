"""Evaluate a policy VLM on held-out shapes-world scenes: CHAIR on its captions, POPE on its yes/no answers.

`scripts/evaluate.py` is the entry point. The eval set is a `dataset_builders/shapes.py --kind eval`
build (a folder or Hub id): each row has an `image`, a describe `instruction`, the ground-truth
`objects` (the CHAIR list) and `pope` probes. The model writes one greedy caption per scene and one
short greedy answer per probe, both through the shared sampler (`selfalign.samples.sample`); the
metrics are the local `evaluate` modules `metrics/chair` and `metrics/pope`, with the shapes world's
vocabulary (shapes, their plurals, colours as attributes).

A model is a base or merged checkpoint, or a PEFT adapter (a folder or repo with
`adapter_config.json`), which is merged into its base in a temporary folder before sampling.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean

import evaluate
import numpy
import torch
from datasets import Dataset, DatasetDict, load_dataset
from huggingface_hub import file_exists
from huggingface_hub.errors import HFValidationError

from selfalign.errors import SelfAlignError
from selfalign.samples import GenerationRequest, SamplingParams, TransformersBackend, sample
from selfalign.synthetic import COLOURS, POPE_STRATEGIES, SHAPES, SYNONYMS
from selfalign.synthetic.language import mentioned_objects

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
# Absolute paths: evaluate.load reads "metrics/chair" (one slash, relative) as a Hub id.
METRICS_DIR = REPO / "metrics"
EVAL_COLUMNS = ("image", "instruction", "objects", "pope")
ADAPTER_CONFIG = "adapter_config.json"
# The metrics' headline numbers, in the order of the markdown table.
CAPTION_METRICS = ("chair_i", "chair_s", "recall", "mean_caption_words")
POPE_METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


@dataclass
class EvaluationArguments:
    """Recipe keys of scripts/evaluate.py."""

    model_name_or_path: str = field(
        metadata={"help": "Folder or Hub id of the model: a base or merged checkpoint, or a PEFT adapter."}
    )
    eval_dataset: str = field(
        metadata={"help": "Folder or Hub id of a `dataset_builders/shapes.py --kind eval` build."}
    )
    output_dir: str = field(metadata={"help": "Where report.json, report.md and generations.jsonl go."})
    model_revision: str | None = field(default=None, metadata={"help": "Branch, tag or commit of the model."})
    base_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "For an adapter: the base to merge it into; default, the one its config names."},
    )
    eval_dataset_revision: str | None = field(
        default=None, metadata={"help": "Branch, tag or commit of the eval set."}
    )
    eval_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate on; default, the dataset's only split (or test)."}
    )
    max_eval_scenes: int | None = field(
        default=None, metadata={"help": "Evaluate on the first N scenes only (quick checks)."}
    )
    dtype: str = field(default="float32", metadata={"help": "dtype to load the model in."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per generation call."})
    caption_max_new_tokens: int = field(default=64, metadata={"help": "Longest caption, in tokens."})
    answer_max_new_tokens: int = field(
        default=8, metadata={"help": "Longest POPE answer, in tokens (the first yes/no word counts)."}
    )
    image_max_pixels: int | None = field(
        default=None, metadata={"help": "Cap on pixels per image (Qwen2-VL family)."}
    )

    def __post_init__(self):
        if self.max_eval_scenes is not None and self.max_eval_scenes < 1:
            raise ValueError("max_eval_scenes must be at least 1")


def load_eval_set(args: EvaluationArguments) -> Dataset:
    """The eval split, checked for the columns a shapes `--kind eval` build has."""
    try:
        splits = load_dataset(args.eval_dataset, revision=args.eval_dataset_revision)
    except (FileNotFoundError, ValueError, HFValidationError) as error:
        raise SelfAlignError(f"could not load the eval set '{args.eval_dataset}': {error}") from error
    if not isinstance(splits, DatasetDict):
        raise SelfAlignError(f"'{args.eval_dataset}' did not load as a dataset with splits")
    split = args.eval_split or (next(iter(splits)) if len(splits) == 1 else "test")
    if split not in splits:
        raise SelfAlignError(f"the eval set has no split '{split}' (it has: {', '.join(splits)})")
    dataset = splits[split]
    missing = [column for column in EVAL_COLUMNS if column not in dataset.column_names]
    if missing:
        raise SelfAlignError(
            f"the eval set '{args.eval_dataset}' is missing the column(s) {missing}; expected a "
            f"`dataset_builders/shapes.py --kind eval` build with {list(EVAL_COLUMNS)}, "
            f"found {dataset.column_names}"
        )
    if len(dataset) == 0:
        raise SelfAlignError(f"the eval set '{args.eval_dataset}' (split '{split}') has no rows")
    if args.max_eval_scenes is not None:
        dataset = dataset.select(range(min(args.max_eval_scenes, len(dataset))))
    return dataset


def is_adapter(model_name_or_path: str, revision: str | None) -> bool:
    if Path(model_name_or_path).is_dir():
        return (Path(model_name_or_path) / ADAPTER_CONFIG).is_file()
    try:
        return file_exists(model_name_or_path, ADAPTER_CONFIG, revision=revision)
    except Exception as error:  # offline or unknown repo: the model loader will say what is wrong
        logger.debug("could not ask the Hub about %s: %s", model_name_or_path, error)
        return False


@contextmanager
def loadable_model(args: EvaluationArguments) -> Iterator[tuple[str, str | None, str | None]]:
    """(folder or id the sampler can load, its revision, the adapter's base or None).

    An adapter is merged into its base in a temporary folder (fp32 on CPU is what the tiny models
    use; merging is exact), so the one sampler loads every kind of model the same way.
    """
    if not is_adapter(args.model_name_or_path, args.model_revision):
        yield args.model_name_or_path, args.model_revision, None
        return
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    adapter_config = PeftConfig.from_pretrained(args.model_name_or_path, revision=args.model_revision)
    base = args.base_model_name_or_path or adapter_config.base_model_name_or_path
    logger.info("merging the adapter %s into %s for evaluation", args.model_name_or_path, base)
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=getattr(torch, args.dtype))
    model = PeftModel.from_pretrained(model, args.model_name_or_path, revision=args.model_revision)
    with tempfile.TemporaryDirectory(prefix="selfalign-eval-merged-") as merged:
        model.merge_and_unload().save_pretrained(merged)
        # The adapter folder carries the processor it was trained with (sft.py/dpo.py save it).
        try:
            processor = AutoProcessor.from_pretrained(args.model_name_or_path, revision=args.model_revision)
        except OSError:
            processor = AutoProcessor.from_pretrained(base)
        processor.save_pretrained(merged)
        yield merged, None, base


def _user_turn(text: str) -> tuple[dict, ...]:
    return ({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},)


def _greedy(max_new_tokens: int) -> SamplingParams:
    return SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)


def caption_scores(captions: list[str], objects: list[list[str]]) -> dict:
    """CHAIR_i, CHAIR_s, recall and their counts, the mean caption length in words, and 95% intervals."""
    chair = evaluate.load(str(METRICS_DIR / "chair"), keep_in_memory=True)
    scores = chair.compute(
        predictions=captions,
        references=objects,
        objects=list(SHAPES),
        synonyms=dict(SYNONYMS),
        attributes=list(COLOURS),
        return_details=True,
    )
    details = scores.pop("details")
    words = [len(caption.split()) for caption in captions]
    scores["mean_caption_words"] = mean(words)
    scores["hallucinations_by_kind"] = hallucination_kinds(captions, objects)
    scores["intervals_95"] = bootstrap_intervals(details, words)
    return scores


BOOTSTRAP_RESAMPLES = 2000


def bootstrap_intervals(details: list[dict], words: list[int]) -> dict[str, list[float]]:
    """95% percentile intervals of CHAIR_i, CHAIR_s, recall and mean caption words, from resampling the
    scenes with replacement (a fixed seed, so a report is reproducible).

    With 200 scenes and ~300 object mentions, CHAIR_i is only known to within a few points: two
    models whose intervals overlap widely may not differ at all.
    """
    counts = numpy.array(
        [
            [len(d["hallucinated"]), len(d["mentions"]), d["hallucinated_caption"], len(d["recalled"]),
             len(d["ground_truth"]), length]
            for d, length in zip(details, words, strict=True)
        ],
        dtype=float,
    )  # fmt: skip
    rows = numpy.random.default_rng(0).integers(0, len(counts), size=(BOOTSTRAP_RESAMPLES, len(counts)))
    sums = counts[rows].sum(axis=1)  # (resamples, columns)
    hallucinated, mentions, hallucinated_captions, recalled, ground_truth, total_words = sums.T
    resampled = {
        "chair_i": hallucinated / numpy.maximum(mentions, 1),
        "chair_s": hallucinated_captions / len(counts),
        "recall": recalled / numpy.maximum(ground_truth, 1),
        "mean_caption_words": total_words / len(counts),
    }
    return {
        name: [round(float(value), 4) for value in numpy.percentile(values, [2.5, 97.5])]
        for name, values in resampled.items()
    }


HALLUCINATION_KINDS = ("wrong_shape", "wrong_colour", "swapped", "both_absent", "absent_shape")


def hallucination_kinds(captions: list[str], objects: list[list[str]]) -> dict[str, int]:
    """The wrong object mentions by what is wrong, against the scene's objects ("<colour> <shape>"),
    each distinct mention of a caption once (as CHAIR counts them, however often it is repeated):

    - wrong_shape: "<colour> <shape>" whose colour is in the scene but whose shape is not;
    - wrong_colour: the shape is in the scene, the colour is not;
    - swapped: both are in the scene, on different objects;
    - both_absent: neither is;
    - absent_shape: a bare "<shape>" that no object has.

    Which kind dominates says what a method can fix: a policy that names present colours with
    absent shapes does not see shapes, which preference data alone cannot teach.
    """
    counts = dict.fromkeys(HALLUCINATION_KINDS, 0)
    for caption, truth in zip(captions, objects, strict=True):
        colours = {obj.split()[0] for obj in truth}
        shapes = {obj.split()[1] for obj in truth}
        for mention in dict.fromkeys(mentioned_objects(caption)):  # each object once, as CHAIR counts
            if mention in truth or mention in shapes:
                continue
            if " " not in mention:
                counts["absent_shape"] += 1
                continue
            colour, shape = mention.split()
            kind = {
                (True, False): "wrong_shape",
                (False, True): "wrong_colour",
                (True, True): "swapped",
                (False, False): "both_absent",
            }[(colour in colours, shape in shapes)]
            counts[kind] += 1
    return counts


def pope_scores(answers: list[str], probes: list[dict]) -> dict[str, dict]:
    """POPE scores per sampling strategy (random, popular, adversarial) and over all probes."""
    pope = evaluate.load(str(METRICS_DIR / "pope"), keep_in_memory=True)
    groups: dict[str, tuple[list[str], list[str]]] = {
        strategy: ([], []) for strategy in (*POPE_STRATEGIES, "all")
    }
    for answer, probe in zip(answers, probes, strict=True):
        for group in (probe["strategy"], "all"):
            predictions, references = groups.setdefault(group, ([], []))
            predictions.append(answer)
            references.append(probe["answer"])
    return {
        group: pope.compute(predictions=predictions, references=references)
        for group, (predictions, references) in groups.items()
        if references
    }


def markdown_report(report: dict) -> str:
    caption = report["captions"]
    intervals = caption["intervals_95"]
    lines = [
        f"# Evaluation of `{report['model']['name_or_path']}` on {report['eval_set']['num_scenes']} held-out scenes",
        "",
        "| | CHAIR_i | CHAIR_s | object recall | mean caption words | POPE F1 (all) |",
        "|---|---|---|---|---|---|",
        f"| value | {caption['chair_i']:.3f} | {caption['chair_s']:.3f} | {caption['recall']:.3f} | "
        f"{caption['mean_caption_words']:.1f} | {report['pope']['all']['f1']:.3f} |",
        "| 95% interval (scenes resampled) | "
        + " | ".join("{:.3f}-{:.3f}".format(*intervals[name]) for name in ("chair_i", "chair_s", "recall"))
        + " | {:.1f}-{:.1f} | |".format(*intervals["mean_caption_words"]),
        "",
        "| POPE | " + " | ".join(POPE_METRICS) + " | probes |",
        "|---|" + "---|" * (len(POPE_METRICS) + 1),
    ]
    for strategy, scores in report["pope"].items():
        values = " | ".join(f"{scores[name]:.3f}" for name in POPE_METRICS)
        lines.append(f"| {strategy} | {values} | {scores['num_examples']} |")
    kinds = caption["hallucinations_by_kind"]
    lines += [
        "",
        "| hallucinated mentions | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
        "| count | " + " | ".join(str(count) for count in kinds.values()) + " |",
    ]
    return "\n".join(lines) + "\n"


def evaluate_model(args: EvaluationArguments) -> dict:
    """Caption and probe the eval scenes, score them, write report.json/report.md/generations.jsonl."""
    started = time.perf_counter()
    dataset = load_eval_set(args)
    rows = list(dataset)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    with loadable_model(args) as (model_path, revision, adapter_base):
        backend = TransformersBackend(
            model_path,
            revision=revision,
            dtype=args.dtype,
            batch_size=args.batch_size,
            image_max_pixels=args.image_max_pixels,
        )
        # Greedy decoding ignores the seed; each request still carries its row's own.
        caption_requests = [
            GenerationRequest(images=(row["image"],), messages=_user_turn(row["instruction"]), seed=index)
            for index, row in enumerate(rows)
        ]
        probes = [(index, probe) for index, row in enumerate(rows) for probe in row["pope"]]
        probe_requests = [
            GenerationRequest(
                images=(rows[index]["image"],), messages=_user_turn(probe["question"]), seed=index
            )
            for index, probe in probes
        ]
        captions = [
            c[0].text for c in sample(backend, caption_requests, _greedy(args.caption_max_new_tokens))
        ]
        answers = [c[0].text for c in sample(backend, probe_requests, _greedy(args.answer_max_new_tokens))]
        model_revision = args.model_revision if adapter_base else backend.revision

    report = {
        "model": {
            "name_or_path": args.model_name_or_path,
            "revision": model_revision or "main",
            "adapter_base": adapter_base,
        },
        "eval_set": {
            "name_or_path": args.eval_dataset,
            "revision": args.eval_dataset_revision,
            "num_scenes": len(rows),
            "num_pope_probes": len(probes),
        },
        "captions": caption_scores(captions, [row["objects"] for row in rows]),
        "pope": pope_scores(answers, [probe for _, probe in probes]),
        "recipe": asdict(args),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (output_dir / "report.md").write_text(markdown_report(report))
    with (output_dir / "generations.jsonl").open("w") as generations:
        for index, row in enumerate(rows):
            row_answers = [(probe, answers[i]) for i, (owner, probe) in enumerate(probes) if owner == index]
            record = {
                "instruction": row["instruction"],
                "caption": captions[index],
                "objects": row["objects"],
                "pope": [{**probe, "prediction": answer} for probe, answer in row_answers],
            }
            generations.write(json.dumps(record) + "\n")
    return report
