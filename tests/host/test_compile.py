"""torch.compile for DPIR: ComfyUI's own 'TorchCompileModel' node on a MODEL patched by the pack.

The core node compiles the whole diffusion model at sampling time; the LQ condition (a block-0 replace patch
and an APPLY_MODEL wrapper carrying the once-per-image features) must survive the compilation. In process,
CPU, fp32, tiny official-format model; inductor needs a C compiler (it is what compiles on the CPU).
"""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from host.test_conformance import HOST, inputs

pytestmark = pytest.mark.skipif(HOST.path is None, reason=f"no ComfyUI host: {HOST.reason}")


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None,
                    reason="torch.compile's inductor needs a C compiler on the CPU (install gcc)")
def test_core_torch_compile_node_on_a_dpir_model(pack_nodes):
    import comfy.sample
    import torch._dynamo
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    z, ctx, pooled = inputs()
    model, branch = pack_nodes["DPIRModelLoader"]().load("transformer/diffusion_pytorch_model.safetensors", "default")
    patched = pack_nodes["DPIRApplyLQCondition"]().apply(model, branch, {"samples": z}, 1.0, 0.0, 1.0)[0]

    def sample(m):
        _, guider, sampler, sigmas = pack_nodes["DPIRSamplerPatch"]().patch(
            m, [[ctx, {"pooled_output": pooled}]], 3, 1.0, 3.0)
        latent = torch.zeros_like(z)
        with torch.inference_mode():  # as ComfyUI runs a prompt
            return guider.sample(comfy.sample.prepare_noise(latent, 5), latent, sampler, sigmas, seed=5)

    eager = sample(patched)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = sample(TorchCompileModel.execute(patched, "inductor").result[0])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the compiled module really ran
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    # and the LQ condition was part of it: without it the result is far from both
    plain = pack_nodes["DPIRApplyLQCondition"]().apply(model, branch, {"samples": z}, 0.0, 0.0, 1.0)[0]
    assert (sample(plain) - compiled).abs().max() > 1e-2
