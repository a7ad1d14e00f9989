from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from torch import nn

from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge


def output_features(layer: nn.Module) -> int:
    """The size of the last dimension of `layer`'s output."""
    if hasattr(layer, "out_features"):  # nn.Linear, bitsandbytes Linear4bit / Linear8bitLt
        return int(layer.out_features)
    weight = getattr(layer, "weight", None)
    if type(layer).__name__ == "Conv1D":  # GPT-2: weight is (in, out)
        return int(weight.shape[1])
    if weight is not None and weight.dim() == 1:  # LayerNorm, RMSNorm and the like
        return int(weight.shape[0])
    raise ValueError(f"SSF cannot adapt {type(layer).__name__}: target linear or norm layers")


class SSFLayer(nn.Module, BaseTunerLayer):
    """`base_layer(x) * scale + shift` for the active adapters."""

    adapter_layer_names = ("ssf_scale", "ssf_shift")
    other_param_names = ()

    def __init__(self, base_layer: nn.Module, adapter_name: str, init_std: float, shift: bool, **kwargs: Any):
        super().__init__()
        self.base_layer = base_layer
        self.ssf_scale = nn.ParameterDict({})
        self.ssf_shift = nn.ParameterDict({})
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = adapter_name
        self.out_features = output_features(base_layer)
        self.update_layer(adapter_name, init_std, shift)

    def update_layer(self, adapter_name: str, init_std: float, shift: bool, inference_mode: bool = False) -> None:
        """A scale (and, with `shift`, a shift) for `adapter_name`; without a shift none is stored."""
        device = self.get_base_layer().weight.device
        scale = torch.ones(self.out_features, device=device)
        if init_std > 0:
            nn.init.normal_(scale, 1.0, init_std)
        self.ssf_scale[adapter_name] = nn.Parameter(scale)
        if shift:
            offset = torch.zeros(self.out_features, device=device)
            if init_std > 0:
                nn.init.normal_(offset, 0.0, init_std)
            self.ssf_shift[adapter_name] = nn.Parameter(offset)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def _shift(self, adapter: str) -> torch.Tensor | None:
        return self.ssf_shift[adapter] if adapter in self.ssf_shift else None

    # ---- merging: W' = diag(scale) W, b' = scale * b + shift --------------------------------------------------

    def _merge_weights(self, adapter: str, sign: int) -> None:
        base = self.get_base_layer()
        scale = self.ssf_scale[adapter].data
        shift = self._shift(adapter)
        shift = torch.zeros_like(scale) if shift is None else shift.data
        weight = base.weight
        if not isinstance(weight, nn.Parameter) or weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError("SSF merges into full-precision weights only (dequantize a 4-bit base first)")
        bias = getattr(base, "bias", None)
        if bias is None and bool(shift.abs().max() > 0):
            raise ValueError("SSF cannot merge a shift into a layer without a bias; train with shift=False to "
                             "merge into bias-free layers")
        s = scale.to(weight.dtype)
        if sign > 0:
            if type(base).__name__ == "Conv1D":
                weight.data *= s.unsqueeze(0)
            elif weight.dim() == 1:
                weight.data *= s
            else:
                weight.data *= s.unsqueeze(1)
            if bias is not None:
                bias.data = bias.data * s + shift.to(bias.dtype)
        else:
            if bias is not None:
                bias.data = (bias.data - shift.to(bias.dtype)) / s
            if type(base).__name__ == "Conv1D":
                weight.data /= s.unsqueeze(0)
            elif weight.dim() == 1:
                weight.data /= s
            else:
                weight.data /= s.unsqueeze(1)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        for name in adapter_names:
            if name in self.ssf_scale:
                if safe_merge:
                    before = self.get_base_layer().weight.data.clone()
                    self._merge_weights(name, +1)
                    if not torch.isfinite(self.get_base_layer().weight.data).all():
                        self.get_base_layer().weight.data = before
                        raise ValueError(f"NaNs detected in the merged weights of adapter {name}")
                else:
                    self._merge_weights(name, +1)
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.ssf_scale:
                self._merge_weights(name, -1)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        dtype = result.dtype
        for name in self.active_adapters:
            if name not in self.ssf_scale:
                continue
            result = result * self.ssf_scale[name].to(dtype)
            shift = self._shift(name)
            if shift is not None:
                result = result + shift.to(dtype)
        return result

    def __repr__(self) -> str:
        return "ssf." + super().__repr__()
