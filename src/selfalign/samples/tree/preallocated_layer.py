"""A KV cache layer written in place: the batched search sizes its buffers for every token it will write."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from selfalign.errors import SelfAlignError


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views of buffers with room for more tokens.

    `DynamicLayer` concatenates every step's token onto the whole cache, copying it; here a step
    writes its token into the room, which the expander sizes for every token it will write.
    """

    def __init__(self, key_buffer: torch.Tensor, value_buffer: torch.Tensor, length: int):
        """Buffers (rows, kv_heads, slots, head_dim) whose first `length` slots are written."""
        super().__init__()
        self.lazy_initialization(key_buffer, value_buffer)
        self._use(key_buffer, value_buffer, length)

    def _use(self, key_buffer: torch.Tensor, value_buffer: torch.Tensor, length: int) -> None:
        self.key_buffer, self.value_buffer, self.length = key_buffer, value_buffer, length
        self.keys, self.values = key_buffer[..., :length, :], value_buffer[..., :length, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self.key_buffer.shape[-2]:
            raise SelfAlignError(
                f"a cache buffer of {self.key_buffer.shape[-2]} slots cannot hold {end} tokens"
            )
        self.key_buffer[..., self.length : end, :] = key_states
        self.value_buffer[..., self.length : end, :] = value_states
        self._use(self.key_buffer, self.value_buffer, end)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._use(
            self.key_buffer.index_select(0, indices), self.value_buffer.index_select(0, indices), self.length
        )
