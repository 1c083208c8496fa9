"""Peak memory of a build as its input grows: the runner keeps at most one shard of rows in memory.

    python bench/builder_memory.py [--sizes 200 800] [--shard_size 32]

Builds image folders of each size (distinct 256x256 images), runs dataset_builders/images.py on each
in a fresh process, and prints JSON with each run's peak resident memory (ru_maxrss of the child)
and the ratio of the largest to the smallest: near 1.0 means memory does not grow with the input.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]


def make_folder(folder: Path, count: int) -> None:
    rng = random.Random(count)
    folder.mkdir(parents=True)
    for index in range(count):
        image = Image.new("RGB", (256, 256), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(8):
            box = sorted(rng.randrange(256) for _ in range(2)), sorted(rng.randrange(256) for _ in range(2))
            draw.rectangle(
                (box[0][0], box[1][0], box[0][1], box[1][1]), fill=tuple(rng.randrange(256) for _ in range(3))
            )
        image.save(folder / f"{index:06d}.png")


def peak_rss_of_build(folder: Path, output_dir: Path, shard_size: int) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one build in a child process."""
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, str(REPO / "dataset_builders" / "images.py"), "--config", str(REPO / "recipes" / "tiny" / "images.yaml"),
         "--image_folder", str(folder), "--output_dir", str(output_dir), "--shard_size", str(shard_size)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        sys.exit(f"build of {folder} failed")
    return usage.ru_maxrss / 1024, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 800])
    parser.add_argument("--shard_size", type=int, default=32)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as root:
        for size in args.sizes:
            folder = Path(root) / f"images-{size}"
            make_folder(folder, size)
            peak, seconds = peak_rss_of_build(folder, Path(root) / f"out-{size}", args.shard_size)
            runs.append({"images": size, "peak_rss_mib": round(peak, 1), "seconds": round(seconds, 1)})
    peaks = [run["peak_rss_mib"] for run in runs]
    print(json.dumps({"shard_size": args.shard_size, "runs": runs,
                      "peak_ratio_largest_to_smallest": round(peaks[-1] / peaks[0], 3)}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
