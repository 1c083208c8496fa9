"""The offline showcase (`make demo`): the shapes world, its base models, how much the policy
hallucinates, how much of that the noisy annotator causes, what an oracle removes, and what CSR removes.

Every step is the command a user would run, with the project's recipes, against a local Hub:

1. start the project's Hub server on 127.0.0.1 (`python -m selfalign.hub_server`),
2. build the shapes world (recipes/shapes/world.yaml): SFT rows captioned by its noisy annotator, the
   same rows with the annotator's noise removed (the clean labels), held-out eval scenes, all
   published; CLIP rows (true captions only) for training and held-out retrieval,
3. train the tiny CLIP (recipes/shapes/clip.yaml) and publish it,
4. build a tiny LLaVA whose vision tower is that CLIP (`scripts/make_tiny_models.py --vision-tower`)
   and publish it as the base model to start from,
5. SFT it into the base policy on the noisy rows, and into the clean-labels policy on the clean ones
   (recipes/shapes/policy_sft.yaml); publish both,
6. evaluate both on the published held-out scenes (recipes/shapes/eval.yaml),
7. the oracle bound: two rounds of DPO from the base policy on pairs the scene's truth picks
   (recipes/shapes/csr/iterate_scene_truth.yaml), each round evaluated,
8. CSR: two rounds of pairs -> DPO -> merge from the published policy (`scripts/iterate.py`,
   recipes/shapes/csr/), each round's pairs and model published, each round evaluated,
9. write the comparison table with its breakdown and each round's pairs judged by the scenes' truth
   (outputs/demo/report.md, also printed) and its bar chart (report.png).

Everything lives under outputs/demo/ (or --output-dir), which is rebuilt from scratch on each run;
nothing leaves this machine. It takes about half an hour on 2 CPU cores. `--quick` runs the same
steps on a small world with few training steps and one round each of the oracle and CSR (about
five minutes): it checks the pipeline, its numbers mean nothing.
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
from dataclasses import dataclass
from pathlib import Path

import yaml

# Neither imports the Hub clients, whose variables main() sets first.
from selfalign.errors import SelfAlignError
from selfalign.rounds.commands import run_entry_point

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes" / "shapes"
NAMESPACE = "selfalign-demo"
SFT_DATA_ID = f"{NAMESPACE}/shapes-sft"
CLEAN_SFT_DATA_ID = f"{NAMESPACE}/shapes-sft-clean-labels"
EVAL_DATA_ID = f"{NAMESPACE}/shapes-eval"
CLIP_ID = f"{NAMESPACE}/shapes-clip"
INIT_ID = f"{NAMESPACE}/shapes-llava-init"
POLICY_ID = f"{NAMESPACE}/shapes-policy"
CLEAN_POLICY_ID = f"{NAMESPACE}/shapes-policy-clean-labels"
CSR_MODEL_ID = f"{NAMESPACE}/shapes-csr"
CSR_PAIRS_ID = f"{NAMESPACE}/shapes-csr-pairs"
STEPS = 9
# The annotator's noise off: the same scenes, captions and questions, every caption true.
NO_NOISE = ("--annotator_noise_rate", "0")


@dataclass(frozen=True)
class Scale:
    """How big a run is: flags added to the recipes' own, and how many scenes each step draws."""

    world: tuple[str, ...]  # dataset_builders/shapes.py
    clip_scenes: int
    clip: tuple[str, ...]  # scripts/train_clip.py
    sft: tuple[str, ...]  # scripts/sft.py
    csr_scenes: int  # scenes each round of pairs samples
    rounds: int  # of the oracle and of CSR


FULL = Scale(world=(), clip_scenes=20000, clip=(), sft=(), csr_scenes=600, rounds=2)
QUICK = Scale(
    world=("--train_scenes", "300", "--eval_scenes", "50"),
    clip_scenes=1500,
    clip=("--tower_pretraining_steps", "150", "--max_steps", "60"),
    sft=("--max_steps", "60"),
    csr_scenes=16,
    rounds=1,
)


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
    parser.add_argument(
        "--quick", action="store_true", help="A small world and few steps: checks the pipeline only."
    )
    args = parser.parse_args()
    output = args.output_dir.resolve()
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
        run_demo(output, QUICK if args.quick else FULL)
    finally:
        server.terminate()
        server.wait()
    print(f"\nDemo finished in {(time.perf_counter() - started) / 60:.1f} min.")


