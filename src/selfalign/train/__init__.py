"""The training entry points' logic: SFT and DPO runs (scripts/sft.py, scripts/dpo.py), merging an
adapter (scripts/merge_adapter.py) and the tiny CLIP's training (scripts/train_clip.py)."""
