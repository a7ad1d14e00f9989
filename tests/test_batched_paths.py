"""The engine's batched paths give what the plain ones give: rows of several LoRA adapters in one pass
(`engine/lora_batch.py`), decoding attention by runs of rows (`serve/batch.py` spans), linear rows in
buckets and the packed output-layer input (`engine/matmuls.py`), sampling probabilities for many rows at
once (the scheduler's `_pick`)."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from helpers.served_runs import make_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_path):
    root = tmp_path_factory.mktemp("lora-runs")
    make_run(root / "a", "sft", 1, rank=4)
    make_run(root / "b", "sft", 2, rank=8)  # another rank: the stack pads to the largest
    c = make_run(root / "c", "sft", 3, rank=4)
    _with_head_copy(c)
    return root


def _with_head_copy(run):
    """Run `run`'s adapter made again with a trained copy of lm_head (`modules_to_save`), changed from the
    base's so that a row under it gets other logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from peft_apps.core.tiny import builtin_model_path

    torch.manual_seed(5)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(builtin_model_path("tiny")),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"],
                                      init_lora_weights=False, task_type="CAUSAL_LM"))
    with torch.no_grad():
        model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(1.5)
    model.save_pretrained(run)


def _engine(runs, names, dtype="float32"):
    from peft_apps.core.engine import Engine

    return Engine.from_pretrained(None, {n: runs / n for n in names}, dtype=dtype)


