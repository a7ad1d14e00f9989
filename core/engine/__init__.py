"""Inference engine: one base model, several named adapters, batched generation.

    engine = Engine.from_pretrained("builtin:tiny", {"a": "runs/x", "b": "runs/y"})
    engine.generate(["prompt 1", "prompt 2"], adapter="a")              # one adapter for the batch
    engine.generate(["prompt 1", "prompt 2"], adapter=["a", "b"])       # one adapter per row (mixed batch)
    engine.chat([[{"role": "user", "content": "..."}]])                 # the first adapter loaded
    engine.generate(["prompt"], adapter="__base__")                     # the base model alone

Rows are left-padded, sorted by length into batches so padding stays small, and decoded until EOS,
a stop string or `max_new_tokens`. Greedy by default; `do_sample=True` with temperature/top_p samples.

Many prompts over a few long shared prefixes (an app asking several questions about each document):

    doc = engine.encode_prefix(doc_ids)                          # the document's KV cache, once
    rel = engine.extend_prefixes([(doc, more_ids)])[0]           # a longer prefix built on it
    engine.generate_prefixed([("d", suffix_ids), ("r", ...)], {"d": doc, "r": rel})

or, planned by the core, `PrefixTree` (`prefix_tree.py`): calls name the prefixes they may start with.
There, a batch's cache holds only each row's own tokens and attention reads each prefix's K/V in
place (`attention._cascade_attention`); greedy rows speculate with prompt lookup (`GenerationOptions.lookahead`);
rows leave the batch when they finish. The root prefixes an engine encodes stay in its prefix cache
(`prefix_cache.py`) after the call: a later call whose prefix starts with their blocks computes only
the rest.

One concern per module:

    engine.py        Engine: the public generate API (chat, generate, generate_ids, the prefix API, borrow)
    loading.py       the base model and named adapters, from a recipe, an adapter folder or a name
    options.py       GenerationOptions, Prefix
    decode.py        PrefixDecoder: the decode loop of the prefix path, as named steps
    speculation.py   Drafter: prompt-lookup drafts
    attention.py     the attention routing: shared-prefix (cascade) attention, SDPA with grouped KV heads
                     (a decoding step by runs of rows, from each run's first used column)
    native.py        C kernels built with the machine's compiler at first use: a decoding step's attention
                     (decode_attention.c; SDPA where it cannot be built), bfloat16 linear products of a
                     few rows on CPUs without AMX (linear_bf16.c; oneDNN where it cannot be built)
    lora_batch.py    rows of several LoRA adapters in one pass: dense matmuls over the stacked adapters
    matmuls.py       on the CPU: bfloat16 linear rows in buckets (oneDNN compiles per shape), prefill
                     products in float32 and decoding ones on native.py's kernel where the CPU has no AMX,
                     the output layer's input packed
    caches.py        root prefixes encoded in batches, batch caches from prefix caches, growing cache layers
    scope.py         AdapterScope: one named adapter active (or none: the base) for a block
    prefix_tree.py   PrefixTree: the core's prefix planner
    prefix_cache.py  PrefixCache: the KV of prompt prefixes kept across calls and requests, in blocks, LRU
"""

from .engine import Engine
from .loading import adapter_base_config
from .options import BASE, GenerationOptions, Prefix
from .prefix_tree import PrefixTree
from .speculation import Drafter

__all__ = ["BASE", "Drafter", "Engine", "GenerationOptions", "Prefix", "PrefixTree", "adapter_base_config"]
