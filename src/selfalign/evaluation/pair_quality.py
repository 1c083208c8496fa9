"""How good a round's preference pairs are, judged by the shapes world's truth: the share of false
object mentions (CHAIR_i), the object recall and the length of the chosen responses against the
rejected ones. A method whose policy barely improves either picks pairs whose chosen side is hardly
more truthful than its rejected side (its scorer loses the signal), or has good pairs that DPO does
not learn from (look at its margins): this says which.

It counts mentions as `selfalign.evaluation.metrics` does (each distinct object of a response once,
`selfalign.synthetic.judge.is_true_mention` deciding), without the `evaluate` library, so that the
demo's script can call it in-process. The pairs must be of a shapes-world eval build's images (the
scenes CSR's shapes recipes sample), which `scenes` names.
"""

from __future__ import annotations

from datasets import load_dataset

from selfalign.scores.scene_truth import SceneTruthScorer
from selfalign.synthetic.judge import is_true_mention
from selfalign.synthetic.language import mentioned_objects

SIDES = ("chosen", "rejected")


def response_text(turns: list[dict]) -> str:
    """The text of a pair side's assistant turn (TRL's conversational format)."""
    content = turns[-1]["content"]
    return content if isinstance(content, str) else "".join(part.get("text") or "" for part in content)


def side_scores(responses: list[str], truths: list[list[str]]) -> dict:
    """CHAIR_i, recall and mean words of `responses` against their scenes' objects."""
    false = named = recalled = present = 0
    for response, truth in zip(responses, truths, strict=True):
        mentions = list(dict.fromkeys(mentioned_objects(response)))
        false += sum(not is_true_mention(mention, truth) for mention in mentions)
        named += len(mentions)
        recalled += len(set(truth) & set(mentions))
        present += len(set(truth))
    return {
        "chair_i": round(false / max(named, 1), 4),
        "recall": round(recalled / max(present, 1), 4),
        "mean_words": round(sum(len(response.split()) for response in responses) / max(len(responses), 1), 2),
    }


def pair_quality(pairs: str, scenes: str) -> dict:
    """The pairs' count and each side's scores; `pairs` and `scenes` are folders or Hub ids."""
    rows = load_dataset(pairs, split="train")
    truth = SceneTruthScorer(scenes)
    truths = [truth.objects_in(images[0]) for images in rows["images"]]
    quality = {"pairs": len(rows)}
    for side in SIDES:
        quality[side] = side_scores([response_text(turns) for turns in rows[side]], truths)
    return quality


def pair_quality_markdown(qualities: dict[str, dict]) -> str:
    """One row per set of pairs (name -> `pair_quality`): each side's CHAIR_i, recall and words."""
    lines = [
        "| pairs | rows | chosen CHAIR_i | rejected CHAIR_i | chosen recall | rejected recall "
        "| chosen words | rejected words |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, quality in qualities.items():
        chosen, rejected = quality["chosen"], quality["rejected"]
        lines.append(
            f"| {name} | {quality['pairs']} | {chosen['chair_i']:.3f} | {rejected['chair_i']:.3f} | "
            f"{chosen['recall']:.3f} | {rejected['recall']:.3f} | {chosen['mean_words']:.1f} | "
            f"{rejected['mean_words']:.1f} |"
        )
    return "\n".join(lines) + "\n"
