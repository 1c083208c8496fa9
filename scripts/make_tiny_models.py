"""Build the offline tiny model zoo: one folder per VLM family, plus a tiny CLIP.

    python scripts/make_tiny_models.py --output-dir outputs/tiny_models [--families llava qwen2_vl clip ...]
    python scripts/make_tiny_models.py --families llava --preset shapes --vision-tower outputs/shapes/clip_model \
        --output-dir outputs/shapes/models

A folder that already holds a complete build of the same spec is reused, so re-running is cheap.
"""

import argparse
import time
from pathlib import Path

from transformers.utils import logging

from selfalign.tiny_zoo import FAMILIES, build_tiny_clip, build_tiny_model

CLIP = "clip"


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the offline tiny model zoo.")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/tiny_models"))
    parser.add_argument(
        "--families",
        nargs="+",
        choices=[*FAMILIES, CLIP],
        default=[*FAMILIES, CLIP],
        help="what to build (default: every VLM family and the CLIP)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--preset",
        choices=("tiny", "shapes"),
        default="tiny",
        help="model size: tiny (tests) or shapes (the shapes-world policy and CLIP, trained from scratch)",
    )
    parser.add_argument(
        "--vision-tower",
        type=Path,
        default=None,
        help="a tiny CLIP checkpoint (scripts/train_clip.py) whose vision encoder the llava families start from",
    )
    args = parser.parse_args(argv)
    logging.disable_progress_bar()

    for name in args.families:
        start = time.perf_counter()
        target = args.output_dir / name
        if name == CLIP:
            folder = build_tiny_clip(target, seed=args.seed, preset=args.preset)
        else:
            folder = build_tiny_model(
                name, target, seed=args.seed, preset=args.preset, vision_tower=args.vision_tower
            )
        elapsed = time.perf_counter() - start
        print(f"{name:<11} {folder}  {folder_size(folder) / 1e6:.2f} MB  {elapsed:.1f} s")


if __name__ == "__main__":
    main()
