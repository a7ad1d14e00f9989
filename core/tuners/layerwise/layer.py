from __future__ import annotations

import copy
import warnings
from typing import Any, Optional

import torch
from torch import nn

from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge


def trainable_copy(layer: nn.Module) -> nn.Module:
    """A full-precision copy of `layer` that can train: bitsandbytes 4/8-bit linears become nn.Linear holding
    the dequantized weight (what the frozen model computes with)."""
    kind = type(layer).__name__
    if kind in ("Linear4bit", "Linear8bitLt"):
        if kind == "Linear4bit":
            from bitsandbytes.functional import dequantize_4bit

            w = dequantize_4bit(layer.weight.data, layer.weight.quant_state)
        else:
            w = layer.weight.data.float() * layer.weight.SCB.float().unsqueeze(1) / 127.0
        dtype = getattr(layer, "compute_dtype", None) or torch.float32
        new = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, dtype=dtype,
                        device=w.device)
        new.weight.data.copy_(w.to(dtype))
        if layer.bias is not None:
            new.bias.data.copy_(layer.bias.data.to(dtype))
        return new
    return copy.deepcopy(layer)


class LayerwiseLayer(nn.Module, BaseTunerLayer):
    """Runs the active adapter's trainable copy of `base_layer` instead of the frozen layer."""

    adapter_layer_names = ("layerwise_copies",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs: Any):
        super().__init__()
        self.base_layer = base_layer
        self.layerwise_copies = nn.ModuleDict({})
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = adapter_name
        self.update_layer(adapter_name)

    def update_layer(self, adapter_name: str, inference_mode: bool = False) -> None:
        self.layerwise_copies[adapter_name] = trainable_copy(self.get_base_layer())
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if not adapter_names:
            return
        if len(adapter_names) > 1:
            raise ValueError("layerwise merges one adapter at a time")
        if self.merged:
            self.unmerge()
        name = adapter_names[0]
        self.base_layer, self.layerwise_copies[name] = self.layerwise_copies[name], self.base_layer
        self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        name = self.merged_adapters.pop()
        self.base_layer, self.layerwise_copies[name] = self.layerwise_copies[name], self.base_layer

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged or not self.active_adapters:
            return self.base_layer(x, *args, **kwargs)
        if len(self.active_adapters) != 1:
            raise ValueError("layerwise runs one adapter at a time")
        name = self.active_adapters[0]
        if name not in self.layerwise_copies:
            return self.base_layer(x, *args, **kwargs)
        return self.layerwise_copies[name](x, *args, **kwargs)

    def __repr__(self) -> str:
        return "layerwise." + super().__repr__()
