"""The offline showcase (`make demo`): the shapes world, its base models, and how much the policy hallucinates.

Every step is the command a user would run, with the project's recipes, against a local Hub:

1. start the project's Hub server on 127.0.0.1 (`python -m selfalign.hub_server`),
2. build the shapes world (recipes/shapes/world.yaml): SFT rows and held-out eval scenes, published;
   CLIP rows for training and held-out retrieval,
3. train the tiny CLIP (recipes/shapes/clip.yaml) and publish it,
4. build a tiny LLaVA whose vision tower is that CLIP (`scripts/make_tiny_models.py --vision-tower`)
   and publish it as the base model to start from,
5. SFT the published model into the base policy (recipes/shapes/policy_sft.yaml) and publish it,
6. CSR: two rounds of pairs -> DPO -> merge from the published policy (`scripts/iterate.py`,
   recipes/shapes/csr/), each round's pairs and model published; the published policy and each
   round's model are evaluated on the published held-out scenes (recipes/shapes/eval.yaml),
7. write the comparison table (outputs/demo/report.md, also printed) and its bar chart (report.png).

Everything lives under outputs/demo/ (or --output-dir), which is rebuilt from scratch on each run;
nothing leaves this machine. It takes about twelve minutes on 2 CPU cores.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

# Neither imports the Hub clients, whose variables main() sets first.
from selfalign.errors import SelfAlignError
from selfalign.rounds.commands import run_entry_point

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes" / "shapes"
NAMESPACE = "selfalign-demo"
SFT_DATA_ID = f"{NAMESPACE}/shapes-sft"
EVAL_DATA_ID = f"{NAMESPACE}/shapes-eval"
CLIP_ID = f"{NAMESPACE}/shapes-clip"
INIT_ID = f"{NAMESPACE}/shapes-llava-init"
POLICY_ID = f"{NAMESPACE}/shapes-policy"
CSR_MODEL_ID = f"{NAMESPACE}/shapes-csr"
CSR_PAIRS_ID = f"{NAMESPACE}/shapes-csr-pairs"
STEPS = 7


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
    print(f"\n[{number}/{STEPS}] {text}", flush=True)


def run(script: str, *args: str) -> None:
    """Run one of the project's scripts as a user would; stop the demo if it fails."""
    try:
        run_entry_point(script, args)
    except SelfAlignError as error:
        sys.exit(f"error: {error}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", type=Path, default=REPO / "outputs" / "demo")
    output = parser.parse_args().output_dir.resolve()
    shutil.rmtree(output, ignore_errors=True)
    port = free_port()
    # The scripts' Hub clients read these when first imported: set before any of them starts.
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
    started = time.perf_counter()
    step(1, f"Starting the local Hub on 127.0.0.1:{port} (data in {output / 'hub'})")
    server = start_hub(port, output)
    try:
        run_demo(output)
    finally:
        server.terminate()
        server.wait()
    print(f"\nDemo finished in {(time.perf_counter() - started) / 60:.1f} min.")