def _alone(model, ids, names):
    """Each row run by itself under its adapter (peft's own single-adapter path), logits stacked."""
    out = []
    for j, name in enumerate(names):
        if name == "__base__":
            with model.disable_adapter():
                out.append(model(input_ids=ids[j:j + 1]).logits)
        else:
            model.set_adapter(name)
            out.append(model(input_ids=ids[j:j + 1]).logits)
    return torch.cat(out)


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "gathered"])
def test_rows_of_several_adapters_in_one_pass_equal_each_alone(runs, dense, monkeypatch):
    from peft_apps.core.engine import lora_batch

    if not dense:
        monkeypatch.setattr(lora_batch, "DENSE_MAX", 0)
    engine = _engine(runs, ["a", "b"])
    model = engine.model
    assert model._peft_apps_rows  # plain LoRA only: the layers read the rows' adapters themselves
    torch.manual_seed(0)
    # 12 tokens a row: every adapter's projection for every row; 20 (prefill): each run of rows its own
    for width, names in ((12, ["a", "b", "__base__", "b", "a"]), (20, ["a", "a", "b", "__base__", "b"])):
        ids = torch.randint(3, 200, (5, width))
        with torch.inference_mode():
            alone = _alone(model, ids, names)
            with lora_batch.rows_of_adapters(model, names) as route:
                assert route == {}
                routed = model(input_ids=ids, **route).logits
            by_kwarg = model(input_ids=ids, adapter_names=names).logits  # peft's argument reaches the same layers
            torch.testing.assert_close(routed, alone, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(by_kwarg, alone, atol=2e-5, rtol=1e-5)
    with torch.inference_mode():
        # a weight changed in place (its version counter moves): the stack is built again
        layer = next(m for m in model.modules() if hasattr(m, "_peft_apps_stacks"))
        layer.lora_B["a"].weight.mul_(3.0)
        alone = _alone(model, ids, names)
        with lora_batch.rows_of_adapters(model, names) as route:
            torch.testing.assert_close(model(input_ids=ids, **route).logits, alone, atol=2e-5, rtol=1e-5)


def test_adapters_with_copied_modules_keep_peft_routing_and_equal_each_alone(runs):
    from peft_apps.core.engine import lora_batch

    engine = _engine(runs, ["a", "c"])  # c trains a copy of lm_head: only peft knows which copy a row takes
    model = engine.model
    assert not model._peft_apps_rows
    ids = torch.randint(3, 200, (3, 10))
    names = ["c", "a", "c"]
    with torch.inference_mode():
        alone = _alone(model, ids, names)
        with lora_batch.rows_of_adapters(model, names) as route:
            assert route == {"adapter_names": names}
            torch.testing.assert_close(model(input_ids=ids, **route).logits, alone, atol=2e-5, rtol=1e-5)


def test_bfloat16_rows_of_several_adapters_follow_peft_within_its_precision(runs):
    from peft_apps.core.engine import lora_batch

    engine = _engine(runs, ["a", "b"], dtype="bfloat16")
    model = engine.model
    ids = torch.randint(3, 200, (4, 40))  # 160 token rows: bfloat16 LoRA matmuls (a decoding step's few: float32)
    names = ["a", "b", "b", "a"]
    with torch.inference_mode():
        alone = _alone(model, ids, names).float()
        with lora_batch.rows_of_adapters(model, names) as route:
            routed = model(input_ids=ids, **route).logits.float()
            step = model(input_ids=ids[:, :1], **route).logits.float()
    assert (routed - alone).abs().max() < 0.1 * alone.abs().max()
    assert (routed.argmax(-1) == alone.argmax(-1)).float().mean() > 0.9
    assert (step[:, 0] - alone[:, 0]).abs().max() < 0.1 * alone.abs().max()


def test_attention_spans_read_the_fewest_keys():
    from peft_apps.core.serve.batch import attention_spans

    rng = random.Random(0)
    for _ in range(40):
        n, width = rng.randint(1, 7), 300
        first = [rng.choice([0, 5, 100, 150, 290]) for _ in range(n)]
        spans = attention_spans(first, width, call_cost=50)
        assert [a for a, _, _ in spans] == [0] + [z for _, z, _ in spans[:-1]] and spans[-1][1] == n
        assert all(col == min(first[a:z]) for a, z, col in spans)
        cost = sum(50 + (z - a) * (width - col) for a, z, col in spans)
        best = min(sum(50 + (z - a) * (width - min(first[a:z])) for a, z in zip((0,) + cuts, cuts + (n,)))
                   for k in range(n) for cuts in itertools.combinations(range(1, n), k))
        assert cost == best


def test_running_batch_counts_the_keys_its_attention_reads():
    from peft_apps.core.serve.batch import RunningBatch, attention_spans

    batch = RunningBatch()
    first, width = [0, 290, 5, 150, 299], 300
    batch.mask = torch.arange(width).view(1, width) >= torch.tensor(first).view(-1, 1)
    batch.mask[1, 295] = False  # a hole after the first attended key: still read
    assert batch.keys_read(by_rows=True) == 300 + 10 + 295 + 150 + 1  # each row from its own first key
    spans = attention_spans(first, width)
    assert len(spans) > 1 and batch.spans() == spans  # SDPA: each run of rows from the run's first key
    assert batch.keys_read(by_rows=False) == sum((z - a) * (width - col) for a, z, col in spans) > 756


def test_decoding_attention_by_runs_of_rows_equals_the_whole_width():
    from types import SimpleNamespace

    from peft_apps.core.engine.attention import _sdpa_gqa
    from peft_apps.core.serve.batch import attention_spans

    torch.manual_seed(0)
    b, h, kvh, n, d = 6, 4, 2, 40, 8
    first = [0, 30, 31, 5, 38, 20]
    allowed = torch.arange(n).view(1, n) >= torch.tensor(first).view(b, 1)
    mask = allowed.view(b, 1, 1, n)
    q, k, v = torch.randn(b, h, 1, d), torch.randn(b, kvh, n, d), torch.randn(b, kvh, n, d)
    k[~allowed.view(b, 1, n, 1).expand(b, kvh, n, d)] = 1e4  # padding: large but finite, never read
    module = SimpleNamespace(num_key_value_groups=h // kvh)
    spans = attention_spans(first, n, call_cost=4)
    assert len(spans) > 1
    whole, _ = _sdpa_gqa(module, q, k, v, mask)
    runs, _ = _sdpa_gqa(module, q, k, v, mask, row_spans=spans)
    torch.testing.assert_close(runs, whole)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_attention_row_by_row_equals_the_masked_batch(dtype):
    """A prefill pass's layout (heads right-aligned in the first columns, new tokens right-aligned after
    them): row-by-row causal attention merged with each head's equals the batched masked call, and a row's
    padded query positions come out zero."""
    from types import SimpleNamespace

    from peft_apps.core.engine.attention import _sdpa_gqa

    torch.manual_seed(0)
    h, kvh, d, width_head, width = 4, 2, 16, 12, 9
    parts = [(0, 9), (12, 5), (7, 9), (3, 1)]
    b = len(parts)
    hm = torch.tensor([[c >= width_head - p for c in range(width_head)] for p, _ in parts])
    sm = torch.tensor([[c >= width - n for c in range(width)] for _, n in parts])
    keys_ok = torch.cat([hm, sm], 1)
    causal = torch.ones(width, width_head + width, dtype=torch.bool).tril(width_head)
    mask = (keys_ok.view(b, 1, 1, -1) & causal.view(1, 1, width, -1)) | ~sm.view(b, 1, width, 1)
    q = torch.randn(b, h, width, d, dtype=dtype)
    k, v = torch.randn(b, kvh, width_head + width, d, dtype=dtype), torch.randn(b, kvh, width_head + width, d, dtype=dtype)
    module = SimpleNamespace(num_key_value_groups=h // kvh)
    whole, _ = _sdpa_gqa(module, q, k, v, mask)
    rows, _ = _sdpa_gqa(module, q, k, v, mask, row_parts=parts)
    real = sm.view(b, width, 1, 1).expand_as(whole)
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(rows[real], whole[real], **tol)
    assert not rows[~real].any()


def test_bucketed_linear_rows_and_the_packed_head_input():
    from peft_apps.core.engine.matmuls import _bucketed, bucket, packed

    assert [bucket(m) for m in (1, 17, 64, 65, 250, 257, 1025)] == [1, 17, 64, 80, 256, 320, 1280]
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 48).to(torch.bfloat16)
    for m in (3, 20, 300):
        x = torch.randn(2, m, 64, dtype=torch.bfloat16)[:1]
        got = _bucketed(layer, x)
        assert got.shape == (1, m, 48)
        torch.testing.assert_close(got, torch.nn.functional.linear(x, layer.weight, layer.bias), atol=0.05, rtol=0.02)
    view = torch.randn(1, 7, 64)[:, -1:, :]
    assert view.is_contiguous() and view.stride() != (64, 64, 1)  # what contiguous() leaves alone
    assert packed(view).stride() == (64, 64, 1) and torch.equal(packed(view), view)
    with torch.inference_mode():  # one input read by two layers is padded once, and the same numbers come out
        other = torch.nn.Linear(64, 48).to(torch.bfloat16)
        x = torch.randn(300, 64, dtype=torch.bfloat16)
        first, second = _bucketed(layer, x), _bucketed(other, x)
        x2 = x.clone()
        torch.testing.assert_close(second, _bucketed(other, x2), atol=0, rtol=0)
        torch.testing.assert_close(first, _bucketed(layer, x2), atol=0, rtol=0)
        x2 += 1  # written in place (a tensor that tracks versions): padded again
    x3 = torch.randn(300, 64, dtype=torch.bfloat16)
    before = _bucketed(layer, x3)
    x3.add_(1)
    assert not torch.equal(_bucketed(layer, x3), before)


def test_prepacked_bfloat16_weights_give_plain_linear_numbers_and_follow_weight_changes(monkeypatch):
    from peft_apps.core.engine import matmuls
    from peft_apps.core.engine.matmuls import _can_pack, install_matmuls

    if not _can_pack():
        pytest.skip("this torch has no oneDNN prepacked linear")
    monkeypatch.setattr(matmuls, "_amx", lambda: True)  # oneDNN for every number of rows (no float32 copies)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Linear(48, 32, bias=False)).to(torch.bfloat16)
    assert install_matmuls(model) == 2 and all(m._peft_apps_pack_ok for m in model)
    for m in (1, 7, 20, 300):
        x = torch.randn(m, 64, dtype=torch.bfloat16)
        with torch.no_grad():
            want = torch.nn.functional.linear(torch.nn.functional.linear(x, model[0].weight, model[0].bias),
                                              model[1].weight)
            assert torch.equal(model(x), want)
    assert model[0]._peft_apps_pack is not None
    with torch.no_grad():
        model[0].weight.mul_(2)  # in place: packed again
        x = torch.randn(5, 64, dtype=torch.bfloat16)
        assert torch.equal(model[0](x), torch.nn.functional.linear(x, model[0].weight, model[0].bias))
    y = model[0](x)  # with autograd: the plain path
    assert y.requires_grad


def test_bfloat16_products_of_many_rows_run_in_float32_without_amx(monkeypatch):
    from peft_apps.core.engine import matmuls

    monkeypatch.setenv("PEFT_APPS_NATIVE_LINEAR", "0")  # fewer rows: oneDNN's (the engine's kernel: below)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Linear(48, 32, bias=False)).to(torch.bfloat16)
    monkeypatch.setattr(matmuls, "_amx", lambda: True)
    matmuls.install_matmuls(model)
    assert not any(m._peft_apps_upcast_ok for m in model)  # AMX: oneDNN's bfloat16 kernels throughout
    monkeypatch.setattr(matmuls, "_amx", lambda: False)
    matmuls.install_matmuls(model)
    assert all(m._peft_apps_upcast_ok for m in model)
    layer = model[0]

    def f32(x, weight, bias=None):  # the float32 product of x's rows (not padded: MKL compiles nothing), rounded
        out = torch.nn.functional.linear(x.float(), weight.float(), None if bias is None else bias.float())
        return out.to(torch.bfloat16)

    for m in (1, 20, 63, 64, 300):
        x = torch.randn(m, 64, dtype=torch.bfloat16)
        with torch.inference_mode():
            got = layer(x)
        upcast = f32(x, layer.weight, layer.bias)
        plain = torch.nn.functional.linear(x, layer.weight, layer.bias)
        assert got.dtype == torch.bfloat16 and got.shape == (m, 48)
        # the float32 product from `UPCAST_ROWS` rows on (a bfloat16 rounding of the same sums); oneDNN's below
        assert torch.equal(got, upcast) if m >= matmuls.UPCAST_ROWS else torch.equal(got, plain)
        torch.testing.assert_close(got, plain, atol=0.05, rtol=0.02)
    with torch.no_grad():
        layer.weight.mul_(2)  # in place: copied again
        x = torch.randn(100, 64, dtype=torch.bfloat16)
        assert torch.equal(layer(x), f32(x, layer.weight, layer.bias))
    with torch.inference_mode():  # the gated MLP takes it too, its rows not padded
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaMLP

        mlp = LlamaMLP(LlamaConfig(hidden_size=64, intermediate_size=96, hidden_act="silu")).to(torch.bfloat16)
        x = torch.randn(1, 70, 64, dtype=torch.bfloat16)
        want = f32(torch.nn.functional.silu(f32(x, mlp.gate_proj.weight)).mul(f32(x, mlp.up_proj.weight)),
                   mlp.down_proj.weight)
        matmuls.install_matmuls(mlp)
        assert torch.equal(mlp(x), want)
    x = torch.randn(100, 64, dtype=torch.bfloat16)
    assert layer(x).requires_grad  # with autograd: the plain path


def test_bfloat16_products_of_few_rows_run_on_the_engines_kernel_without_amx(monkeypatch):
    """Without AMX, bfloat16 products of fewer than `UPCAST_ROWS` rows run on the engine's kernel
    (`linear_bf16.c`): each output is its row's products summed in float32 in the order of the inputs (the
    reference below, bit for bit), whatever the other rows, rounded to bfloat16."""
    from peft_apps.core.engine import matmuls, native

    if native.pack_linear(torch.zeros((16, 2), dtype=torch.bfloat16)) is None:
        pytest.skip("the kernel needs AVX-512 BF16 and a C compiler")

    def sequential(x, weight):  # float32 sums in the order of k (each bfloat16 pair's product is exact)
        acc = torch.zeros(x.shape[:-1] + weight.shape[:1])
        for k in range(x.shape[-1]):
            acc = acc + x[..., k:k + 1].float() * weight[:, k].float()
        return acc.to(torch.bfloat16)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48, bias=False), torch.nn.Linear(48, 32, bias=True))
    model = model.to(torch.bfloat16)
    monkeypatch.setattr(matmuls, "_amx", lambda: False)
    matmuls.install_matmuls(model)
    layer = model[0]
    assert layer._peft_apps_native_ok and not model[1]._peft_apps_native_ok  # a bias: oneDNN's
    x = torch.randn(63, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        for m in (1, 5, 6, 7, 20, 63):
            got = layer(x[:m].view(1, m, 64))
            assert got.shape == (1, m, 48) and torch.equal(got[0], sequential(x[:m], layer.weight))
        whole = layer(x)
        assert all(torch.equal(whole[j], layer(x[j:j + 1])[0]) for j in range(63))  # a row alone: the same numbers
        torch.testing.assert_close(whole, torch.nn.functional.linear(x, layer.weight), atol=0.05, rtol=0.02)
        assert layer._peft_apps_native[1] is not None and getattr(layer, "_peft_apps_pack", None) is None
    with torch.no_grad():
        layer.weight.mul_(2)  # in place: packed again
        assert torch.equal(layer(x[:9]), sequential(x[:9], layer.weight))
    with torch.inference_mode():  # the gated MLP's projections take it, their rows not padded
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaMLP

        mlp = LlamaMLP(LlamaConfig(hidden_size=64, intermediate_size=96, hidden_act="silu")).to(torch.bfloat16)
        h = torch.randn(1, 20, 64, dtype=torch.bfloat16)
        gate = torch.nn.functional.silu(sequential(h, mlp.gate_proj.weight))
        want = sequential(gate.mul(sequential(h, mlp.up_proj.weight)), mlp.down_proj.weight)
        matmuls.install_matmuls(mlp)
        assert torch.equal(mlp(h), want)
    monkeypatch.setenv("PEFT_APPS_NATIVE_LINEAR", "0")
    other = torch.nn.Linear(64, 48, bias=False).to(torch.bfloat16)
    matmuls.install_matmuls(other)
    with torch.inference_mode():  # switched off: oneDNN's, plain linear's numbers
        assert torch.equal(other(x[:20]), torch.nn.functional.linear(x[:20], other.weight))
    assert layer(x[:3]).requires_grad  # with autograd: the plain path


def test_without_the_linear_kernel_bfloat16_products_stay_on_onednn(monkeypatch):
    """Where the kernel cannot be built (no compiler here; elsewhere a CPU without AVX-512 BF16), a layer's
    few-row products keep oneDNN's prepacked weights and plain linear's numbers, without an error."""
    from peft_apps.core.engine import matmuls, native

    monkeypatch.setattr(native, "_linear", [])  # not built yet in this process
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setattr(matmuls, "_amx", lambda: False)
    assert native.pack_linear(torch.zeros((16, 2), dtype=torch.bfloat16)) is None and native._linear == [None]
    layer = torch.nn.Linear(64, 48, bias=False).to(torch.bfloat16)
    matmuls.install_matmuls(layer)
    x = torch.randn(20, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_mlp_in_place_equals_the_models_own(dtype):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    from peft_apps.core.engine.matmuls import install_matmuls

    torch.manual_seed(0)
    mlp = LlamaMLP(LlamaConfig(hidden_size=64, intermediate_size=96, hidden_act="silu")).to(dtype)
    x = torch.randn(2, 30, 64, dtype=dtype)
    with torch.no_grad():
        want = mlp(x)
    install_matmuls(mlp)
    assert "forward" in vars(mlp)
    with torch.inference_mode():
        torch.testing.assert_close(mlp(x), want, atol=0, rtol=0)
    x.requires_grad_(True)
    mlp(x).sum().backward()  # with autograd: the model's own forward
    assert x.grad is not None


def test_sampling_probabilities_of_many_rows_draw_what_each_row_alone_draws():
    from types import SimpleNamespace

    from peft_apps.core.engine import GenerationOptions
    from peft_apps.core.engine.decode import pick_tokens
    from peft_apps.core.serve.scheduler import Scheduler

    torch.manual_seed(0)
    logits = torch.randn(5, 300)
    settings = [(True, 0.7, 0.9, 1), (False, 1.0, 1.0, 2), (True, 0.7, 0.9, 3), (True, 1.3, 1.0, 4), (True, 0.0, 1.0, 5)]
    rows = [SimpleNamespace(do_sample=s, temperature=t, top_p=p, seed=seed, generator=None) for s, t, p, seed in settings]
    got = [Scheduler._pick(None, logits, rows) for _ in range(3)][-1]
    want = []
    for j, (s, t, p, seed) in enumerate(settings):
        if not s or t <= 0:
            want.append(int(logits[j].argmax()))
            continue
        g = torch.Generator().manual_seed(seed)
        for _ in range(3):  # the third draw of the row's own generator
            tok = int(pick_tokens(logits[j:j + 1], GenerationOptions(do_sample=True, temperature=t, top_p=p), g)[0])
        want.append(tok)
    assert got == want


def test_nucleus_sampling_looks_among_the_likeliest_first_and_draws_the_nucleus_distribution(monkeypatch):
    from peft_apps.core.engine import nucleus

    torch.manual_seed(0)
    logits = torch.cat([torch.randn(3, 5000) * 4, torch.randn(3, 5000) * 0.05])  # peaked rows, near-flat rows
    for top_p in (0.9, 1.0):
        seeds = list(range(6))
        tiered = nucleus.sample_rows(logits, 0.8, top_p, [torch.Generator().manual_seed(s) for s in seeds])
        monkeypatch.setattr(nucleus, "TOP", 5000)  # the whole vocabulary sorted at once
        whole = nucleus.sample_rows(logits, 0.8, top_p, [torch.Generator().manual_seed(s) for s in seeds])
        monkeypatch.setattr(nucleus, "TOP", 256)
        assert tiered == whole
    # the draws follow the nucleus renormalized: top_p 0.9 keeps the four likeliest of these five
    probs = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    g = torch.Generator().manual_seed(0)
    n = 20000
    got = torch.bincount(torch.tensor(nucleus.sample_rows(probs.log().expand(n, 5), 1.0, 0.9, [g] * n)),
                         minlength=5) / n
    torch.testing.assert_close(got, torch.tensor([0.5, 0.2, 0.15, 0.1, 0.0]) / 0.95, atol=0.015, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_greedy_tokens_are_argmax_with_ties_and_nan(dtype):
    from peft_apps.core.engine.nucleus import greedy_tokens

    gen = torch.Generator().manual_seed(0)
    for shape in [(7, 3000), (3, 2, 500), (900,)]:
        x = torch.randint(-3, 4, shape, generator=gen).to(dtype)  # many ties for the largest
        x.view(-1, shape[-1])[0, 17] = float("nan")
        assert torch.equal(greedy_tokens(x), x.float().argmax(-1))
