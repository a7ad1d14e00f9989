"""Pickle-free optimizer checkpoints: every optimizer the core can pick resumes exactly."""

import pytest
import torch

from peft_apps.core import checkpoint as ckpt


def _optimizers():
    import bitsandbytes as bnb

    return {
        "adamw_torch": lambda ps: torch.optim.AdamW(ps, lr=1e-2),
        "adamw_8bit": lambda ps: bnb.optim.AdamW8bit(ps, lr=1e-2),
        "paged_adamw_8bit": lambda ps: bnb.optim.PagedAdamW8bit(ps, lr=1e-2),
        "paged_adamw_32bit": lambda ps: bnb.optim.PagedAdamW32bit(ps, lr=1e-2),
    }


def _steps(model, opt, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(8, 256, generator=g)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("name", ["adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"])
def test_optimizer_state_round_trip_resumes_exactly(name, tmp_path):
    """Save after 3 steps, load into a fresh optimizer, 3 more steps == 6 uninterrupted steps. The 8-bit
    states nest tensors of 32k+ elements (the layer is 512 x 256, above bitsandbytes' 4096 threshold)."""
    make = _optimizers()[name]
    torch.manual_seed(0)
    straight = torch.nn.Linear(256, 512)
    resumed = torch.nn.Linear(256, 512)
    resumed.load_state_dict(straight.state_dict())
    opt = make(straight.parameters())
    _steps(straight, opt, 3, seed=1)
    ckpt.save_optimizer(opt.state_dict(), tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {ckpt.OPTIMIZER, ckpt.OPTIMIZER_META}
    _steps(straight, opt, 3, seed=2)

    opt2 = make(resumed.parameters())
    _steps(resumed, opt2, 3, seed=1)
    opt2 = make(resumed.parameters())  # a new process: a fresh optimizer, state from the files only
    opt2.load_state_dict(ckpt.load_optimizer(tmp_path))
    _steps(resumed, opt2, 3, seed=2)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


def test_big_tensor_never_goes_to_json():
    with pytest.raises(TypeError, match="safetensors"):
        ckpt._jsonable(torch.zeros(4))
