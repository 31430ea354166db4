import pytest
import torch
import torch.nn.functional as F

from clipforge.layers.attention import EXPLICIT_MAX_TOKENS, attention


@pytest.mark.parametrize("n,m,causal", [(19, 19, True), (50, 50, False), (1, 5, False)])
def test_half_precision_cpu_attention_matches_fp32_sdpa(n, m, causal):
    torch.manual_seed(0)
    q, k, v = torch.randn(4, 3, n, 32), torch.randn(4, 3, m, 32), torch.randn(4, 3, m, 32)
    ref_in = [x.clone().requires_grad_(True) for x in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_in, is_causal=causal)
    ref.square().sum().backward()
    low = [x.bfloat16().requires_grad_(True) for x in (q, k, v)]
    out = attention(*low, causal=causal)  # the explicit path (bf16, CPU, short)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    assert (out.float() - ref).abs().max() < 0.02
    for a, b in zip(low, ref_in):
        assert torch.allclose(a.grad.float(), b.grad, atol=0.1, rtol=0.05)
    if causal:  # row 0 sees only key 0
        assert torch.allclose(out[:, :, 0].float(), low[2][:, :, 0].float(), atol=1e-2)


def test_fp32_fp64_and_long_inputs_use_sdpa_unchanged():
    q = torch.randn(2, 2, EXPLICIT_MAX_TOKENS + 1, 16)
    assert torch.equal(attention(q, q, q), F.scaled_dot_product_attention(q, q, q))
    for dtype in (torch.float32, torch.float64):
        q = torch.randn(2, 2, 7, 16, dtype=dtype)
        out = attention(q, q, q, causal=True)
        assert out.dtype == dtype and torch.equal(out, F.scaled_dot_product_attention(q, q, q, is_causal=True))