def run_demo(output: Path, scale: Scale) -> None:
    world = str(RECIPES / "world.yaml")
    step(
        2,
        f"Building the shapes world; publishing the SFT rows ({SFT_DATA_ID}), the same rows with clean "
        f"labels ({CLEAN_SFT_DATA_ID}) and the eval scenes ({EVAL_DATA_ID})",
    )

    def build(kind: str, folder: str, *flags: str) -> None:
        run("dataset_builders/shapes.py", "--config", world, "--kind", kind,
            "--output_dir", f"{output}/world/{folder}", *scale.world, *flags)  # fmt: skip

    build("sft", "sft", "--push_to_hub", "true", "--hub_dataset_id", SFT_DATA_ID)
    build(
        "sft", "sft_clean_labels", *NO_NOISE, "--push_to_hub", "true", "--hub_dataset_id", CLEAN_SFT_DATA_ID
    )
    build("eval", "eval", "--split", "test", "--push_to_hub", "true", "--hub_dataset_id", EVAL_DATA_ID)
    # The CLIP's own rows, for its tower's supervised pretraining (recipes/shapes/clip.yaml).
    build("clip", "clip", "--train_scenes", str(scale.clip_scenes))
    build("clip", "clip_eval", "--scene_split", "eval", "--split", "test")
    # CSR's images and 'describe' prompts: training scenes, as recipes/shapes/csr/pairs.yaml says.
    build("eval", "csr_scenes", "--scene_split", "train", "--train_scenes", str(scale.csr_scenes))

    step(3, f"Training the tiny CLIP (held-out retrieval is measured) and publishing it as {CLIP_ID}")
    run("scripts/train_clip.py", "--config", str(RECIPES / "clip.yaml"), "--num_threads", str(os.cpu_count()),
        "--train_dataset", f"{output}/world/clip", "--eval_dataset", f"{output}/world/clip_eval",
        "--output_dir", f"{output}/clip", "--push_to_hub", "true", "--hub_model_id", CLIP_ID,
        *scale.clip)  # fmt: skip

    step(4, f"Building a tiny LLaVA whose vision tower is the trained CLIP; publishing it as {INIT_ID}")
    run("scripts/make_tiny_models.py", "--families", "llava", "--preset", "shapes",
        "--vision-tower", f"{output}/clip", "--output-dir", f"{output}/models")  # fmt: skip
    from selfalign.publish.hub import push_folder

    push_folder(
        output / "models" / "llava", INIT_ID, commit_message="Tiny LLaVA on the shapes CLIP, before SFT"
    )

    step(
        5,
        f"SFT: the base policy on the noisy captions ({POLICY_ID}), the clean-labels policy ({CLEAN_POLICY_ID})",
    )
    for data_id, folder, model_id in ((SFT_DATA_ID, "policy", POLICY_ID),
                                      (CLEAN_SFT_DATA_ID, "policy_clean_labels", CLEAN_POLICY_ID)):  # fmt: skip
        run("scripts/sft.py", "--config", str(RECIPES / "policy_sft.yaml"),
            "--model_name_or_path", INIT_ID, "--dataset_name", data_id,
            "--output_dir", f"{output}/{folder}", "--push_to_hub", "true", "--hub_model_id", model_id,
            "--disable_tqdm", "true", *scale.sft)  # fmt: skip

    step(6, f"Evaluating both, as published, on the published held-out scenes ({EVAL_DATA_ID}): CHAIR, POPE")
    for model_id, folder in ((POLICY_ID, "base"), (CLEAN_POLICY_ID, "clean_labels")):
        run("scripts/evaluate.py", "--config", str(RECIPES / "eval.yaml"), "--model_name_or_path", model_id,
            "--eval_dataset", EVAL_DATA_ID, "--output_dir", f"{output}/eval/{folder}")  # fmt: skip

    step(
        7,
        f"The oracle bound: {scale.rounds} round(s) of DPO from {POLICY_ID} on pairs the scenes' truth "
        "picks, each evaluated",
    )
    iterate(output, scale, "iterate_scene_truth.yaml", "oracle", [])

    step(
        8,
        f"CSR: {scale.rounds} round(s) from {POLICY_ID}, published as {CSR_PAIRS_ID}-iter<k> and "
        f"{CSR_MODEL_ID}-iter<k>, each round evaluated",
    )
    iterate(output, scale, "iterate.yaml", "csr", ["--clip_model", CLIP_ID],
            "--push_to_hub", "true", "--hub_model_id", CSR_MODEL_ID, "--hub_dataset_id", CSR_PAIRS_ID)  # fmt: skip

    rows = {
        "base policy (SFT)": output / "eval" / "base",
        "clean-labels SFT": output / "eval" / "clean_labels",
    }
    rounds = {}
    for run_name, title in (("oracle", "oracle (scene truth)"), ("csr", "CSR")):
        for round_number in range(1, scale.rounds + 1):
            rounds[f"{title} round {round_number}"] = output / run_name / f"round_{round_number}"
    rows.update({name: folder / "eval" for name, folder in rounds.items()})
    step(9, f"Writing {output / 'report.md'} and {output / 'report.png'}")
    from selfalign.evaluation.pair_quality import pair_quality

    write_report(
        output,
        {name: json.loads((folder / "report.json").read_text()) for name, folder in rows.items()},
        {
            name: pair_quality(str(folder / "pairs"), f"{output}/world/csr_scenes")
            for name, folder in rounds.items()
        },
    )


