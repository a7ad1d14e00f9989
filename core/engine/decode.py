"""The decode loop of the prefix-cache path: rows (suffix ids after a cached prefix) decoded together until
each ends (EOS, a stop string or its token limit), greedy with prompt-lookup speculation or sampled.

`PrefixDecoder(...).run()` reads as its steps: `_start` (drop rows with nothing to decode, prefill the
suffixes), then per step `_accept` (check each row's drafts against the model's tokens, keep what
agrees plus one token of the model's own), `_compact` (drop finished rows once half the batch has
finished), `_next_input` (each row's next token and its new drafts) and `_forward`.
"""

from __future__ import annotations

from typing import Any

import torch

from .caches import left_pad, with_room
from .nucleus import greedy_tokens, sample_rows
from .options import GenerationOptions
from .speculation import Drafter


def stop_ids(model, tokenizer) -> set[int]:
    """The ids that end a row: the tokenizer's EOS and every id the model's generation config stops at
    (instruct models list several: Llama 3's <|end_of_text|>, <|eom_id|> and <|eot_id|>)."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def pick_tokens(logits: torch.Tensor, options: GenerationOptions, generator: torch.Generator) -> torch.Tensor:
    """Sample one token per row (temperature, then top-p; `nucleus.sample_rows`), the rows drawing from
    `generator` in order."""
    tokens = sample_rows(logits, options.temperature, options.top_p, [generator] * logits.shape[0])
    return torch.tensor(tokens, dtype=torch.long, device=logits.device)


def cut_at_stop(text: str, stops: list[str]) -> str:
    cut = len(text)
    for s in stops:
        j = text.find(s)
        if j != -1:
            cut = min(cut, j)
    return text[:cut]


class PrefixDecoder:
    """Decode every row until EOS, a stop string or its limit; `run()` returns the texts.

    Greedy decoding speculates with prompt lookup (see `GenerationOptions.lookahead`): a row's draft
    tokens are fed after its last token, the forward pass's argmax at each position verifies them, and
    the row keeps the agreeing drafts plus the model's own next token, which is what one-token steps
    would have produced. Rejected drafts stay in the cache, masked out, so rows never need realigning.

    With `shared`, `cache` and `prefix_mask` cover only the rows' private tokens (prefix extensions,
    suffix, output); the roots' K/V are read in place by the cascade attention (`attention.py`).
    """

    def __init__(self, model, tokenizer, cache, prefix_mask: torch.Tensor, rows: list[list[int]],
                 options: GenerationOptions, limits: list[int] | None = None,
                 contexts: list[list[int]] | None = None, shared: Any = None, stats: dict[str, int] | None = None):
        self.model, self.tokenizer, self.cache, self.shared = model, tokenizer, cache, shared
        self.options = options
        self.device = next(model.parameters()).device
        self.pad = tokenizer.pad_token_id
        self.eos = stop_ids(model, tokenizer)
        self.limits = limits or [options.max_new_tokens] * len(rows)
        self.lookahead = 0 if options.do_sample else max(0, options.lookahead)
        self.contexts = contexts
        self.stats = stats if stats is not None else {"forwards": 0, "tokens": 0, "drafted": 0, "accepted": 0}
        self.produced: list[list[int]] = [[] for _ in rows]
        prefix_len = prefix_mask.shape[1]
        self.input_ids, suffix_mask = left_pad(rows, self.pad, self.device)
        self.mask = torch.cat([prefix_mask.to(self.device), suffix_mask], dim=1)
        with_room(cache, self.input_ids.shape[1] + max(self.limits) * (2 if self.lookahead else 1)
                  + self.lookahead + 1)
        positions = shared.positions(self.mask) if shared else (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.positions = positions[:, prefix_len:]
        self.generator = torch.Generator(device="cpu")
        if options.seed is not None:
            self.generator.manual_seed(options.seed)
        self.row_generators = None  # per-row seeds: a row's samples do not depend on its batch
        if options.do_sample and options.row_seeds is not None:
            if len(options.row_seeds) != len(rows):
                raise ValueError(f"{len(options.row_seeds)} row seeds for {len(rows)} rows")
            self.row_generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in options.row_seeds]

    def run(self) -> list[str]:
        logits = self._start()
        while logits is not None:
            next_tokens = self._accept(logits)
            if all(self.done):
                break
            next_tokens = self._compact(next_tokens)
            logits = self._forward(*self._next_input(next_tokens))
        texts = [self.tokenizer.decode(p, skip_special_tokens=True) for p in self.produced]
        return [cut_at_stop(t, self.options.stop) for t in texts] if self.options.stop else texts

    # ---- steps -----------------------------------------------------------------------------------
    def _forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, keep: int) -> torch.Tensor:
        """Logits of the last `keep` positions; the cache grows by the input's width."""
        if self.shared is not None:  # the cascade reads the private mask from `shared`; no 4D mask is built
            self.shared.mask = self.mask
            return self.model(input_ids=input_ids, position_ids=position_ids, cache=self.cache, use_cache=True,
                              logits_to_keep=keep, shared_prefix=self.shared).logits
        return self.model(input_ids=input_ids, attention_mask=self.mask, position_ids=position_ids, cache=self.cache,
                          use_cache=True, logits_to_keep=keep).logits

    def _select(self, keep: list[int]) -> None:
        """Keep these batch positions in the cache, masks and positions."""
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        if self.shared is not None:
            self.shared.select(keep)

    def _start(self) -> torch.Tensor | None:
        """Rows with a zero limit leave at once; the rest prefill their suffixes. `self.rows[j]` is the row
        at batch position j from here on."""
        self.rows = [i for i in range(len(self.produced)) if self.limits[i] > 0]
        if not self.rows:
            return None
        if len(self.rows) < len(self.produced):
            index = torch.tensor(self.rows, dtype=torch.long, device=self.device)
            self.input_ids, self.positions = self.input_ids[index], self.positions[index]
            self._select(self.rows)
        self.drafter = Drafter([list(self.contexts[i]) for i in self.rows]
                               if self.contexts and self.lookahead else None)
        self.done = [False] * len(self.rows)
        self.drafts: list[list[int]] = [[] for _ in self.rows]
        self.step_width = 1
        logits = self._forward(self.input_ids, self.positions, 1)
        self.last_position = self.positions[:, -1].clone()
        return logits

    def _accept(self, logits: torch.Tensor) -> list[int]:
        """Each live row keeps its agreeing drafts and the model's next token (stopping at EOS, a stop
        string or its limit); the rejected drafts' cache slots are masked out. Returns each row's next
        input token."""
        o, stats = self.options, self.stats
        if o.do_sample and self.row_generators is not None:
            predicted = [[int(pick_tokens(logits[j:j + 1, 0, :], o, self.row_generators[row])[0])] if not self.done[j]
                         else [self.pad] for j, row in enumerate(self.rows)]
        elif o.do_sample:
            predicted = [[t] for t in pick_tokens(logits[:, 0, :], o, self.generator).tolist()]
        else:
            predicted = greedy_tokens(logits).tolist()
        next_tokens = [self.pad] * len(self.rows)
        for j, row in enumerate(self.rows):
            if self.done[j]:
                continue
            model_tokens, draft = predicted[j], self.drafts[j]
            agreed = 0
            while agreed < len(draft) and draft[agreed] == model_tokens[agreed]:
                agreed += 1
            stats["drafted"] += len(draft)
            stats["accepted"] += agreed
            if agreed < len(draft):
                first = self.mask.shape[1] - self.step_width + 1
                self.mask[j, first + agreed:first + len(draft)] = 0
            self.last_position[j] += agreed
            out = self.produced[row]
            for token in model_tokens[:agreed + 1]:
                if token in self.eos:
                    self.done[j] = True
                    break
                out.append(token)
                stats["tokens"] += 1
                if self.drafter.on:
                    self.drafter.push(j, token)
                if len(out) >= self.limits[row] or (
                        o.stop and any(s in self.tokenizer.decode(out[-16:]) for s in o.stop)):
                    self.done[j] = True
                    break
            next_tokens[j] = model_tokens[agreed]
        return next_tokens

    def _compact(self, next_tokens: list[int]) -> list[int]:
        """Finished rows stay in the batch (fed padding) until half of it has finished, then leave it:
        compacting copies the whole cache, so doing it at every finish would cost more than the wasted
        rows do."""
        finished = sum(self.done)
        if not finished or finished * 2 < len(self.rows):
            return next_tokens
        keep = [j for j in range(len(self.rows)) if not self.done[j]]
        self._select(keep)
        self.last_position = self.last_position[torch.tensor(keep, dtype=torch.long, device=self.device)]
        self.rows = [self.rows[j] for j in keep]
        self.drafter.select(keep)
        self.done = [False] * len(self.rows)
        return [next_tokens[j] for j in keep]

    def _next_input(self, next_tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Each row's next token followed by its drafts (as many as fit `step_tokens`), the mask grown by
        them, and their positions."""
        n = len(self.rows)
        width = min(self.lookahead, self.options.step_tokens // n - 1) if self.drafter.on else 0
        self.drafts = [[] if self.done[j] or width <= 0 else
                       self.drafter.draft(j, min(width, self.limits[row] - len(self.produced[row]) - 1))
                       for j, row in enumerate(self.rows)]
        self.step_width = 1 + max(len(d) for d in self.drafts)
        tokens = torch.full((n, self.step_width), self.pad, dtype=torch.long)  # host: filled per row, one copy
        new_mask = torch.zeros((n, self.step_width), dtype=self.mask.dtype)  # host: as tokens
        for j, draft in enumerate(self.drafts):
            tokens[j, 0] = next_tokens[j]
            tokens[j, 1:1 + len(draft)] = torch.tensor(draft, dtype=torch.long)  # host: into the host buffer
            new_mask[j, :1 + len(draft)] = 1
        self.mask = torch.cat([self.mask, new_mask.to(self.device)], dim=1)
        positions = self.last_position.view(-1, 1) + 1 + torch.arange(self.step_width, device=self.device).view(1, -1)
        self.last_position = self.last_position + 1
        self.stats["forwards"] += 1
        return tokens.to(self.device), positions, self.step_width
