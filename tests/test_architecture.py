"""The architecture map (docs/architecture.md) stays true: no stage imports a later one, support
packages stay off the pipeline, and every package of src/selfalign/ is on the map."""

import ast
import re
from pathlib import Path

import pytest
from helpers import REPO

SOURCE = REPO / "src" / "selfalign"
MAP = REPO / "docs" / "architecture.md"
# A row of the map's table: | 3 scores | `scores` | what it owns | what it must not import |
ROW = re.compile(r"^\| (?P<stage>\d+) [^|]*\| `(?P<package>\w+)` \||^\| support \| `(?P<support>\w+)` \|")


def stages_on_the_map(text: str) -> dict[str, int | None]:
    """Package -> its stage number, None for a support package."""
    stages = {}
    for line in text.splitlines():
        if match := ROW.match(line):
            if match["support"]:
                stages[match["support"]] = None
            else:
                stages[match["package"]] = int(match["stage"])
    return stages


def top_level_packages() -> set[str]:
    """The packages and modules directly under src/selfalign/."""
    return {
        path.stem
        for path in SOURCE.iterdir()
        if (path.suffix == ".py" and path.name != "__init__.py") or (path / "__init__.py").is_file()
    }


def imported_packages(path: Path) -> set[str]:
    """The top-level selfalign packages a module imports, lazily inside functions too."""
    module = ".".join(path.relative_to(SOURCE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(part for part in (base, node.module) if part)
            names = [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
        else:
            continue
        imported.update(name.split(".")[1] for name in names if name.startswith("selfalign."))
    return imported


def import_violations(stages: dict[str, int | None]) -> list[str]:
    problems = []
    for path in sorted(SOURCE.rglob("*.py")):
        owner = path.relative_to(SOURCE).parts[0].removesuffix(".py")
        if owner == "__init__" or stages.get(owner, 0) is None:  # support packages may use anything
            continue
        if owner not in stages:
            problems.append(f"{path.relative_to(REPO)}: `{owner}` is not on the map")
            continue
        for imported in sorted(imported_packages(path) - {owner}):
            stage = stages.get(imported, "unknown")
            if stage == "unknown":
                problems.append(f"{path.relative_to(REPO)} imports `{imported}`, which is not on the map")
            elif stage is None:
                problems.append(f"{path.relative_to(REPO)} imports the support package `{imported}`")
            elif stage > stages[owner]:
                problems.append(
                    f"{path.relative_to(REPO)} (stage {stages[owner]}) imports `{imported}` (stage {stage})"
                )
    return problems


def test_every_package_is_on_the_map_and_nothing_else():
    assert set(stages_on_the_map(MAP.read_text())) == top_level_packages()


def test_no_stage_imports_a_later_stage_or_a_support_package():
    assert import_violations(stages_on_the_map(MAP.read_text())) == []


def test_the_check_catches_a_backward_import_and_a_support_import():
    stages = stages_on_the_map(MAP.read_text())
    # Moved after every stage, `scores` is imported by the method that composes it "from later".
    scores_last = import_violations({**stages, "scores": 99})
    assert "src/selfalign/methods/csr.py (stage 5) imports `scores` (stage 99)" in scores_last
    # Marked support, `synthetic` is imported by the scene-truth scorer.
    synthetic_support = import_violations({**stages, "synthetic": None})
    assert "src/selfalign/scores/scene_truth.py imports the support package `synthetic`" in synthetic_support


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("| 2 samples | `samples` | the sampler | scores |", {"samples": 2}),
        ("| support | `hub_server` | the Hub | — |", {"hub_server": None}),
        ("| stage | package | what it owns | what it must not import |", {}),
    ],
)
def test_map_rows_are_read_as_written(line, expected):
    assert stages_on_the_map(line) == expected
