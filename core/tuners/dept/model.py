from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from peft.tuners.tuners_utils import BaseTuner

from peft_apps.core.tuners.dept.layer import DePTEmbedding

_CACHE_KEYS = ("cache", "past_key_values")


def _decoder(model: nn.Module) -> nn.Module:
    """The module that embeds tokens and runs the layers (LlamaModel inside LlamaForCausalLM)."""
    if hasattr(model, "get_decoder"):
        dec = model.get_decoder()
        if dec is not None:
            return dec
    return getattr(model, "model", model)


class DePTModel(BaseTuner):
    """DePT through two hooks on the decoder: before it runs, the input embeddings get their position offsets
    and the soft prompt is put in front (attention mask and positions widened to match); after it runs, the
    prompt positions are cut from its hidden states, so logits and labels keep the caller's length. In cached
    decoding the prompt is already in the cache: only the mask is widened and the positions moved."""

    prefix: str = "dept_"
    tuner_layer_cls = DePTEmbedding
    target_module_mapping: dict[str, list[str]] = {}

    def _prepare_adapter_config(self, peft_config, model_config: dict):
        return peft_config

    def _prepare_model(self, peft_config, model: nn.Module) -> None:
        if peft_config.target_modules is None:
            emb = model.get_input_embeddings()
            names = [n for n, m in model.named_modules() if m is emb]
            if not names:
                raise ValueError("DePT: the model's input embedding was not found")
            peft_config.target_modules = [names[0]]

    def _create_and_replace(self, peft_config, adapter_name: str, target: nn.Module, target_name: str,
                            parent: nn.Module, current_key: str) -> None:
        kw = dict(num_virtual_tokens=peft_config.num_virtual_tokens, r=peft_config.r,
                  max_length=peft_config.max_length)
        if isinstance(target, DePTEmbedding):
            target.update_layer(adapter_name, inference_mode=peft_config.inference_mode, **kw)
            return
        if not isinstance(target, nn.Embedding):
            raise ValueError(f"DePT adapts the input embedding (nn.Embedding), not {type(target).__name__}")
        new_module = DePTEmbedding(target, adapter_name, **kw)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _post_injection_hook(self, model: nn.Module, config, adapter_name: str) -> None:
        self._dept_layers = [m for m in model.modules() if isinstance(m, DePTEmbedding)]  # found once
        if getattr(self, "_dept_handles", None):
            return
        decoder = _decoder(model)
        self._dept_handles = [decoder.register_forward_pre_hook(self._before, with_kwargs=True),
                              decoder.register_forward_hook(self._after, with_kwargs=True)]

    def _layer(self) -> DePTEmbedding | None:
        return self._dept_layers[0] if getattr(self, "_dept_layers", None) else None

    def _before(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        module._dept_prepended = 0
        layer = self._layer()
        adapter = layer.active() if layer is not None else None
        if adapter is None:
            return args, kwargs
        kwargs = dict(kwargs)
        if args:  # input_ids given by position
            kwargs.setdefault("input_ids", args[0])
            args = args[1:]
        ids, embeds = kwargs.get("input_ids"), kwargs.get("inputs_embeds")
        ref = ids if ids is not None else embeds
        batch, q = ref.shape[0], ref.shape[1]
        m = layer.prompt(adapter).shape[0]
        cache = next((kwargs[k] for k in _CACHE_KEYS if kwargs.get(k) is not None), None)
        past = int(cache.get_seq_length()) if cache is not None else 0
        mask, pos_ids = kwargs.get("attention_mask"), kwargs.get("position_ids")
        if mask is not None and mask.dim() != 2:
            raise ValueError("DePT needs a 2-D attention mask (or none)")
        device = ref.device
        # text positions of the q new tokens, counted from the first real token
        if pos_ids is not None:
            text_pos = pos_ids.expand(batch, -1)
        elif mask is not None:
            text_pos = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -q:]
        else:
            text_pos = (torch.arange(q, device=device) + max(past - m, 0)).unsqueeze(0).expand(batch, -1)
        emb = layer.embed(ids, embeds, text_pos, adapter)
        kwargs["input_ids"] = None
        if past == 0:  # prefill: the prompt goes in front
            prompt = layer.prompt(adapter).to(emb.dtype).unsqueeze(0).expand(batch, -1, -1)
            emb = torch.cat([prompt, emb], dim=1)
            if mask is not None:
                mask = torch.cat([mask.new_ones(batch, m), mask], dim=1)
            first = torch.arange(m, device=device).unsqueeze(0).expand(batch, -1)
            kwargs["position_ids"] = torch.cat([first, text_pos + m], dim=1)
            module._dept_prepended = m
        else:  # the prompt is in the cache already
            if mask is not None and mask.shape[1] == past - m + q:
                mask = torch.cat([mask.new_ones(batch, m), mask], dim=1)
            kwargs["position_ids"] = text_pos + m
        kwargs["inputs_embeds"] = emb
        if mask is not None:
            kwargs["attention_mask"] = mask
        return args, kwargs

    def _after(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output):
        m = getattr(module, "_dept_prepended", 0)
        module._dept_prepended = 0
        if not m:
            return output
        if isinstance(output, tuple):
            return (output[0][:, m:],) + output[1:]
        output.last_hidden_state = output.last_hidden_state[:, m:]
        if getattr(output, "hidden_states", None) is not None:
            output.hidden_states = tuple(h[:, m:] for h in output.hidden_states)
        return output

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        pass  # parameters stay fp32; `embed` casts the offset to the embedding dtype

    def _unload_and_optionally_merge(self, merge=True, progressbar: bool = False, safe_merge: bool = False,
                                     adapter_names: Optional[list[str]] = None):
        if merge:
            raise ValueError("DePT cannot be merged: its soft prompt is an extra input, not a change of weights")
        model = super()._unload_and_optionally_merge(merge=False, progressbar=progressbar, safe_merge=safe_merge,
                                                     adapter_names=adapter_names)
        for handle in getattr(self, "_dept_handles", None) or []:
            handle.remove()
        self._dept_handles, self._dept_layers = [], []
        return model
