"""The DiT's attention on the CPU through PyTorch's ``scaled_dot_product_attention``.

On the CPU ComfyUI runs SD3's joint attention with its sub-quadratic attention, whose query chunks are sized by
the free RAM: on SD3-medium tiles of 1024 px, a batch of 4, one call takes 2.6× the time of PyTorch's SDPA (a
fused, memory-efficient kernel on the CPU) and 7 GB more memory (``bench/bench.py attention``; the difference
of the outputs is 2e-8). The DPIR MODEL carries this function as ComfyUI's ``optimized_attention_override``
(a model option every attention call of the DiT consults); it takes over only the host's CPU default, fp32 and
unmasked, and hands every other call (a GPU, another attention the user chose with ComfyUI's flags, a mask)
back to ComfyUI unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

KEY = "optimized_attention_override"
# keyword arguments ComfyUI's attention wrapper adds; any other option makes the call ComfyUI's own
_PASSED = {"transformer_options", "_inside_attn_wrapper", "attn_precision", "scale"}


def takes_over(func, q, k, v, mask=None, skip_reshape=False, skip_output_reshape=False, **kwargs) -> bool:
    """Whether ``sdpa_on_cpu`` runs this call itself: ComfyUI's CPU sub-quadratic attention on fp32 tensors, q
    (B, tokens, heads × dim), no mask, no option it does not know."""
    return (getattr(func, "__name__", "") == "attention_sub_quad" and q.device.type == "cpu" and mask is None
            and not skip_reshape and not skip_output_reshape and not set(kwargs) - _PASSED and q.ndim == 3
            and all(t.dtype == torch.float32 for t in (q, k, v)))


def sdpa_on_cpu(func, q, k, v, heads, **kwargs):
    """ComfyUI's attention call ``func(q, k, v, heads, ...)``, through SDPA where ``takes_over`` says so."""
    if not takes_over(func, q, k, v, **kwargs):
        return func(q, k, v, heads, **kwargs)
    b, _, inner = q.shape
    dim = inner // heads
    # k and v as ComfyUI reshapes them: SD3 hands v over as (B, tokens, heads, dim)
    q, k, v = (t.reshape(b, -1, heads, dim).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, scale=kwargs.get("scale"))
    return out.transpose(1, 2).reshape(b, -1, inner)


def install(model) -> None:
    """Give a freshly loaded MODEL the CPU attention above, unless it already carries an attention override."""
    options = model.model_options.setdefault("transformer_options", {})
    options.setdefault(KEY, sdpa_on_cpu)
