"""The inference engine's prefix-cache path: shared prefixes, several prefixes per batch and prompt-lookup
speculation all give what plain one-prompt-at-a-time greedy generation gives."""

import os

import pytest
import torch


@pytest.fixture(scope="module")
def engine(tiny_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peft_apps.core.engine import Engine

    torch.manual_seed(0)
    return Engine(AutoModelForCausalLM.from_pretrained(tiny_path), AutoTokenizer.from_pretrained(tiny_path))


def _ids(engine, text):
    return engine.tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("shared", [True, False], ids=["shared-prefix-attention", "copied-prefixes"])
@pytest.mark.parametrize("lookahead", [0, 10])
def test_prefixed_batches_equal_single_generation(engine, lookahead, shared, monkeypatch):
    assert engine.shared_attention  # available for this model; turned off to test the fallback
    monkeypatch.setattr(engine, "shared_attention", shared)
    docs = ["the cat sat on the mat and the cat sat on the mat again", "red green blue red green blue red green"]
    asks = [" Which animal?", " Which colour comes after red?", " Say it twice:", " Repeat:"]
    prefixes = {k: engine.encode_prefix(_ids(engine, d)) for k, d in enumerate(docs)}
    # a longer prefix built on the first: "... again Which" shared by two questions
    prefixes[2] = engine.extend_prefixes([(prefixes[0], _ids(engine, docs[0] + " Which")[len(prefixes[0]):])])[0]
    assert (prefixes[2].root is prefixes[0]) == shared
    assert engine.extend_prefixes([(prefixes[1], [])])[0].ids == prefixes[1].ids
    rows, whole = [], []
    for k, d in enumerate(docs):
        for a in asks:
            full, pre = _ids(engine, d + a), prefixes[k].ids
            assert full[:len(pre)] == pre  # no BPE merge across the cut in this test's texts
            rows.append((k, full[len(pre):]))
            whole.append(full)
    for a in asks[:2]:
        full = _ids(engine, docs[0] + a)
        assert full[:len(prefixes[2])] == prefixes[2].ids
        rows.append((2, full[len(prefixes[2]):]))
        whole.append(full)
    limits = [5, 30, 17, 40] * 2 + [12, 25]
    engine.decode_stats.update(forwards=0, tokens=0, drafted=0, accepted=0)
    got = engine.generate_prefixed(rows, prefixes, max_new_tokens_per_row=limits, batch_size=8, lookahead=lookahead)
    want = [engine.generate_ids([w], max_new_tokens=n, batch_size=1)[0] for w, n in zip(whole, limits)]
    assert got == want
    st = engine.decode_stats
    assert st["tokens"] > 0
    if lookahead:  # drafts were made and some accepted, so fewer forward passes than tokens
        assert st["accepted"] > 0 and st["forwards"] < st["tokens"] / 2
    else:
        assert st["drafted"] == 0


def test_batched_root_encoding_and_many_single_row_roots_equal_single_generation(engine):
    """Roots encoded in one left-padded batch hold the K/V of each encoded alone; a batch whose rows each
    extend a root of their own (a diff's hunks) reads those roots in one padded call, with the same
    outputs as generating each prompt alone."""
    docs = ["the cat sat on the mat and the cat sat", "red green blue", "one two three four five six seven eight nine",
            "a b c d e f g h i j k l m n o p", "hello"]
    rows = [_ids(engine, d) for d in docs]
    batched = engine.encode_prefixes(rows, max_tokens=10_000)
    alone = [engine.encode_prefix(r) for r in rows]
    for b, a in zip(batched, alone):
        assert b.ids == a.ids and b.root is None
        for lb, la in zip(b.cache.layers, a.cache.layers):
            assert lb.keys.shape == la.keys.shape
            torch.testing.assert_close(lb.keys, la.keys, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(lb.values, la.values, rtol=1e-5, atol=1e-5)
    asks = [" Which animal?", " Next colour:", " Count on:", " Letters:", " Say hi"]
    prefixes = dict(enumerate(alone))
    calls = [(k, _ids(engine, d + a)) for k, (d, a) in enumerate(zip(docs, asks))]
    assert all(full[:len(prefixes[k])] == prefixes[k].ids for k, full in calls)
    limits = [9, 20, 14, 25, 6]
    got = engine.generate_prefixed([(k, full[len(prefixes[k]):]) for k, full in calls], prefixes,
                                   max_new_tokens_per_row=limits, batch_size=8, lookahead=4)
    want = [engine.generate_ids([full], max_new_tokens=n, batch_size=1)[0] for (_, full), n in zip(calls, limits)]
    assert got == want


def test_prefixed_sampling_is_seeded_and_stop_strings_cut(engine):
    pre = engine.encode_prefix(_ids(engine, "the cat sat on the mat and the cat sat on the mat"))
    rows = [(0, _ids(engine, "the cat sat on the mat and the cat sat on the mat again")[len(pre):])] * 3
    kw = dict(max_new_tokens=20, do_sample=True, temperature=2.0, seed=3, batch_size=4)
    a = engine.generate_prefixed(rows, {0: pre}, **kw)
    assert a == engine.generate_prefixed(rows, {0: pre}, **kw)
    assert len(set(a)) > 1  # rows sample independently
    greedy = engine.generate_prefixed(rows[:1], {0: pre}, max_new_tokens=20)[0]
    assert len(greedy) > 4
    stop = greedy[2:4]
    cut = engine.generate_prefixed(rows[:1], {0: pre}, max_new_tokens=20, stop=[stop])[0]
    assert cut == greedy[:greedy.find(stop)]


def test_drafter_finds_latest_ngram_continuation():
    from peft_apps.core.engine import Drafter

    d = Drafter([[1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3]])
    assert d.draft(0, 3) == [7, 8, 5]  # the latest earlier "1 2 3" was followed by 7 8 5
    d.push(0, 7)
    assert d.draft(0, 2) == [8, 5]
    assert Drafter([[4, 5, 6]]).draft(0, 4) == []  # no earlier occurrence of the last token


def test_attention_lse_math_path_matches_cpu_kernel():
    """The fallback used off the CPU (and for fp16) gives the CPU flash kernel's output and log-sum-exp,
    including rows whose keys are all masked (they must merge with weight 0, not NaN)."""
    from peft_apps.core.engine.attention import _attention_lse

    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 5, 16), torch.randn(3, 2, 7, 16), torch.randn(3, 2, 7, 16)
    bias = torch.zeros(3, 1, 5, 7)
    bias[0, 0, 1] = torch.finfo(torch.float32).min
    bias[1, 0, :, 4:] = torch.finfo(torch.float32).min
    o1, l1 = _attention_lse(q, k, v, bias, 0.25)
    o2, l2 = _attention_lse(q.double(), k.double(), v.double(), bias.double(), 0.25)  # not the CPU kernel
    seen = torch.ones(3, 5, dtype=torch.bool)
    seen[0, 1] = False  # that query sees no key: its output is arbitrary but finite, its LSE hugely negative
    assert torch.allclose(o1.transpose(1, 2)[seen], o2.float().transpose(1, 2)[seen], atol=1e-5)
    assert torch.allclose(l1.transpose(1, 2)[seen], l2.float().transpose(1, 2)[seen], atol=1e-4)
    for lse, out in ((l1, o1), (l2, o2)):
        assert lse[0, :, 1].max() < -1e30 and torch.isfinite(out).all()


def test_row_seeded_samples_do_not_depend_on_the_batch(engine):
    """With one seed per row, k samples of one prompt drawn as one batch over its cached prefix equal the
    same samples drawn one call at a time (what self-consistency's benchmark compares)."""
    from peft_apps.core.engine import GenerationOptions, PrefixTree

    prompts = [_ids(engine, "the cat sat on the mat and"), _ids(engine, "one two three four")]
    o = GenerationOptions(max_new_tokens=12, do_sample=True, temperature=1.5, top_p=0.95, batch_size=16)
    tree = PrefixTree(engine)
    tree.roots({i: p[:-1] for i, p in enumerate(prompts)})
    calls = [(((i,)), p) for i, p in enumerate(prompts) for _ in range(4)]
    seeds = [1000 + j for j in range(len(calls))]
    batched = tree.generate(calls, options=GenerationOptions(**{**o.__dict__, "row_seeds": seeds}))
    assert tree.whole_calls == []  # every call decoded over its cached prompt
    alone = [tree.generate([c], options=GenerationOptions(**{**o.__dict__, "row_seeds": [s]}))[0]
             for c, s in zip(calls, seeds)]
    assert batched == alone
    assert len(set(batched[:4])) > 1  # different seeds, different samples


def test_rows_grouped_by_root_in_order_of_first_use():
    """A batch's rows are ordered by their roots' first use, not by where the caches lie in memory, so a
    sampler shared by the batch draws the same tokens for the same rows on every run."""
    from peft_apps.core.engine.caches import grouped_by_root
    from peft_apps.core.engine.options import Prefix

    a, b, c = Prefix([1]), Prefix([2]), Prefix([3])
    rows = [Prefix([2, 5], root=b), a, Prefix([3, 4], root=c), Prefix([1, 7], root=a), b, Prefix([2, 9], root=b)]
    assert grouped_by_root(rows) == [0, 4, 5, 1, 3, 2]


def test_root_prefixes_reuse_earlier_calls_blocks_and_give_the_same_text(engine):
    """The engine's prefix cache outlives a PrefixTree: a second call whose roots start with an earlier
    call's computes only the tokens after the shared blocks, and every text equals whole-prompt greedy
    generation; with the cache off nothing is kept."""
    from peft_apps.core.engine import PrefixTree
    from peft_apps.core.engine.prefix_cache import PrefixCache

    head = "Review this python change in the module and answer yes or no . " * 3
    hunks = ["def add(a, b):\n    return a + b\n", "x = [i for i in range(10)]\n", "import os\nprint(os.sep)\n"]
    engine.prefix_cache = PrefixCache(64 << 20)
    texts = {}
    for call in range(2):
        tree = PrefixTree(engine)
        roots = {i: _ids(engine, head + h) for i, h in enumerate(hunks)}
        tree.roots(roots)
        calls = [((i,), roots[i] + _ids(engine, " Answer:")) for i in roots]
        texts[call] = tree.generate(calls, options=None)
        assert tree.whole_calls == []
        for (_, ids), text in zip(calls, texts[call]):
            assert text == engine.generate_ids([ids], max_new_tokens=128)[0]
    report = engine.prefix_cache.report()
    assert report["misses"] == len(hunks) and report["hits"] == len(hunks)
    common = len(os.path.commonprefix([_ids(engine, head + h) for h in hunks]))
    assert report["tokens_saved"] >= len(hunks) * (common // 16) * 16 > 0
    engine.prefix_cache = PrefixCache(0)
    PrefixTree(engine).roots({0: _ids(engine, head + hunks[0])})
    assert len(engine.prefix_cache) == 0 and engine.prefix_cache.report()["hits"] == 0


def test_running_batch_joins_and_leaves_without_copying_the_batch(monkeypatch):
    """Rows joining (shorter and longer than the batch) and leaving: the slot cache's rows equal the plain
    left-padded batch, row for row, in the order the batch reports. The slot buffers are allocated
    unfilled (filled with NaN here): every column the batch's view shows, padding included, must have been
    written, since a masked column is still multiplied by zero."""
    from transformers.cache_utils import DynamicCache

    from peft_apps.core.serve.batch import RunningBatch

    monkeypatch.setattr(torch.Tensor, "new_empty",
                        lambda self, size, **kw: torch.full(tuple(size), float("nan"), dtype=self.dtype, device=self.device))
    torch.manual_seed(0)

    def pass_cache(lengths):
        width = max(lengths)
        cache = DynamicCache()
        mask = torch.zeros((len(lengths), width), dtype=torch.long)
        keys = torch.zeros((len(lengths), 2, width, 4))
        for j, n in enumerate(lengths):
            keys[j, :, width - n:] = torch.randn(2, n, 4)
            mask[j, width - n:] = 1
        for li in range(2):
            cache.update(keys * (li + 1), -keys * (li + 1), li)
        return cache, mask, keys

    batch = RunningBatch(capacity=2, room=2)
    want: dict[str, torch.Tensor] = {}
    names = iter("abcdefghij")
    for lengths, leave in [([3, 5], []), ([9], ["a"]), ([2, 4, 3], ["c", "d"]), ([12], []), ([], ["b", "e", "f"])]:
        if lengths:
            cache, mask, keys = pass_cache(lengths)
            rows = [next(names) for _ in lengths]
            for j, r in enumerate(rows):
                want[r] = keys[j, :, mask[j].bool()]
            batch.join(rows, cache, torch.arange(len(rows)), mask, mask.sum(1) - 1, [0] * len(rows))
        if leave:
            batch.select([j for j, r in enumerate(batch.rows) if r not in leave])
            for r in leave:
                want.pop(r)
        # one decoding step: a column for every row
        n = len(batch.rows)
        batch.mask = torch.cat([batch.mask, torch.ones((n, 1), dtype=torch.long)], dim=1)
        step = torch.randn(n, 2, 1, 4)
        for li, layer in enumerate(batch.cache.layers):
            layer.update(step * (li + 1), -step * (li + 1))
        for j, r in enumerate(batch.rows):
            want[r] = torch.cat([want[r], step[j]], dim=1)
        assert sorted(batch.rows) == sorted(want)
        for li, layer in enumerate(batch.cache.layers):
            assert layer.keys.shape[:3] == (n, 2, batch.mask.shape[1])
            for j, r in enumerate(batch.rows):
                got = layer.keys[j][:, batch.mask[j].bool()]
                assert torch.equal(got, want[r] * (li + 1)) and torch.equal(layer.values[j][:, batch.mask[j].bool()], -got)
                assert torch.isfinite(layer.keys[j]).all()


def test_a_prefix_found_in_part_leaves_its_own_blocks_for_the_next_call(engine):
    """A root that starts with cached blocks computes the rest, and stores the rest's blocks too: the same
    root asked again is found whole."""
    from peft_apps.core.engine import PrefixTree
    from peft_apps.core.engine.prefix_cache import PrefixCache

    head = "Review this python change in the module and answer yes or no . " * 3
    engine.prefix_cache = PrefixCache(64 << 20)
    PrefixTree(engine).roots({0: _ids(engine, head + "x = 1\n")})
    root = _ids(engine, head + "def add(a, b):\n    return a + b\n" * 4)
    for _ in range(2):
        PrefixTree(engine).roots({0: root})
    saved = [engine.prefix_cache.report()["tokens_saved"]]
    PrefixTree(engine).roots({0: root})
    saved.append(engine.prefix_cache.report()["tokens_saved"])
    assert saved[1] - saved[0] == (len(root) - 1) // 16 * 16  # whole: every full block but a last token
    engine.prefix_cache = PrefixCache(0)
