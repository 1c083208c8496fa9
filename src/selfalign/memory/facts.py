"""The seed models' shipped architecture facts, and loading a model's config from them, a folder or the Hub."""

from __future__ import annotations

import json
from pathlib import Path

from selfalign.errors import SelfAlignError

FACTS_DIR = Path(__file__).parent / "model_facts"


def shipped_model_facts() -> dict[str, Path]:
    """Hub id -> JSON file of its architecture facts, for the seed models whose configs ship here."""
    facts = {}
    for path in sorted(FACTS_DIR.glob("*.json")):
        facts[json.loads(path.read_text())["_hub_id"]] = path
    return facts


def config_from_facts(path: str | Path):
    """A transformers config built from one of the shipped facts files."""
    from transformers import AutoConfig

    data = {
        key: value for key, value in json.loads(Path(path).read_text()).items() if not key.startswith("_")
    }
    return AutoConfig.for_model(data.pop("model_type"), **data)


def load_model_config(name: str, base_model_id: str | None = None):
    """The config of `name` and where it came from: a local folder, the shipped facts, or the Hub cache.

    A Hub id that is not one of the seed models falls back to `base_model_id` when that one is (a
    merged checkpoint keeps the architecture of its base).
    """
    from transformers import AutoConfig

    if Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise SelfAlignError(f"'{name}' is a folder without a config.json")
        return AutoConfig.from_pretrained(name), f"{name}/config.json"
    facts = {key.lower(): path for key, path in shipped_model_facts().items()}
    for candidate in (name, base_model_id):
        if candidate and candidate.lower() in facts:
            path = facts[candidate.lower()]
            # Named from the repository root: src/selfalign/memory/model_facts/<file>.
            source = f"shipped facts {path.relative_to(FACTS_DIR.parents[3])}"
            if candidate != name:
                source += f" (architecture of base_model_id {candidate})"
            return config_from_facts(path), source
    try:
        return AutoConfig.from_pretrained(name), f"{name} (Hub or local cache)"
    except (OSError, ValueError) as error:
        known = ", ".join(shipped_model_facts())
        raise SelfAlignError(
            f"no config for '{name}': it is not a local folder, not one of the shipped model facts ({known}) and "
            f"could not be fetched ({error.__class__.__name__}). Pass a local folder with a config.json, or set "
            "base_model_id to a shipped model with the same architecture."
        ) from error
