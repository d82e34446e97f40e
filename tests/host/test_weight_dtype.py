"""Weight storage precision of the DPIR Model Loader (fp16 / bf16 / fp8), in ComfyUI, CPU, tiny model.

Each choice really stores the DiT's weights in that dtype for computing (ComfyUI casts them per layer when it
computes), the size ComfyUI budgets for them shrinks accordingly, and sampling with the LQ condition stays close
to the fp32 result. With the classic ModelPatcher the weights are held in that dtype; with the dynamic-VRAM
ModelPatcher of newer ComfyUI (NVIDIA) they stay in the file's dtype in RAM and are cast to it when staged
(compat.staged_dtype), so the expectations follow the patcher the host gives.
"""
from __future__ import annotations

import pytest
import torch

from host.comfy_harness import load_compat
from host.test_conformance import HOST, inputs, lq_model, sample_model

compat = load_compat()

pytestmark = pytest.mark.skipif(HOST.path is None, reason=f"no ComfyUI host: {HOST.reason}")
# (stored dtype, largest error of the sampled latent relative to its fp32 range)
CASES = {"fp16": (torch.float16, 1e-3), "bf16": (torch.bfloat16, 0.01), "fp8_e4m3fn": (torch.float8_e4m3fn, 0.05),
         "fp8_e5m2": (torch.float8_e5m2, 0.1)}


def sample(nodes, weight_dtype, z, ctx, pooled):
    model = lq_model(nodes, z, 1.0, weight_dtype)
    return model, sample_model(nodes, model, z, ctx, pooled, 3, 3, 1.0)


def linears(model):
    return [m for m in model.model.diffusion_model.modules() if isinstance(m, torch.nn.Linear)]


def budget(model) -> int:
    """Bytes ComfyUI budgets for the DiT on the GPU: the classic patcher's model size; the dynamic patcher stages
    each parameter in its archived dtype."""
    if not compat.is_dynamic(model):
        return model.model_size()
    return sum(p.numel() * compat.staged_dtype(m, n).itemsize
               for m in model.model.modules() for n, p in m.named_parameters(recurse=False))


@pytest.fixture(scope="module")
def fp32(pack_nodes):
    z, ctx, pooled = inputs()
    return sample(pack_nodes, "default", z, ctx, pooled)


@pytest.mark.parametrize("weight_dtype", list(CASES))
def test_weight_dtype_is_stored_and_samples_close_to_fp32(pack_nodes, fp32, weight_dtype):
    dtype, tolerance = CASES[weight_dtype]
    z, ctx, pooled = inputs()
    ref_model, ref = fp32
    model, out = sample(pack_nodes, weight_dtype, z, ctx, pooled)
    assert {compat.staged_dtype(m) for m in linears(model)} == {dtype}
    assert {compat.staged_dtype(m) for m in linears(ref_model)} == {torch.float32}
    # held in RAM: the chosen dtype (classic patcher), or the file's, fp32 here (dynamic patcher)
    assert {m.weight.dtype for m in linears(model)} == {torch.float32 if compat.is_dynamic(model) else dtype}
    # what ComfyUI budgets when it loads the model onto a GPU shrinks with the storage dtype
    assert budget(model) / budget(ref_model) == pytest.approx(dtype.itemsize / 4, abs=0.01)
    assert torch.isfinite(out).all()
    error = (out - ref).abs().max() / (ref.max() - ref.min())
    assert error < tolerance, f"{weight_dtype}: {error:.4f} of the fp32 range"
