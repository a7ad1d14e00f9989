"""The engine's decoding-attention kernel (core/engine/native.py, decode_attention.c): built at first use
with the machine's compiler, the numbers of exact attention, a row's numbers independent of its batch, and
SDPA kept wherever the kernel does not apply or cannot be built."""

from __future__ import annotations

import warnings

import pytest
import torch

from peft_apps.core.engine import native
from peft_apps.core.engine.attention import _decode_rows

pytestmark = pytest.mark.skipif(native._compiler() is None, reason="no C compiler")


def _exact(q, k, v, mask, scale):
    """Attention in float64 with the padding masked out."""
    s = torch.einsum("bhgd,bhnd->bhgn", q.double(), k.double()) * scale
    s = s.masked_fill(~mask.view(mask.shape[0], 1, 1, -1), float("-inf"))
    return torch.einsum("bhgn,bhnd->bhgd", s.softmax(-1), v.double())


def _cache(b, kvh, n, d, dtype, gen):
    """Keys/values as a decoding cache holds them: a slice of wider slots (not contiguous), padding filled
    with large finite values that must never be read."""
    k = torch.randn(b, kvh, n + 7, d, generator=gen).to(dtype)[:, :, 7:]
    v = torch.randn(b, kvh, n + 7, d, generator=gen).to(dtype)[:, :, 7:]
    return k, v


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("g,d", [(1, 16), (2, 16), (3, 64), (4, 128)])
def test_kernel_gives_exact_attention_over_each_rows_keys(dtype, g, d):
    gen = torch.Generator().manual_seed(g * 100 + d)
    b, kvh, n = 5, 2, 150  # 150 keys: two whole blocks of 64 and a part
    q = torch.randn(b, kvh, g, d, generator=gen).to(dtype)
    k, v = _cache(b, kvh, n, d, dtype, gen)
    first = [0, 90, 149, 3, 64]
    mask = torch.arange(n).view(1, n) >= torch.tensor(first).view(b, 1)
    mask[3, 40:45] = False  # a hole inside a row's keys
    k[~mask.view(b, 1, n, 1).expand_as(k)] = 3e4
    got = native.decode_attention(q, k, v, mask, d ** -0.5)
    assert got is not None and got.dtype == dtype and got.shape == q.shape
    want = _exact(q, k, v, mask, d ** -0.5)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert (got.double() - want).abs().max() < tol * max(1.0, want.abs().max().item())
    if dtype == torch.float32:  # SDPA gives the same, to float32 rounding
        sdpa = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask.view(b, 1, 1, n).expand(b, 1, g, n), scale=d ** -0.5)
        torch.testing.assert_close(got, sdpa, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_rows_numbers_do_not_depend_on_its_batch_or_its_padding(dtype):
    gen = torch.Generator().manual_seed(1)
    kvh, g, d, n = 3, 3, 64, 300
    q = torch.randn(4, kvh, g, d, generator=gen).to(dtype)
    k, v = _cache(4, kvh, n, d, dtype, gen)
    first = [0, 170, 299, 37]
    mask = torch.arange(n).view(1, n) >= torch.tensor(first).view(4, 1)
    batch = native.decode_attention(q, k, v, mask, 0.125)
    for j, f in enumerate(first):
        alone = native.decode_attention(q[j:j + 1], k[j:j + 1, :, f:], v[j:j + 1, :, f:],
                                        torch.ones(1, n - f, dtype=torch.bool), 0.125)
        assert torch.equal(alone[0], batch[j])


def test_decoding_rows_use_the_kernel_and_keep_sdpa_where_it_does_not_apply(monkeypatch):
    gen = torch.Generator().manual_seed(2)
    b, kvh, g, n = 3, 2, 2, 40
    mask = (torch.arange(n).view(1, n) >= torch.tensor([0, 10, 39]).view(b, 1)).view(b, 1, 1, n)
    for d in (16, 24):  # 24: not a multiple of 16, SDPA
        q = torch.randn(b, kvh, g, d, generator=gen)
        k, v = _cache(b, kvh, n, d, torch.float32, gen)
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask.expand(b, 1, g, n))
        before = native.calls()
        got = _decode_rows(q, k, v, mask, None, 0.0, None)
        torch.testing.assert_close(got, sdpa, atol=1e-5, rtol=1e-4)
        assert native.calls() == before + (d != 24)  # the counter counts the kernel's calls, not SDPA's
        assert (native.decode_attention(q, k, v, mask[:, 0, 0], None) is None) == (d == 24)
    q.requires_grad_(True)
    assert native.decode_attention(q, k, v, mask[:, 0, 0], None) is None  # autograd: SDPA
    monkeypatch.setenv("PEFT_APPS_NATIVE_ATTENTION", "0")
    q = torch.randn(b, kvh, g, 16)
    k, v = _cache(b, kvh, n, 16, torch.float32, gen)
    assert native.decode_attention(q, k, v, mask[:, 0, 0], None) is None


def test_kernel_built_once_per_shape_and_sdpa_kept_without_a_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("PEFT_APPS_CACHE", str(tmp_path))
    first = native.build(torch.float32, 2, 16)
    assert first.parent == tmp_path / "kernels" and first.exists()
    stamp = first.stat().st_mtime_ns
    assert native.build(torch.float32, 2, 16) == first and first.stat().st_mtime_ns == stamp  # cached
    assert native.build(torch.bfloat16, 2, 16) != first  # another element type: another build

    monkeypatch.setattr(native, "_kernels", {})
    monkeypatch.setattr(native, "_warned", False)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("PEFT_APPS_CACHE", str(tmp_path / "empty"))
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 2, 2, 32, generator=gen)
    k, v = _cache(2, 2, 20, 32, torch.float32, gen)
    mask = torch.ones(2, 1, 1, 20, dtype=torch.bool)
    with pytest.warns(RuntimeWarning, match="could not be built"):
        assert native.decode_attention(q, k, v, mask[:, 0, 0], None) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        got = _decode_rows(q, k, v, mask, None, 0.0, None)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(got, sdpa)
