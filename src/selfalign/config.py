"""What every entry point does first: parse its recipe strictly, and set up its log lines.

YAML keys map onto dataclass fields, command-line flags override them.

TRL's parser takes a YAML file as defaults but lets a misspelt key through to a late, generic error
and passes values of the wrong type on unchecked. Recipes here are checked key by key against the
dataclasses' type hints first, so an error names the key and the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import logging
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from trl import TrlParser

from selfalign.errors import SelfAlignError

# The Hub clients' HTTP libraries log one INFO line per request: dozens per push or load.
_CHATTY_LOGGERS = ("httpx", "httpx2")


def setup_logging() -> None:
    """The entry points' log lines: INFO with the time and the logger, HTTP requests only at WARNING."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def run_main(main: Callable[..., object], dataclass_types: Sequence[type]) -> None:
    """An entry point's `__main__`: its log lines, its recipe parsed from the command line into
    `main`'s arguments, and a SelfAlignError shown as one `error: ...` line and exit status 1."""
    setup_logging()
    try:
        main(*parse_recipe(dataclass_types))
    except SelfAlignError as error:
        sys.exit(f"error: {error}")


class RecipeError(SelfAlignError):
    """A recipe file that does not fit the dataclasses it configures."""


def parse_recipe(dataclass_types: Sequence[type], args: Sequence[str] | None = None) -> tuple:
    """Parse `--config recipe.yaml` plus command-line overrides into one instance per dataclass."""
    args = list(sys.argv[1:] if args is None else args)
    parser = TrlParser(list(dataclass_types))
    source = "command line"
    if "--config" in args:
        index = args.index("--config")
        if index + 1 >= len(args):
            raise RecipeError("--config needs a path to a YAML recipe")
        source = args[index + 1]
        check_recipe_file(source, dataclass_types)
    try:
        return tuple(parser.parse_args_and_config(args=args))
    except ValueError as error:
        # Unknown command-line flags and the configs' own checks (__post_init__) raise ValueError.
        raise RecipeError(f"{source}: {error}") from error


def check_recipe_file(path: str | Path, dataclass_types: Sequence[type]) -> dict[str, Any]:
    """Load a recipe and check every key and value against the dataclasses; return the mapping."""
    path = Path(path)
    try:
        recipe = yaml.safe_load(path.read_text())
    except FileNotFoundError as error:
        raise RecipeError(f"{path}: recipe file not found") from error
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(recipe, dict):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping of keys to values")

    field_types = {}
    for dataclass_type in dataclass_types:
        field_types.update(_field_types(dataclass_type))
    for key, value in recipe.items():
        if key == "env":  # TrlParser exports this mapping as environment variables
            if not isinstance(value, dict):
                raise RecipeError(f"{path}: key 'env' must be a mapping of variable names to values")
            continue
        if key not in field_types:
            raise RecipeError(f"{path}: unknown key '{key}'{_suggestion(key, field_types)}")
        problem = _type_problem(value, field_types[key])
        if problem:
            raise RecipeError(f"{path}: key '{key}' {problem}")
    return recipe


def _field_types(dataclass_type: type) -> dict[str, Any]:
    hints = typing.get_type_hints(dataclass_type)
    return {field.name: hints[field.name] for field in dataclasses.fields(dataclass_type) if field.init}


def _suggestion(key: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_problem(value: Any, annotation: Any) -> str | None:
    """Why `value` does not fit `annotation`, or None if it does."""
    if _fits(value, annotation):
        return None
    if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
        fields = _field_types(annotation)
        for key, item in value.items():
            if key not in fields:
                return f"has unknown entry '{key}'{_suggestion(key, fields)}"
            problem = _type_problem(item, fields[key])
            if problem:
                return f"entry '{key}' {problem}"
    origin = typing.get_origin(annotation)
    if origin is list and isinstance(value, list):
        (item_type,) = typing.get_args(annotation) or (Any,)
        for position, item in enumerate(value):
            problem = _type_problem(item, item_type)
            if problem:
                return f"item {position} {problem}"
    return f"expects {_describe(annotation)}, got {type(value).__name__} {value!r}"


def _fits(value: Any, annotation: Any) -> bool:
    if annotation is Any or annotation is object:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in typing.get_args(annotation))
    if value is None:
        return annotation is type(None)
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin is list:
        (item_type,) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list) and all(_fits(item, item_type) for item in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return value in {member.value for member in annotation} or value in annotation.__members__
    if dataclasses.is_dataclass(annotation):
        fields = _field_types(annotation)
        return isinstance(value, dict) and all(
            key in fields and _fits(item, fields[key]) for key, item in value.items()
        )
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        # YAML 1.1 reads `1e-7` (no dot) as a string; argparse converts it, so accept it if it parses.
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                return False
            return True
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # an annotation this checker does not model is left to the dataclass itself


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(annotation))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in annotation)
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)
