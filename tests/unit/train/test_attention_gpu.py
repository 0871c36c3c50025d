"""The packed kernels themselves (CUDA only; skipped elsewhere): varlen and FlexAttention against
transformers' SDPA with the block mask, forward and backward, bf16, GQA."""

from __future__ import annotations

import pytest
import torch

from train import attention

pytestmark = pytest.mark.gpu


def _inputs():
    gen = torch.Generator().manual_seed(0)
    lengths = [300, 17, 900, 1]
    pos = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0).cuda()
    q, k, v = (
        torch.randn(1, h, sum(lengths), 128, generator=gen).cuda().bfloat16().requires_grad_()
        for h in (32, 8, 8)
    )
    return q, k, v, pos


@pytest.mark.parametrize("name", ["varlen", "flex_attention"])
def test_kernel_equals_dense_block_mask(name):
    if attention._probe(name, torch.device("cuda")) is not None:
        pytest.skip(f"{name} not usable with torch {torch.__version__}")
    q, k, v, pos = _inputs()
    fn = attention.FUNCTIONS[attention.REGISTERED[name]]
    out, _ = fn(None, q, k, v, None, scaling=128**-0.5, position_ids=pos)
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    ref, _ = attention.packed_sdpa_forward(None, q, k, v, None, scaling=128**-0.5, position_ids=pos)
    ref_grads = torch.autograd.grad(ref.float().square().sum(), (q, k, v))
    assert float((out - ref).float().norm() / ref.float().norm()) < 1e-2
    for g, r in zip(grads, ref_grads, strict=True):
        assert float((g - r).float().norm() / r.float().norm()) < 2e-2
