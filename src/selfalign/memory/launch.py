"""How a run is spread over GPUs: the parts of an accelerate (and DeepSpeed) config that change memory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from selfalign.errors import SelfAlignError

Strategy = Literal["ddp", "zero0", "zero1", "zero2", "zero3", "fsdp", "fsdp_grad_op"]


@dataclass
class Launch:
    """How the run is spread over GPUs: the parts of an accelerate config that change memory."""

    strategy: Strategy = "ddp"
    num_gpus: int = 1
    mixed_precision: str = "bf16"
    offload_optimizer: bool = False
    offload_params: bool = False
    activation_checkpointing: bool = False  # FSDP's own activation checkpointing
    source: str = ""

    @property
    def deepspeed(self) -> bool:
        return self.strategy.startswith("zero")

    @property
    def zero_stage(self) -> int:
        return int(self.strategy[-1]) if self.deepspeed else 0

    @property
    def fsdp(self) -> bool:
        return self.strategy.startswith("fsdp")

    def describe(self) -> str:
        names = {
            "ddp": "DDP (no sharding)",
            "zero0": "DeepSpeed ZeRO-0 (no sharding)",
            "zero1": "DeepSpeed ZeRO-1 (optimizer states sharded)",
            "zero2": "DeepSpeed ZeRO-2 (gradients + optimizer states sharded)",
            "zero3": "DeepSpeed ZeRO-3 (weights, gradients, optimizer states sharded)",
            "fsdp": "FSDP full shard (weights, gradients, optimizer states sharded)",
            "fsdp_grad_op": "FSDP shard-grad-op (weights gathered from forward to backward)",
        }
        if self.strategy == "ddp" and self.num_gpus == 1:
            return "one GPU, no data parallelism"
        text = f"{names[self.strategy]}, {self.num_gpus} GPU{'s' if self.num_gpus != 1 else ''}"
        if self.offload_optimizer:
            text += ", optimizer offloaded to CPU"
        if self.offload_params:
            text += ", parameters offloaded to CPU"
        return text


def read_launch(path: str | Path | None, num_gpus: int | None = None) -> Launch:
    """The memory-relevant settings of an accelerate config file (None: one GPU, no sharding)."""
    if path is None:
        return Launch(strategy="ddp", num_gpus=num_gpus or 1, source="no accelerate config")
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as error:
        raise SelfAlignError(f"{path}: accelerate config not found") from error
    if not isinstance(data, dict):
        raise SelfAlignError(f"{path}: an accelerate config must be a YAML mapping")
    launch = Launch(
        num_gpus=num_gpus or int(data.get("num_processes") or 1),
        mixed_precision=str(data.get("mixed_precision") or "no"),
        source=str(path),
    )
    distributed = str(data.get("distributed_type") or "NO").upper()
    if distributed in ("NO", "MULTI_GPU", "MULTI_CPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU"):
        launch.strategy = "ddp"
    elif distributed == "DEEPSPEED":
        ds = data.get("deepspeed_config") or {}
        if "deepspeed_config_file" in ds:
            ds = _deepspeed_json(Path(path).parent, ds["deepspeed_config_file"])
        stage = int(ds.get("zero_stage", 0))
        if stage not in (0, 1, 2, 3):
            raise SelfAlignError(f"{path}: unknown DeepSpeed zero_stage {stage}")
        launch.strategy = f"zero{stage}"
        launch.offload_optimizer = str(ds.get("offload_optimizer_device", "none")).lower() in ("cpu", "nvme")
        launch.offload_params = str(ds.get("offload_param_device", "none")).lower() in ("cpu", "nvme")
    elif distributed == "FSDP":
        fsdp = data.get("fsdp_config") or {}
        strategy = str(fsdp.get("fsdp_sharding_strategy", "FULL_SHARD")).upper()
        reshard = fsdp.get("fsdp_reshard_after_forward", True)
        if strategy in ("NO_SHARD", "3"):
            launch.strategy = "ddp"
        elif (
            strategy in ("SHARD_GRAD_OP", "2") or reshard is False or str(reshard).upper() == "SHARD_GRAD_OP"
        ):
            launch.strategy = "fsdp_grad_op"
        else:
            launch.strategy = "fsdp"
        launch.offload_params = bool(fsdp.get("fsdp_offload_params", False))
        launch.offload_optimizer = launch.offload_params
        launch.activation_checkpointing = bool(fsdp.get("fsdp_activation_checkpointing", False))
    else:
        raise SelfAlignError(f"{path}: distributed_type '{distributed}' is not one this estimator models")
    return launch


def _deepspeed_json(folder: Path, name: str) -> dict:
    data = json.loads((folder / name).read_text() if not Path(name).is_absolute() else Path(name).read_text())
    zero = data.get("zero_optimization", {})
    return {
        "zero_stage": zero.get("stage", 0),
        "offload_optimizer_device": (zero.get("offload_optimizer") or {}).get("device", "none"),
        "offload_param_device": (zero.get("offload_param") or {}).get("device", "none"),
    }
