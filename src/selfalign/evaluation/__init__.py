"""Evaluating models on held-out shapes-world scenes, and comparing the evaluated models.

`report` runs one evaluation (`scripts/evaluate.py`), `inputs` reads the eval set and the model,
`metrics` scores them, and `comparison` puts several reports side by side (the demo's table).

Nothing is imported here on purpose: `metrics` (and so `report`) imports the `evaluate` library,
which a script in `scripts/` cannot import (scripts/evaluate.py shadows it there), while `make
demo`'s script renders the comparison in-process.
"""
