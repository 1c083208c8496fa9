"""Evaluate a policy VLM on held-out shapes-world scenes: CHAIR on its captions, POPE on its yes/no answers.

`scripts/evaluate.py` is the entry point. The eval set is a `dataset_builders/shapes.py --kind eval`
build (a folder or Hub id): each row has an `image`, a describe `instruction`, the ground-truth
`objects` (the CHAIR list) and `pope` probes. The model writes one greedy caption per scene and one
short greedy answer per probe, both through the shared sampler (`selfalign.samples.sample`); the
scores are `selfalign.evaluation.metrics`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from selfalign.evaluation.inputs import EvaluationArguments, load_eval_set, loadable_model
from selfalign.evaluation.metrics import caption_scores, pope_scores
from selfalign.samples import GenerationRequest, SamplingParams, TransformersBackend, sample

# The POPE table's columns, in order.
POPE_METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def _user_turn(text: str) -> tuple[dict, ...]:
    return ({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},)


def _greedy(max_new_tokens: int) -> SamplingParams:
    return SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)


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
        "",
        f"CHAIR_i over each caption's first {caption['matched_length_mentions']} objects (matched length): "
        f"{caption['chair_i_matched_length']:.3f}.",
    ]
    if "companions" in caption:
        prior = caption["companions"]
        lines += [
            "",
            "| the co-occurrence prior | lift | P(names B \\| A, not B) | P(names B \\| not A, not B) "
            "| companion recall (B present) |",
            "|---|---|---|---|---|",
            f"| value | {prior['lift']:.3f} | {prior['p_named_with_object']:.3f} | "
            f"{prior['p_named_without_object']:.3f} | {prior['recall_when_present']:.3f} |",
        ]
    return "\n".join(lines) + "\n"


def world_companions(rows: list[dict]) -> dict[str, str]:
    """Each object's companion, as the eval set records its world's (none in sets built before them)."""
    pairs = (rows[0].get("companions") or []) if rows else []
    return {pair["object"]: pair["companion"] for pair in pairs}


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
        "captions": caption_scores(captions, [row["objects"] for row in rows], world_companions(rows)),
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
