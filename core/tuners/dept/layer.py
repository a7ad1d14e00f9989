from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from peft.tuners.tuners_utils import BaseTunerLayer


class DePTEmbedding(nn.Module, BaseTunerLayer):
    """Wraps the input embedding and holds DePT's parameters per adapter: the soft prompt
    (num_virtual_tokens x hidden) and the low-rank position update A (max_length x r), B (r x hidden).

    Called with token ids alone it is the frozen embedding; the model's hooks (see `DePTModel`) call
    `embed(ids, positions)` and `prompt()`."""

    adapter_layer_names = ("dept_prompt", "dept_A", "dept_B")

    def __init__(self, base_layer: nn.Embedding, adapter_name: str, num_virtual_tokens: int, r: int,
                 max_length: int, **kwargs: Any):
        super().__init__()
        self.base_layer = base_layer
        self.dept_prompt = nn.ParameterDict({})
        self.dept_A = nn.ParameterDict({})
        self.dept_B = nn.ParameterDict({})
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, num_virtual_tokens, r, max_length)

    def update_layer(self, adapter_name: str, num_virtual_tokens: int, r: int, max_length: int,
                     inference_mode: bool = False) -> None:
        weight = self.get_base_layer().weight
        hidden = weight.shape[1]
        # the prompt starts as the embeddings of random vocabulary tokens (their scale, not N(0, 1))
        rows = torch.randint(0, weight.shape[0], (num_virtual_tokens,), device=weight.device)
        self.dept_prompt[adapter_name] = nn.Parameter(weight.detach()[rows].float().clone())
        # as LoRA: A random, B zero, so the update starts at zero
        self.dept_A[adapter_name] = nn.Parameter(torch.randn(max_length, r, device=weight.device) / math.sqrt(r))
        self.dept_B[adapter_name] = nn.Parameter(torch.zeros(r, hidden, device=weight.device))
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def active(self) -> str | None:
        """The active DePT adapter, or None (disabled, or another method's adapter is active)."""
        if self.disable_adapters:
            return None
        names = [n for n in self.active_adapters if n in self.dept_prompt]
        if len(names) > 1:
            raise ValueError("DePT runs one adapter at a time")
        return names[0] if names else None

    def prompt(self, adapter: str) -> torch.Tensor:
        return self.dept_prompt[adapter]

    def embed(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, positions: torch.Tensor,
              adapter: str) -> torch.Tensor:
        """Token embeddings plus the low-rank update at each token's position (0 = first real token)."""
        emb = self.base_layer(input_ids) if inputs_embeds is None else inputs_embeds
        A, B = self.dept_A[adapter], self.dept_B[adapter]
        pos = positions.clamp(min=0)
        covered = (pos < A.shape[0]).unsqueeze(-1)
        offset = (A[pos.clamp(max=A.shape[0] - 1)] @ B) * covered
        return emb + offset.to(emb.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.base_layer(x, *args, **kwargs)

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        raise ValueError("DePT cannot be merged: its soft prompt is an extra input, not a change of weights")

    def unmerge(self) -> None:
        pass

    def __repr__(self) -> str:
        return "dept." + super().__repr__()
