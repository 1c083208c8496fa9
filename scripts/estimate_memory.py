"""Estimate the GPU memory a training recipe needs per GPU under an accelerate launch config.

    python scripts/estimate_memory.py --config recipes/llava-1.5-7b/csr/dpo_qlora.yaml \
        --accelerate_config recipes/accelerate_configs/ddp.yaml [--num_gpus 8] [--json]

Prints weights, LoRA/trainable weights, gradients, optimizer states, reference model, activations
(with and without activation checkpointing) and overheads, in GiB per GPU. It is an ESTIMATE:
parameter counts are exact (the model is built on the meta device from its config; the seed models'
configs ship in src/selfalign/memory/model_facts/), activations and framework overheads are
approximations, and the CUDA context plus allocator fragmentation add ~1-3 GB per GPU.

Recipe keys can be overridden as for the training scripts (`--per_device_train_batch_size 4`).
"""

import argparse
import json
import sys

from selfalign.errors import SelfAlignError
from selfalign.memory import estimate_recipe, format_estimate


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Unrecognised --key value pairs override the recipe, as in scripts/dpo.py and scripts/sft.py.",
    )
    parser.add_argument("--config", required=True, help="training recipe (YAML)")
    parser.add_argument("--accelerate_config", help="accelerate config (YAML); default: one GPU, no sharding")
    parser.add_argument(
        "--num_gpus", type=int, help="number of GPUs (default: num_processes of the accelerate config)"
    )
    parser.add_argument(
        "--trainer", choices=("dpo", "sft"), help="default: from the recipe's file name and keys"
    )
    parser.add_argument(
        "--prompt_tokens", type=int, help="text tokens of the prompt (default 64; critic 512)"
    )
    parser.add_argument(
        "--response_tokens", type=int, help="tokens of the (longest) response (default 256; critic 128)"
    )
    parser.add_argument(
        "--image_tokens", type=int, help="image tokens per sequence (default: from the model family)"
    )
    parser.add_argument(
        "--max_pixels", type=int, help="Qwen2-VL/Qwen2.5-VL max_pixels (default 1003520 = 1280*28*28)"
    )
    parser.add_argument(
        "--activation_checkpointing",
        choices=("true", "false"),
        help="override the recipe's activation_checkpointing for the total",
    )
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")
    return parser.parse_known_args(argv)


def main(argv=None) -> None:
    args, overrides = parse_args(argv)
    checkpointing = None if args.activation_checkpointing is None else args.activation_checkpointing == "true"
    estimate = estimate_recipe(
        args.config,
        args.accelerate_config,
        num_gpus=args.num_gpus,
        overrides=overrides,
        trainer=args.trainer,
        prompt_tokens=args.prompt_tokens,
        response_tokens=args.response_tokens,
        image_tokens=args.image_tokens,
        max_pixels=args.max_pixels,
        activation_checkpointing=checkpointing,
    )
    print(json.dumps(estimate.to_dict(), indent=2) if args.json else format_estimate(estimate))


if __name__ == "__main__":
    try:
        main()
    except SelfAlignError as error:
        sys.exit(f"error: {error}")
