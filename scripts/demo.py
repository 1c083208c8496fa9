"""The offline end-to-end demo (`make demo`): every step a user takes, on a tiny model and a local Hub.

1. start the project's Hub server on 127.0.0.1 (as `python -m selfalign.hub_server` would),
2. build a tiny Qwen2-VL and publish it,
3. build a small preference set of coloured shapes and publish it,
4. train a DPO LoRA adapter with scripts/dpo.py from the published model and data, and publish it,
5. load the dataset and the adapter back from the Hub and caption two images.

Everything lives under outputs/demo/ (or --output-dir); nothing leaves this machine.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_ID = "selfalign-demo/tiny-qwen2-vl"
DATA_ID = "selfalign-demo/shapes-pairs"
ADAPTER_ID = "selfalign-demo/tiny-qwen2-vl-dpo-lora"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_hub(port: int, output: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "selfalign.hub_server",
        "--port",
        str(port),
        "--data-dir",
        str(output / "hub"),
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/whoami-v2", timeout=1)
            return server
        except urllib.error.HTTPError:  # it answers (401 without a token): it is up
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    sys.exit("error: the local Hub server did not start")


def step(number: int, text: str) -> None:
    print(f"\n[{number}/5] {text}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", type=Path, default=REPO / "outputs" / "demo")
    output = parser.parse_args().output_dir.resolve()
    shutil.rmtree(output, ignore_errors=True)
    port = free_port()
    # The Hub clients read these when first imported, so they are set before any import of them.
    os.environ.update(
        {
            "HF_ENDPOINT": f"http://127.0.0.1:{port}",
            "HF_TOKEN": "selfalign-demo-token",  # the local server accepts any token
            "HF_HUB_DISABLE_XET": "1",
            "HF_HOME": str(output / "hf_home"),
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    step(1, f"Starting the local Hub on 127.0.0.1:{port} (data in {output / 'hub'})")
    server = start_hub(port, output)
    try:
        run_demo(output)
    finally:
        server.terminate()
        server.wait()


def run_demo(output: Path) -> None:
    import numpy as np
    from datasets import load_dataset
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from selfalign.publish.hub import push_folder
    from selfalign.tiny_data import draw_shape, preference_dataset
    from selfalign.tiny_zoo import build_tiny_model

    step(2, f"Building a tiny Qwen2-VL and publishing it as {BASE_ID}")
    model_dir = build_tiny_model("qwen2_vl", output / "tiny_models" / "qwen2_vl")
    push_folder(model_dir, BASE_ID, commit_message="Tiny Qwen2-VL from the selfalign zoo")

    step(3, f"Building 32 preference pairs of coloured shapes and publishing them as {DATA_ID}")
    pairs = preference_dataset(num_rows=32, seed=0)
    pairs.push_to_hub(DATA_ID)

    step(4, "Training a DPO LoRA adapter with scripts/dpo.py (recipes/tiny/dpo_lora.yaml) and publishing it")
    command = [
        sys.executable, str(REPO / "scripts" / "dpo.py"),
        "--config", str(REPO / "recipes" / "tiny" / "dpo_lora.yaml"),
        "--model_name_or_path", BASE_ID,
        "--dataset_name", DATA_ID,
        "--max_steps", "8",
        "--output_dir", str(output / "dpo_lora"),
        "--push_to_hub", "true",
        "--hub_model_id", ADAPTER_ID,
        "--logging_steps", "4",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    print("  $ python scripts/dpo.py --config recipes/tiny/dpo_lora.yaml --model_name_or_path", BASE_ID,
          "--dataset_name", DATA_ID, "--max_steps 8 --push_to_hub true --hub_model_id", ADAPTER_ID)  # fmt: skip
    subprocess.run(command, check=True)

    step(5, "Loading the dataset and the adapter back from the Hub and captioning two images")
    loaded = load_dataset(DATA_ID, split="train")
    same_pixels = all(
        np.array_equal(np.asarray(a["images"][0]), np.asarray(b["images"][0]))
        for a, b in zip(loaded, pairs, strict=True)
    )
    print(f"  {DATA_ID}: {len(loaded)} rows, columns {loaded.column_names}, pixels identical: {same_pixels}")
    processor = AutoProcessor.from_pretrained(ADAPTER_ID)
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(BASE_ID), ADAPTER_ID)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    for colour, shape in (("red", "circle"), ("blue", "square")):
        inputs = processor(images=[draw_shape(colour, shape, (48, 48))], text=prompt, return_tensors="pt")
        generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        caption = processor.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        print(f"  {colour} {shape} -> {caption!r}")
    print(
        "\nDone. The tiny model is random, so its captions are noise: this demo shows the pipeline, not quality.\n"
        f"Published: {BASE_ID}, {DATA_ID}, {ADAPTER_ID} (card: {output / 'dpo_lora' / 'README.md'})."
    )


if __name__ == "__main__":
    main()
