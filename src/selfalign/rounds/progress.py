"""A run's finished steps, kept on disk, so that an interrupted run goes on where it stopped."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from selfalign.errors import SelfAlignError
from selfalign.rounds.arguments import IterateArguments


class Progress:
    """The finished steps of a run, on disk, so that an interrupted run goes on where it stopped."""

    def __init__(self, args: IterateArguments):
        self.path = Path(args.output_dir) / "progress.json"
        settings = {key: value for key, value in asdict(args).items() if key != "rounds"}
        if self.path.is_file():
            saved = json.loads(self.path.read_text())
            if saved["settings"] != settings:
                changed = sorted(key for key in settings if saved["settings"].get(key) != settings[key])
                raise SelfAlignError(
                    f"{args.output_dir} holds a run with other settings ({', '.join(changed)}); "
                    "use another output_dir or the same settings (only `rounds` may grow)"
                )
            self.state = saved
        else:
            self.state = {"settings": settings, "steps": {}}

    def done(self, step: str) -> dict | None:
        return self.state["steps"].get(step)

    def record(self, step: str, result: dict) -> dict:
        self.state["steps"][step] = result
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.state, indent=2) + "\n")
        temporary.replace(self.path)  # atomic: a kill never leaves half a progress file
        return result
