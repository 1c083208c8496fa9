"""Running the project's own scripts and builders as a user would: one command, shown, checked.

`make demo` and `scripts/iterate.py` chain the entry points (builders, training, merging, evaluation)
as separate processes, exactly as a user types them: each loads what it needs and frees it on exit,
and a launcher (`accelerate launch ...`, `torchrun ...`) can be put in front.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from selfalign.errors import SelfAlignError

REPO = Path(__file__).resolve().parents[3]


def run_entry_point(script: str, args: Sequence[str], launcher: Sequence[str] = ()) -> float:
    """Run `script` (a path relative to the repo, e.g. "scripts/dpo.py") with `args`; return its seconds.

    The command is printed first; its output streams through. A failure raises SelfAlignError.
    """
    command = (
        [*launcher, str(REPO / script), *args] if launcher else [sys.executable, str(REPO / script), *args]
    )
    shown = [*launcher, script, *args] if launcher else ["python", script, *args]
    print("$ " + shlex.join(str(part) for part in shown), flush=True)
    started = time.perf_counter()
    if subprocess.run(command).returncode != 0:
        raise SelfAlignError(
            f"`{shlex.join([script, *map(str, args[:2])])} ...` failed (its output is above)"
        )
    seconds = time.perf_counter() - started
    print(f"  done in {seconds:.0f} s", flush=True)
    return seconds
