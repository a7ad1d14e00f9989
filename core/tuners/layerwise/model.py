from __future__ import annotations

from torch import nn

from peft.tuners.tuners_utils import BaseTuner

from peft_apps.core.tuners.layerwise.layer import LayerwiseLayer


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name and ModuleList of `model`'s decoder layers: the ModuleList as long as the config's
    num_hidden_layers (the longest ModuleList when the config does not say)."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    exact = [(name, m) for name, m in lists if n is not None and len(m) == n]
    found = exact or sorted(lists, key=lambda nm: -len(nm[1]))
    if not found:
        raise ValueError("layerwise: no decoder layers (nn.ModuleList) found in this model")
    return found[0]


class LayerwiseModel(BaseTuner):
    """Trainable copies of every weight-holding module of the top `num_layers` decoder layers."""

    prefix: str = "layerwise_"
    tuner_layer_cls = LayerwiseLayer
    target_module_mapping: dict[str, list[str]] = {}

    def _prepare_adapter_config(self, peft_config, model_config: dict):
        return peft_config  # targets come from the model itself (`_prepare_model`)

    def _prepare_model(self, peft_config, model: nn.Module) -> None:
        if peft_config.target_modules is not None:
            return
        prefix, layers = decoder_layers(model)
        if peft_config.num_layers > len(layers):
            raise ValueError(f"layerwise: num_layers={peft_config.num_layers} but the model has {len(layers)} "
                             "decoder layers")
        targets = []
        for i in range(len(layers) - peft_config.num_layers, len(layers)):
            for name, module in layers[i].named_modules():
                if name and not list(module.children()) and list(module.parameters(recurse=False)):
                    targets.append(f"{prefix}.{i}.{name}")
        peft_config.target_modules = targets

    def _create_and_replace(self, peft_config, adapter_name: str, target: nn.Module, target_name: str,
                            parent: nn.Module, current_key: str) -> None:
        if isinstance(target, LayerwiseLayer):
            target.update_layer(adapter_name, inference_mode=peft_config.inference_mode)
            return
        new_module = LayerwiseLayer(target, adapter_name)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        pass  # the copies keep their layer's dtype
