"""TRL's conversational vision format, as every builder writes it: the turns and their Arrow type."""

from __future__ import annotations

from datasets import List, Value

# A list of turns: {"role", "content": [{"type": "image" | "text", "text"}]}.
MESSAGES = List(
    {"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}
)


def user_turn(instruction: str) -> list[dict]:
    """One user turn: the image, then the instruction (a row's `prompt`)."""
    return [
        {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": instruction}]}
    ]


def assistant_turn(text: str) -> list[dict]:
    """One assistant turn of text (a row's `chosen` / `rejected`, or the end of its `messages`)."""
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]
