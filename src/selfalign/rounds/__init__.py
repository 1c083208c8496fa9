"""The round runner: a run of rounds, each step the project's own entry point, resumable, published.

Iterative CSR: N rounds of (pairs from the current policy -> DPO with LoRA -> merge the LoRA).

    python scripts/iterate.py --config recipes/llava-1.5-7b/csr/iterate.yaml

Round k runs, each as the command a user would type (a `launcher` such as `accelerate launch ...`
goes in front of the builder and the DPO run):

1. `dataset_builders/csr_pairs.py --config <pairs_config> --policy_model <policy> --iteration k`,
2. `scripts/dpo.py --config <dpo_config> --model_name_or_path <policy> --dataset_name <the pairs>`,
3. `scripts/merge_adapter.py`: the merged model is round k+1's policy,
4. with an `eval_config`, `scripts/evaluate.py` on the merged model (and once on the starting policy).

With `push_to_hub`, round k's pairs go to `<hub_dataset_id>-iter<k>` and its merged model to
`<hub_model_id>-iter<k>`, and the next round starts from that Hub copy. Every finished step is recorded
in `<output_dir>/progress.json`, so a rerun of the same command after an interruption goes on from the
first unfinished step (a builder also resumes from its finished shards, DPO from its last checkpoint).
At the end, `summary.json` and `summary.md` hold every round: its pairs, DPO metrics, model and scores.

The package itself imports nothing: `scripts/demo.py` takes `commands.run_entry_point` before it sets
the Hub variables, which `huggingface_hub` reads once, when it is first imported.
"""
