"""What a policy learned of the world's co-occurrence prior: does it name an object's companion because
the object is there, although the companion is not, and does it still name a companion that is?

For each pair (A, B = A's companion), over the scenes where B is absent:

    lift(A -> B) = P(caption names B | A present) - P(caption names B | A absent)

pooled over pairs: each probability is the count of captions naming B over the count of scenes,
summed over every pair. A captioner without the prior has a lift near 0; one trained on the noisy
annotator's captions learns a positive one, and a method that removes prior-driven hallucination
brings it back down. Companion recall (B named, over the scenes where A and B are both present)
shows whether it did so by no longer naming companions at all.
"""

from __future__ import annotations

from selfalign.synthetic.language import mentioned_objects


def companion_scores(captions: list[str], objects: list[list[str]], companions: dict[str, str]) -> dict:
    """The pooled co-occurrence lift, its two probabilities, and companion recall, with their counts."""
    named = {"with_object": 0, "without_object": 0, "present": 0}
    scenes = {"with_object": 0, "without_object": 0, "present": 0}
    for caption, truth in zip(captions, objects, strict=True):
        mentions, present = set(mentioned_objects(caption)), set(truth)
        for obj, companion in companions.items():
            if companion in present:
                case = "present" if obj in present else None
            else:
                case = "with_object" if obj in present else "without_object"
            if case:
                scenes[case] += 1
                named[case] += companion in mentions
    rate = {case: named[case] / scenes[case] if scenes[case] else 0.0 for case in named}
    return {
        "lift": rate["with_object"] - rate["without_object"],
        "p_named_with_object": rate["with_object"],
        "p_named_without_object": rate["without_object"],
        "recall_when_present": rate["present"],
        "counts": {"named": named, "scenes": scenes},
    }
