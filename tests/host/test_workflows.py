"""The shipped workflows through a real ComfyUI server on 127.0.0.1, with tiny official-format models.

The models sit in a folder that the server learns from extra_model_paths.yaml
(under the keys 'dpir', 'vae' and 'clip_vision'), so that path is tested too.
T5-XXL is replaced by a precomputed T5 embedding: ComfyUI builds T5-XXL at
full size whatever the file holds.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from host.comfy_harness import ExecutionFailed, PromptRejected
from host.dpir_env import PHOTO, api_of, saved_images, write_photo


@pytest.fixture(scope="module")
def server(dpir_server, tmp_path_factory):
    dpir_server.add_input(write_photo(tmp_path_factory.mktemp("inputs") / PHOTO))
    return dpir_server


def test_object_info_lists_every_node(object_info):
    mine = {k: v for k, v in object_info.items() if v.get("category") == "DPIR"}
    expect = {
        "DPIRModelLoader": ["MODEL", "DPIR_LQ_BRANCH"], "DPIRRobustVAELoader": ["VAE"],
        "DPIRCLIPVisionLoader": ["CLIP_VISION"], "DPIRRobustVAEEncode": ["LATENT", "IMAGE"], "DPIRRobustVAEDecode": ["IMAGE"],
        "DPIRVisualPrompt": ["CONDITIONING"], "DPIRT5TextPrompt": ["CONDITIONING"],
        "DPIRDualPrompt": ["CONDITIONING", "CONDITIONING"], "DPIRApplyLQCondition": ["MODEL"],
        "DPIRSamplerPatch": ["MODEL", "GUIDER", "SAMPLER", "SIGMAS"], "DPIRColourFix": ["IMAGE"],
    }
    for name, outputs in expect.items():
        assert mine[name]["output"] == outputs, name
    req = mine["DPIRApplyLQCondition"]["input"]["required"]
    assert [req[k][0] for k in ("model", "lq_branch", "lq_latent")] == ["MODEL", "DPIR_LQ_BRANCH", "LATENT"]
    assert mine["DPIRRobustVAEEncode"]["input"]["required"]["vae"][0] == "VAE"
    assert all(v.get("description") for v in mine.values())


def test_restore_workflow_runs_and_is_deterministic(server, object_info, workflow_api):
    api = api_of("dpir_restore", server, object_info, workflow_api)
    first = saved_images(server, server.run(api, timeout=600))
    again = saved_images(server, server.run(api_of("dpir_restore", server, object_info, workflow_api,
                                                   SaveImage={"filename_prefix": "again"}), timeout=600))
    other = saved_images(server, server.run(api_of("dpir_restore", server, object_info, workflow_api,
                                                   RandomNoise={"noise_seed": 43}), timeout=600))
    assert len(first) == 1
    img = first[0]
    assert img.shape == (54, 72, 3)  # 80×60 → long side 72, exact size (the model ran on 64×80, padded)
    assert np.isfinite(img).all() and img.std() > 0
    assert np.array_equal(img, again[0])
    assert not np.array_equal(img, other[0])


def test_prompt_ablation_workflow_gives_five_different_images(server, object_info, workflow_api, dpir_models,
                                                              tmp_path_factory):
    """Typed text only, visual only, dual, caption only, caption + visual: five prompts, five pictures. T5-XXL is
    replaced by embedding files here, so the caption's T5 prompt gets an embedding of its own (of another text)."""
    import shutil

    import tiny_models as tm
    import tiny_vlms as tv

    base = Path(dpir_models["dpir_tests"]["base_path"])
    tm.write_t5_embedding(base / "dpir" / "caption_prompt.safetensors", tm.TinySpec(), prompt="an old blurry photo")
    qwen = tv.write_qwen25_vl(tmp_path_factory.mktemp("vlm") / "tiny-qwen2.5-vl")
    shutil.copytree(qwen, server.models_dir / "LLM" / qwen.name, dirs_exist_ok=True)
    api = api_of("dpir_prompt_ablation", server, object_info, workflow_api,
                 DPIRCaption={"caption_model": f"{qwen.name}/config.json", "max_new_tokens": 12})
    t5 = [k for k, v in api.items() if v["class_type"] == "DPIRT5TextPrompt"]
    caption_t5 = [k for k in t5 if isinstance(api[k]["inputs"]["text"], list)]
    assert len(t5) == 2 and len(caption_t5) == 1
    api[caption_t5[0]]["inputs"]["t5_embedding"] = "caption_prompt.safetensors"
    entry = server.run(api, timeout=900)
    images = saved_images(server, entry)
    assert len(images) == 5
    assert all(i.shape == (54, 72, 3) for i in images)
    assert all(not np.array_equal(a, b) for i, a in enumerate(images) for b in images[i + 1:])
    # the caption reached its T5 prompt node
    caption = next(k for k, v in api.items() if v["class_type"] == "DPIRCaption")
    shown = entry["outputs"][caption_t5[0]]["text"]
    assert [t.split(") ", 1)[1] for t in shown] == entry["outputs"][caption]["text"]


