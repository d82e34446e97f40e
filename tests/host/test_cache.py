"""ComfyUI's output cache and the DPIR nodes (real server on 127.0.0.1, CPU, tiny models).

* Changing only the seed re-runs the sampler and what follows it, never the once-per-image work: the robust
  encode, the visual and T5 prompts, the dual prompt and the LQ condition come from the cache (that is how an
  unchanged prompt's T5 embedding is reused).
* Wiring the robust decode after a run in which nothing used it gives the real robust decode, equal to a run
  with an emptied cache — a cached node must never hand out an output computed for another wiring.
"""
from __future__ import annotations

import numpy as np
import pytest

from host.dpir_env import api_of, node_id, saved_images, write_photo

PHOTO = "cache.png"
ONCE_PER_IMAGE = ("DPIRRobustVAEEncode", "DPIRVisualPrompt", "DPIRT5TextPrompt", "DPIRDualPrompt",
                  "DPIRApplyLQCondition")


@pytest.fixture(scope="module")
def server(dpir_server, tmp_path_factory):
    dpir_server.add_input(write_photo(tmp_path_factory.mktemp("cache") / PHOTO, 40, 30, seed=7))
    return dpir_server


def restore(server, object_info, workflow_api, seed, prefix):
    return api_of("dpir_restore", server, object_info, workflow_api, LoadImage={"image": PHOTO},
                  DPIRRobustVAEEncode={"resize": "keep size"}, DPIRSamplerPatch={"steps": 1},
                  RandomNoise={"noise_seed": seed}, SaveImage={"filename_prefix": prefix})


def cached_nodes(entry) -> set:
    """The ids of the nodes ComfyUI served from its cache, from a history entry's status messages."""
    return {nid for kind, data in entry["status"]["messages"] if kind == "execution_cached" for nid in data["nodes"]}


def with_robust_decode(api, prefix):
    """The restore prompt plus DPIR Robust VAE Decode on its LQ latent, saved, and the LQ image saved."""
    encode, vae = node_id(api, "DPIRRobustVAEEncode"), node_id(api, "DPIRRobustVAELoader")
    api = dict(api)
    api["900"] = {"class_type": "DPIRRobustVAEDecode", "inputs": {"lq_latent": [encode, 0], "vae": [vae, 0]}}
    api["901"] = {"class_type": "SaveImage", "inputs": {"images": ["900", 0], "filename_prefix": f"{prefix}_robust"}}
    api["902"] = {"class_type": "SaveImage", "inputs": {"images": [encode, 1], "filename_prefix": f"{prefix}_lq"}}
    return api


def test_a_new_seed_reuses_the_once_per_image_work(server, object_info, workflow_api):
    server.run(restore(server, object_info, workflow_api, 1, "seed_a"), 600)
    api = restore(server, object_info, workflow_api, 2, "seed_b")
    cached = cached_nodes(server.run(api, 600))
    for class_type in ONCE_PER_IMAGE:
        assert node_id(api, class_type) in cached, f"{class_type} ran again for a new seed"
    for class_type in ("SamplerCustomAdvanced", "VAEDecode", "DPIRColourFix", "SaveImage"):
        assert node_id(api, class_type) not in cached, f"{class_type} was served from the cache for a new seed"


def test_robust_decode_wired_after_a_cached_run_is_computed(server, object_info, workflow_api):
    plain = restore(server, object_info, workflow_api, 3, "plain")
    server.run(plain, 600)  # the encode node is now cached, computed with nothing reading a robust decode
    api = with_robust_decode(plain, "after")
    entry = server.run(api, 600)
    cached = cached_nodes(entry)
    assert node_id(api, "DPIRRobustVAEEncode") in cached  # the situation under test: the encode is reused
    robust, lq = saved_images(server, entry, node_id="901")[0], saved_images(server, entry, node_id="902")[0]
    assert robust.shape == lq.shape == (30, 40, 3)  # exact LQ size, not the 32×48 padded latent
    assert np.abs(robust.astype(int) - lq.astype(int)).mean() > 10  # a decode of the random VAE, not the LQ
    server.free(unload_models=False, free_memory=True)  # empties the output cache before the next prompt
    fresh = server.run(with_robust_decode(plain, "fresh"), 600)
    assert node_id(api, "DPIRRobustVAEEncode") not in cached_nodes(fresh)
    np.testing.assert_array_equal(saved_images(server, fresh, node_id="901")[0], robust)
