"""A KV cache of token prefixes that outlives the request: blocks of `block` tokens, keyed by adapter and
the ids of every token up to the block's end, evicted least recently used past a memory budget.

The server's scheduler looks each new row up before its prefill (only the tokens after the longest cached
chain of blocks are computed) and stores the full blocks of every prompt it computes, so requests that
repeat an app's instructions, a document asked several questions, hunks of one file or k votes of one
question compute their shared tokens once across requests, as vLLM's automatic prefix caching and SGLang's
RadixAttention do.

    cache = PrefixCache(budget_bytes=512 << 20)
    n, kv = cache.lookup("review", ids)        # n cached tokens (a multiple of `block`), per-layer (K, V)
    cache.store("review", ids, kv_of_ids)      # the full blocks of ids not cached yet

Keys. A block's key is a digest of its parent block's key, the adapter's name and its own token ids, so a
block stands for the whole prefix that ends with it: two prompts share a block only when every token
before it and the adapter are the same. Adapters whose KV could be shared (none: each adapter changes the
keys and values) are never mixed; methods that cannot decode over a cached prefix (prompt tuning, virtual
tokens) never reach the cache (the scheduler generates them whole).

Eviction. Least recently used first, a chain's last block before its first (a lookup touches a chain from
its end to its root), and with a block every block after it (they could no longer be reached). A prompt
whose blocks alone exceed the budget is not stored: it runs uncached, and nothing is evicted for it.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

ROOT = b""


@dataclass(eq=False)
class Block:
    key: bytes
    parent: bytes
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (keys, values), each [1, heads, block, dim]
    nbytes: int
    children: set[bytes] = field(default_factory=set)


def block_key(parent: bytes, adapter: str, tokens: list[int]) -> bytes:
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(adapter.encode())
    h.update(b"\0")
    h.update(array("q", tokens).tobytes())
    return h.digest()


def default_budget_mb(device: torch.device | str = "cpu") -> int:
    """The budget when none is given: a quarter of the GPU's free memory, or an eighth of the available RAM,
    at most 4 GiB either way."""
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(min(free / 4, 4 << 30)) >> 20
    try:
        import psutil

        available = psutil.virtual_memory().available
    except Exception:  # psutil missing or restricted: a modest fixed budget
        available = 4 << 30
    return int(min(available / 8, 4 << 30)) >> 20


class PrefixCache:
    def __init__(self, budget_bytes: int, block: int = 16):
        if block < 1:
            raise ValueError("block must be at least 1")
        self.budget, self.block = int(budget_bytes), block
        self.blocks: OrderedDict[bytes, Block] = OrderedDict()
        self.bytes = 0
        self.stats = {"hits": 0, "misses": 0, "evictions": 0, "tokens_saved": 0, "stored_blocks": 0,
                      "uncached_prompts": 0}

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def _keys(self, adapter: str, ids: list[int], upto: int) -> list[bytes]:
        keys, parent = [], ROOT
        for start in range(0, upto - self.block + 1, self.block):
            parent = block_key(parent, adapter, ids[start:start + self.block])
            keys.append(parent)
        return keys

    def lookup(self, adapter: str, ids: list[int], count: bool = True) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """The longest chain of cached blocks that `ids` starts with, leaving at least one token of `ids`
        to compute (its logits give the first new token): (tokens covered, per-layer (K, V) of those tokens
        concatenated), or (0, None). `count`: add the lookup to hits/misses/tokens_saved."""
        if not self.enabled or len(ids) <= self.block:
            return 0, None
        found: list[Block] = []
        for key in self._keys(adapter, ids, len(ids) - 1):
            b = self.blocks.get(key)
            if b is None:
                break
            found.append(b)
        if count:
            self.stats["hits" if found else "misses"] += 1
            self.stats["tokens_saved"] += len(found) * self.block
        if not found:
            return 0, None
        for b in reversed(found):  # the root most recent: a chain is evicted from its end
            self.blocks.move_to_end(b.key)
        layers = len(found[0].kv)
        kv = [(torch.cat([b.kv[i][0] for b in found], dim=2), torch.cat([b.kv[i][1] for b in found], dim=2))
              for i in range(layers)]
        return len(found) * self.block, kv

    def cached_blocks(self, adapter: str, ids: list[int]) -> int:
        """How many full blocks of `ids` are cached, from the start (no counting, no reordering)."""
        n = 0
        for key in self._keys(adapter, ids, len(ids)):
            if key not in self.blocks:
                break
            n += 1
        return n

    def store(self, adapter: str, ids: list[int], kv: list[tuple[torch.Tensor, torch.Tensor]], offset: int = 0) -> int:
        """Store the full blocks of `ids` not cached yet from `kv`: per layer (K, V) of the tokens from
        `offset` on (batch 1, time on dim 2; the blocks before `offset` must be cached already). Returns how
        many blocks were added."""
        if not self.enabled or not kv:
            return 0
        n = min(len(ids), offset + kv[0][0].shape[2])
        keys = self._keys(adapter, ids, n)
        if not keys:
            return 0
        per_token = sum(k[:, :, :1].numel() * k.element_size() + v[:, :, :1].numel() * v.element_size() for k, v in kv)
        if per_token * self.block * len(keys) > self.budget:
            self.stats["uncached_prompts"] += 1
            return 0
        added, parent = 0, ROOT
        chain: list[bytes] = []
        for i, key in enumerate(keys):
            if key not in self.blocks:
                if i * self.block < offset:  # its keys and values were not given: the chain stops here
                    break
                s = slice(i * self.block - offset, (i + 1) * self.block - offset)
                b = Block(key, parent, [(k[:, :, s].clone(), v[:, :, s].clone()) for k, v in kv],
                          per_token * self.block)
                self.blocks[key] = b
                self.bytes += b.nbytes
                if parent in self.blocks:
                    self.blocks[parent].children.add(key)
                added += 1
            chain.append(key)
            parent = key
        for key in reversed(chain):
            if key in self.blocks:
                self.blocks.move_to_end(key)
        self.stats["stored_blocks"] += added
        self._evict(keep=set(chain))
        return added

    def _evict(self, keep: set[bytes]) -> None:
        while self.bytes > self.budget and self.blocks:
            victim = next((k for k in self.blocks if k not in keep), None)
            if victim is None:
                victim = next(iter(self.blocks))
            self._drop(victim)

    def _drop(self, key: bytes) -> None:
        b = self.blocks.pop(key, None)
        if b is None:
            return
        self.bytes -= b.nbytes
        self.stats["evictions"] += 1
        parent = self.blocks.get(b.parent)
        if parent is not None:
            parent.children.discard(key)
        for child in list(b.children):
            self._drop(child)

    def clear(self) -> None:
        self.blocks.clear()
        self.bytes = 0

    def report(self) -> dict[str, int | float]:
        """The counters, the blocks and bytes held now, and the budget."""
        return {**self.stats, "blocks": len(self.blocks), "mb": round(self.bytes / (1 << 20), 2),
                "budget_mb": round(self.budget / (1 << 20), 2)}