def iterate(output: Path, scale: Scale, recipe: str, folder: str, pairs_args: list[str], *flags: str) -> None:
    """Run a round-runner recipe of recipes/shapes/csr/ from the published policy, on this run's scenes.
    The policy was evaluated in step 6: the runner evaluates only the rounds' models."""
    iterate_recipe = yaml.safe_load((RECIPES / "csr" / recipe).read_text())
    iterate_recipe.update(
        pairs_config=str(RECIPES / "csr" / "pairs.yaml"),
        dpo_config=str(RECIPES / "csr" / "dpo_lora.yaml"),
        eval_config=str(RECIPES / "eval.yaml"),
        evaluate_start=False,
        rounds=scale.rounds,
        pairs_args=[*iterate_recipe.get("pairs_args", []), "--dataset_name", f"{output}/world/csr_scenes",
                    *pairs_args],
        eval_args=["--eval_dataset", EVAL_DATA_ID],
    )  # fmt: skip
    (output / f"{folder}_iterate.yaml").write_text(yaml.safe_dump(iterate_recipe, sort_keys=False))
    run("scripts/iterate.py", "--config", str(output / f"{folder}_iterate.yaml"), "--policy_model", POLICY_ID,
        "--output_dir", f"{output}/{folder}", *flags)  # fmt: skip


def write_report(output: Path, reports: dict[str, dict], pairs: dict[str, dict]) -> None:
    from selfalign.evaluation.comparison import comparison_chart, comparison_markdown
    from selfalign.evaluation.pair_quality import pair_quality_markdown

    num_scenes = next(iter(reports.values()))["eval_set"]["num_scenes"]
    table = comparison_markdown(reports) + "\n" + pair_quality_markdown(pairs)
    (output / "report.md").write_text(
        f"# Shapes world: hallucination on {num_scenes} held-out scenes\n\n{table}\n"
        "CHAIR_i: share of the objects named in captions that are not in the image (a wrong colour "
        "counts); CHAIR_s: share of captions with at least one. POPE F1 over yes/no probes about "
        "present and absent objects (random, popular and adversarial). The breakdown counts the wrong "
        "mentions by kind: an absent companion is the language prior the noisy annotator taught; wrong "
        "shapes, wrong colours and swapped attributes are errors of perception. The clean-labels policy "
        "is the base policy's SFT with the annotator's noise removed; the oracle's pairs are picked by "
        "the scenes' truth, the bound a method's scorer can reach. The last table judges each round's "
        "pairs by the scenes' truth: a scorer that loses the signal picks chosen responses hardly more "
        "truthful than the rejected ones. Per-model reports are in eval/, oracle/round_<k>/eval/ and "
        "csr/round_<k>/eval/.\n"
        "\n![metrics](report.png)\n"
    )
    comparison_chart(reports, output / "report.png")
    print("\n" + table)


if __name__ == "__main__":
    main()