def test_large_workflow_samples_in_tiles(server, object_info, workflow_api):
    api = api_of("dpir_restore_large", server, object_info, workflow_api,
                 DPIRRobustVAEEncode={"resize": "upscale factor", "upscale_factor": 4.0},
                 DPIRTiledPrompt={"tile_size": 256, "tile_overlap": 64})
    entry = server.run(api, timeout=900)
    image = saved_images(server, entry)[0]
    assert image.shape == (240, 320, 3) and image.std() > 0
    preview = saved_images(server, entry, "temp")[0]  # the tile plan over the LQ image
    assert preview.shape == (240, 320, 3)


def test_missing_model_file_is_a_node_error(server, object_info, workflow_api):
    api = api_of("dpir_restore", server, object_info, workflow_api,
                 DPIRModelLoader={"transformer": "does_not_exist.safetensors"})
    with pytest.raises(PromptRejected) as e:
        server.queue_prompt(api)
    assert "DPIRModelLoader" in str(e.value.body) and "does_not_exist" in str(e.value.body)


def test_wrong_model_type_names_the_node_and_server_goes_on(server, object_info, workflow_api):
    api = api_of("dpir_restore", server, object_info, workflow_api,
                 DPIRModelLoader={"transformer": "sdxl_unet.safetensors"},
                 SaveImage={"filename_prefix": f"bad_{uuid.uuid4().hex[:6]}"})
    with pytest.raises(ExecutionFailed) as e:
        server.run(api, timeout=300)
    text = str(e.value)
    assert "DPIRModelLoader" in text and "SDXL" in text and "not an SD3 transformer" in text
    # the next prompt runs normally
    good = saved_images(server, server.run(api_of("dpir_restore", server, object_info, workflow_api,
                                                  SaveImage={"filename_prefix": "after_error"}), timeout=600))
    assert good[0].shape == (54, 72, 3)


def test_subgraph_workflow_equals_the_large_workflow(server, object_info, workflow_api):
    """workflows/subgraphs/dpir_restore_block.json (the chain of dpir_restore_large as one subgraph node, tile
    size / steps / colour fix promoted) through the pack's converter: the same prompt as the flat workflow, up
    to node ids, so the same image."""
    settings = dict(DPIRTiledPrompt={"tile_size": 256, "tile_overlap": 64})
    block = api_of("subgraphs/dpir_restore_block", server, object_info, workflow_api, **settings)
    flat = api_of("dpir_restore_large", server, object_info, workflow_api, **settings)
    assert any(":" in k for k in block)  # "<subgraph node>:<inner node>"
    a = saved_images(server, server.run(block, timeout=900))
    b = saved_images(server, server.run(flat, timeout=900))
    assert len(a) == len(b) == 1 and a[0].shape == (54, 72, 3)
    assert np.array_equal(a[0], b[0])
