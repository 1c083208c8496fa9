"""Shared pieces of the training entry points (scripts/sft.py, scripts/dpo.py)."""
