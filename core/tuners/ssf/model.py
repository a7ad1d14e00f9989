from __future__ import annotations

from torch import nn

from peft.tuners.tuners_utils import BaseTuner

from peft_apps.core.tuners.ssf.layer import SSFLayer


class SSFModel(BaseTuner):
    """Wraps each target layer of `model` in an `SSFLayer` (see `SSFConfig`)."""

    prefix: str = "ssf_"
    tuner_layer_cls = SSFLayer
    target_module_mapping: dict[str, list[str]] = {}

    def _create_and_replace(self, peft_config, adapter_name: str, target: nn.Module, target_name: str,
                            parent: nn.Module, current_key: str) -> None:
        if isinstance(target, SSFLayer):
            target.update_layer(adapter_name, peft_config.init_std, peft_config.shift,
                                inference_mode=peft_config.inference_mode)
            return
        new_module = SSFLayer(target, adapter_name, peft_config.init_std, peft_config.shift)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _check_merge_allowed(self):
        """Refuse before touching any weight when some layer cannot take its shift (no bias)."""
        super()._check_merge_allowed()
        for name, module in self.model.named_modules():
            if not isinstance(module, SSFLayer):
                continue
            base = module.get_base_layer()
            for adapter in module.active_adapters:
                shift = module._shift(adapter)
                if getattr(base, "bias", None) is None and shift is not None and bool(shift.abs().max() > 0):
                    raise ValueError(f"SSF cannot merge a shift into {name}: the layer has no bias (train with "
                                     "shift=False to merge into bias-free layers)")
