"""Weight storage precision of the DPIR Model Loader (fp16 / bf16 / fp8), in ComfyUI, CPU, tiny model.

Each choice really stores the DiT's weights in that dtype (ComfyUI casts them per layer when it computes),
the stored size shrinks accordingly, and sampling with the LQ condition stays close to the fp32 result.
"""
from __future__ import annotations

import pytest
import torch

from host.test_conformance import HOST, inputs, lq_model, sample_model

pytestmark = pytest.mark.skipif(HOST.path is None, reason=f"no ComfyUI host: {HOST.reason}")
# (stored dtype, largest error of the sampled latent relative to its fp32 range)
CASES = {"fp16": (torch.float16, 1e-3), "bf16": (torch.bfloat16, 0.01), "fp8_e4m3fn": (torch.float8_e4m3fn, 0.05),
         "fp8_e5m2": (torch.float8_e5m2, 0.1)}


def sample(nodes, weight_dtype, z, ctx, pooled):
    model = lq_model(nodes, z, 1.0, weight_dtype)
    return model, sample_model(nodes, model, z, ctx, pooled, 3, 3, 1.0)


def linear_weights(model):
    return [m.weight for m in model.model.diffusion_model.modules() if isinstance(m, torch.nn.Linear)]


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
    weights = linear_weights(model)
    assert {w.dtype for w in weights} == {dtype}
    assert {w.dtype for w in linear_weights(ref_model)} == {torch.float32}
    # what ComfyUI budgets when it loads the model onto a GPU shrinks with the storage dtype
    assert model.model_size() / ref_model.model_size() == pytest.approx(dtype.itemsize / 4, abs=0.01)
    assert torch.isfinite(out).all()
    error = (out - ref).abs().max() / (ref.max() - ref.min())
    assert error < tolerance, f"{weight_dtype}: {error:.4f} of the fp32 range"