def run_demo(output: Path) -> None:
    world = str(RECIPES / "world.yaml")
    step(
        2,
        f"Building the shapes world; publishing the SFT rows ({SFT_DATA_ID}) and eval scenes ({EVAL_DATA_ID})",
    )
    build = "dataset_builders/shapes.py"
    run(build, "--config", world, "--kind", "sft", "--output_dir", f"{output}/world/sft",
        "--push_to_hub", "true", "--hub_dataset_id", SFT_DATA_ID)  # fmt: skip
    run(build, "--config", world, "--kind", "eval", "--split", "test", "--output_dir", f"{output}/world/eval",
        "--push_to_hub", "true", "--hub_dataset_id", EVAL_DATA_ID)  # fmt: skip
    # The CLIP's own rows: 20,000 scenes, for its tower's supervised pretraining (recipes/shapes/clip.yaml).
    run(build, "--config", world, "--kind", "clip", "--train_scenes", "20000",
        "--output_dir", f"{output}/world/clip")  # fmt: skip
    run(build, "--config", world, "--kind", "clip", "--scene_split", "eval", "--split", "test",
        "--output_dir", f"{output}/world/clip_eval")  # fmt: skip
    # CSR's images and 'describe' prompts: training scenes, as recipes/shapes/csr/pairs.yaml says.
    run(build, "--config", world, "--kind", "eval", "--scene_split", "train", "--train_scenes", "600",
        "--output_dir", f"{output}/world/csr_scenes")  # fmt: skip

    step(3, f"Training the tiny CLIP (held-out retrieval is measured) and publishing it as {CLIP_ID}")
    run("scripts/train_clip.py", "--config", str(RECIPES / "clip.yaml"), "--num_threads", str(os.cpu_count()),
        "--train_dataset", f"{output}/world/clip", "--eval_dataset", f"{output}/world/clip_eval",
        "--output_dir", f"{output}/clip", "--push_to_hub", "true", "--hub_model_id", CLIP_ID)  # fmt: skip

    step(4, f"Building a tiny LLaVA whose vision tower is the trained CLIP; publishing it as {INIT_ID}")
    run("scripts/make_tiny_models.py", "--families", "llava", "--preset", "shapes",
        "--vision-tower", f"{output}/clip", "--output-dir", f"{output}/models")  # fmt: skip
    from selfalign.publish.hub import push_folder

    push_folder(
        output / "models" / "llava", INIT_ID, commit_message="Tiny LLaVA on the shapes CLIP, before SFT"
    )

    step(5, f"Training the base policy with scripts/sft.py and publishing it as {POLICY_ID}")
    run("scripts/sft.py", "--config", str(RECIPES / "policy_sft.yaml"),
        "--model_name_or_path", INIT_ID, "--dataset_name", SFT_DATA_ID,
        "--output_dir", f"{output}/policy", "--push_to_hub", "true", "--hub_model_id", POLICY_ID,
        "--disable_tqdm", "true")  # fmt: skip

    step(
        6,
        f"CSR: 2 rounds from {POLICY_ID}, published as {CSR_PAIRS_ID}-iter<k> and {CSR_MODEL_ID}-iter<k>; "
        "the policy and each round's model evaluated on the published held-out scenes (CHAIR, POPE)",
    )
    iterate_recipe = yaml.safe_load((RECIPES / "csr" / "iterate.yaml").read_text())
    iterate_recipe.update(
        pairs_config=str(RECIPES / "csr" / "pairs.yaml"),
        dpo_config=str(RECIPES / "csr" / "dpo_lora.yaml"),
        eval_config=str(RECIPES / "eval.yaml"),
        pairs_args=["--dataset_name", f"{output}/world/csr_scenes", "--clip_model", CLIP_ID],
        eval_args=["--eval_dataset", EVAL_DATA_ID],
    )
    (output / "csr_iterate.yaml").write_text(yaml.safe_dump(iterate_recipe, sort_keys=False))
    run("scripts/iterate.py", "--config", str(output / "csr_iterate.yaml"), "--policy_model", POLICY_ID,
        "--output_dir", f"{output}/csr", "--push_to_hub", "true", "--hub_model_id", CSR_MODEL_ID,
        "--hub_dataset_id", CSR_PAIRS_ID)  # fmt: skip
    # Round 0 is the starting policy, as published.
    rows = {"base policy (SFT)": output / "csr" / "round_0" / "eval"}
    for round_number in (1, 2):
        rows[f"CSR round {round_number}"] = output / "csr" / f"round_{round_number}" / "eval"

    step(7, f"Writing {output / 'report.md'} and {output / 'report.png'}")
    write_report(
        output, {name: json.loads((folder / "report.json").read_text()) for name, folder in rows.items()}
    )


def write_report(output: Path, reports: dict[str, dict]) -> None:
    from selfalign.evaluation.comparison import comparison_chart, comparison_markdown

    num_scenes = next(iter(reports.values()))["eval_set"]["num_scenes"]
    table = comparison_markdown(reports)
    (output / "report.md").write_text(
        f"# Shapes world: hallucination on {num_scenes} held-out scenes\n\n{table}\n"
        "CHAIR_i: share of the objects named in captions that are not in the image (a wrong colour "
        "counts); CHAIR_s: share of captions with at least one. POPE F1 over yes/no probes about "
        "present and absent objects (random, popular and adversarial). Per-model reports are in "
        "csr/round_<k>/eval/ (round 0: the base policy).\n"
        "\n![metrics](report.png)\n"
    )
    comparison_chart(reports, output / "report.png")
    print("\n" + table)


if __name__ == "__main__":
    main()
