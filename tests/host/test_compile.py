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

from host.test_conformance import HOST, inputs, lq_model, sample_model

pytestmark = pytest.mark.skipif(HOST.path is None, reason=f"no ComfyUI host: {HOST.reason}")


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None,
                    reason="torch.compile's inductor needs a C compiler on the CPU (install gcc)")
def test_core_torch_compile_node_on_a_dpir_model(pack_nodes):
    import torch._dynamo
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    z, ctx, pooled = inputs()
    patched = lq_model(pack_nodes, z, 1.0)
    eager = sample_model(pack_nodes, patched, z, ctx, pooled, 3, 5, 1.0)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = sample_model(pack_nodes, TorchCompileModel.execute(patched, "inductor").result[0], z, ctx, pooled,
                            3, 5, 1.0)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the compiled module really ran
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    # and the LQ condition was part of it: without it the result is far from both
    plain = sample_model(pack_nodes, lq_model(pack_nodes, z, 0.0), z, ctx, pooled, 3, 5, 1.0)
    assert (plain - compiled).abs().max() > 1e-2
