"""The files bench/real_weights.py writes (tiny scale, the same code path as real size) load through the
pack's loaders and ComfyUI's inside the host: the sharded transformer folder as an SD3 MODEL with its LQ
branch, the robust VAE on the stock one, the whole-CLIPModel ViT-B/32 file and the clip_vision_g file,
and the real-size T5-XXL key table is what ComfyUI detects as T5-XXL."""
import importlib.util

import torch

from .comfy_harness import PACK_ROOT


def _real_weights():
    spec = importlib.util.spec_from_file_location("real_weights", PACK_ROOT / "bench" / "real_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_written_set_loads_through_the_nodes(pack_nodes, tmp_path):
    import folder_paths
    import nodes as core

    rw = _real_weights()
    paths = rw.write_model_set(tmp_path, "tiny", t5xxl=True, shard_gb=200_000 / rw.GiB)
    for folder, sub in (("dpir", "dpir"), ("vae", "vae"), ("clip_vision", "clip_vision"),
                        ("text_encoders", "text_encoders")):
        folder_paths.add_model_folder_path(folder, str(tmp_path / sub))
    spec = rw.spec_for("tiny")
    model, branch = pack_nodes["DPIRModelLoader"]().load(
        "transformer/diffusion_pytorch_model.safetensors.index.json", "default")
    assert model.model.diffusion_model.joint_blocks.__len__() == spec.num_layers
    assert branch.hidden == spec.hidden
    stock = core.VAELoader().load_vae("sd3_vae.safetensors")[0]
    vae = pack_nodes["DPIRRobustVAELoader"]().load("robust_vae/diffusion_pytorch_model.safetensors", vae=stock)[0]
    assert vae.latent_channels == 16
    image = torch.rand(1, 64, 64, 3)
    assert torch.isfinite(vae.encode(image)).all()
    for name, which in (("clip_vit_b32.safetensors", 1), ("clip_vision_g.safetensors", 2)):
        clip = pack_nodes["DPIRCLIPVisionLoader"]().load(name)[0]
        out = clip.encode_image(image)
        assert out.last_hidden_state.shape[1] == spec.clip(which).num_tokens, name
    assert paths["t5xxl"].is_file()


def test_real_size_t5_and_towers_are_what_comfyui_detects(pack_nodes):
    """ComfyUI's own detection on the real-size key tables (shapes only, on the meta device)."""
    import comfy.clip_vision
    import comfy.sd

    rw = _real_weights()
    spec = rw.spec_for("sd3-medium")
    assert comfy.sd.detect_te_model(rw.t5_shapes(spec)) == comfy.sd.TEModel.T5_XXL
    bigg = rw.clip_vision_shapes(spec, 2)
    assert "vision_model.encoder.layers.47.layer_norm1.weight" in bigg  # ComfyUI's key for clip_vision_g
    assert bigg["visual_projection.weight"].shape == (1280, 1664)
