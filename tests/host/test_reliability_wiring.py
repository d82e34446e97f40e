"""Reliability, part 2: wrong wiring, wrong models and broken or hostile files, through a real ComfyUI server.

Each fault is one small prompt (the nodes concerned and a Preview Any sink) on the shared server with tiny
models; it must fail on the right node with the pack's own error (DPIRModelError / DPIRInputError) saying
what was wrong and what to connect or do instead — never a shape error from deep inside torch — and the
server must go on serving. Foreign models are ones ComfyUI itself loads and detects: an SD1.5-shaped UNet
(core Load Diffusion Model), a 4-channel VAE (core Load VAE), a CLIP holding CLIP-L only (core Load CLIP,
type sd3). The hostile .pth would write a marker file when unpickled: the marker must never appear.
"""
from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import tiny_models as tm
from host.comfy_harness import PACK_NAME, ExecutionFailed, PromptRejected, load_compat
from host.dpir_env import PROMPT_EMBEDDING, SPEC, api_of, node_id, write_photo

INSIDE = "(inside the transformer file)"
NARROW = tm.TinySpec(num_layers=1, num_attention_heads=1, caption_projection_dim=64)  # width 64, not 128
MARKER = "MALICIOUS_CODE_RAN"


@pytest.fixture(scope="module")
def files(dpir_server, dpir_models, tmp_path_factory):
    """Bad, foreign and hostile files in the server's model folders; {name: path}."""
    root = Path(dpir_models["dpir_tests"]["base_path"])
    bad, clip = root / "dpir" / "bad", root / "clip_vision"
    outside = tmp_path_factory.mktemp("outside_the_model_folders")
    marker = outside / MARKER
    f = {}
    f["empty"] = bad / "empty.safetensors"
    f["empty"].parent.mkdir(parents=True, exist_ok=True)
    f["empty"].write_bytes(b"")
    f["truncated"] = tm.write_truncated_safetensors(bad / "truncated.safetensors", SPEC)
    png = write_photo(outside / "photo.png", 8, 8).read_bytes()
    f["png_as_safetensors"] = bad / "photo_renamed.safetensors"
    f["png_as_safetensors"].write_bytes(png)
    f["text_as_pth"] = bad / "readme_renamed.pth"
    f["text_as_pth"].write_text("this is not a checkpoint\n")
    f["list_ckpt"] = bad / "list.ckpt"
    torch.save([1, 2, 3], str(f["list_ckpt"]))
    for kind in ("offsets", "shape", "header_size"):
        f[f"lying_{kind}"] = tm.write_lying_header_safetensors(bad / f"lying_{kind}.safetensors", kind)
    f["malicious"] = tm.write_malicious_pth(bad / "consolidated_malicious.pth", marker, SPEC)
    f["malicious_clip"] = tm.write_malicious_pth(clip / "clip_malicious.pth", marker, SPEC)
    f["garbage_clip"] = clip / "garbage.safetensors"
    f["garbage_clip"].write_bytes(png)
    f["transformer_as_clip"] = tm.write_control_conv_file(clip / "lq_branch_as_clip.safetensors", SPEC)
    f["no_lq"] = tm.write_transformer_file(bad / "sd3_plain.safetensors", SPEC, with_control=False)
    f["control_mismatch"] = tm.write_mismatched_control_file(bad / "control_mismatch.safetensors", SPEC)
    f["narrow"] = tm.write_transformer_file(bad / "narrow_dpir.safetensors", NARROW)
    f["narrow_lq"] = tm.write_control_conv_file(bad / "narrow_lq_branch.safetensors", NARROW)
    f["vae_as_transformer"] = tm.write_vae_file(bad / "vae_renamed.safetensors", SPEC)
    f["t5_wide"] = bad / "t5_wide.safetensors"
    save_file({"t5_embedding": torch.randn(1, 256, 2 * SPEC.joint_attention_dim)}, str(f["t5_wide"]))
    f["t5_narrow"] = bad / "t5_narrow.safetensors"
    save_file({"t5_embedding": torch.randn(1, 256, SPEC.joint_attention_dim // 2)}, str(f["t5_narrow"]))
    # escaping the model folder: a file and a diffusers folder outside it, linked in
    f["outside_file"] = tm.write_transformer_file(outside / "dpir_transformer.safetensors", SPEC)
    os.symlink(f["outside_file"], root / "dpir" / "linked_file.safetensors")
    tm.write_transformer_folder(outside / "transformer_folder", SPEC)
    os.symlink(outside / "transformer_folder", root / "dpir" / "linked_folder", target_is_directory=True)
    # foreign models that ComfyUI's own loaders load and detect
    dpir_server.add_model("diffusion_models", tm.write_sd15_unet_file(outside / "sd15_unet.safetensors"))
    dpir_server.add_model("text_encoders", tm.write_clip_l_text_file(outside / "clip_l_only.safetensors"))
    tm.write_sd15_vae_file(root / "vae" / "sd15_vae.safetensors", SPEC)
    dpir_server.add_input(write_photo(outside / "wiring.png", 40, 30))
    f["marker"], f["root"], f["outside"] = marker, root, outside
    return f


@pytest.fixture(scope="module")
def server(dpir_server, files):
    return dpir_server


def rel(files, name):
    """The name a loader lists for a file of the dpir folder."""
    return files[name].relative_to(files["root"] / "dpir").as_posix()


def fails(server, api, node, *needles, error="DPIRModelError"):
    """Run ``api``: it must fail on ``node`` with the pack's ``error`` whose message holds every needle."""
    with pytest.raises(ExecutionFailed) as e:
        server.run(api, timeout=300)
    text = str(e.value)
    head = text.split("\n")[0]
    assert f"({node}) raised" in head and error in head, text[:2000]
    for needle in needles:
        assert needle in head, f"{needle!r} not in: {head}"
    return head


def sink(api, source):
    api["99"] = {"class_type": "PreviewAny", "inputs": {"source": source}}
    return api


def model_loader(transformer, lq_branch=INSIDE):
    return {"class_type": "DPIRModelLoader",
            "inputs": {"transformer": transformer, "weight_dtype": "default", "lq_branch": lq_branch}}


GOOD = "transformer/diffusion_pytorch_model.safetensors"


def apply_lq_api(model_source, branch_source, extra=None, lq_latent=None):
    """DPIR Apply LQ Condition on a 64×48 SD3 latent (zeros; no VAE needed), into a sink."""
    api = {"1": model_loader(GOOD), **(extra or {}),
           "2": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
           "3": {"class_type": "DPIRApplyLQCondition", "inputs": {
               "model": model_source, "lq_branch": branch_source, "lq_latent": lq_latent or ["2", 0],
               "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}}
    return sink(api, ["3", 0])


# ------------------------------------------------------------------ files


@pytest.mark.parametrize("name,needles", [
    ("empty", ["empty.safetensors", "is empty", "download it again"]),
    ("truncated", ["truncated.safetensors", "truncated or corrupted", "download it again"]),
    ("png_as_safetensors", ["photo_renamed.safetensors", "not a readable safetensors file"]),
    ("text_as_pth", ["readme_renamed.pth", "cannot be read as a PyTorch state dict"]),
    ("list_ckpt", ["list.ckpt", "does not hold a state dict of tensors"]),
    ("lying_offsets", ["lying_offsets.safetensors", "not a readable safetensors file"]),
    ("lying_shape", ["lying_shape.safetensors", "not a readable safetensors file"]),
    ("lying_header_size", ["lying_header_size.safetensors", "not a readable safetensors file"]),
    ("malicious", ["consolidated_malicious.pth", "refusing to load", "could run code"]),
    ("vae_as_transformer", ["vae_renamed.safetensors", "holds a VAE, not an SD3 transformer"]),
    ("no_lq", ["sd3_plain.safetensors", "has no LQ branch", "plain SD3 transformer", "lq_branch"]),
    ("control_mismatch", ["control_mismatch.safetensors", "does not fit this transformer", "same DPIR checkpoint"]),
])
def test_broken_or_foreign_transformer_file(server, files, name, needles):
    fails(server, sink({"1": model_loader(rel(files, name))}, ["1", 0]), "DPIRModelLoader", *needles)
    assert not files["marker"].exists()


@pytest.mark.parametrize("slot,node,api_of_name", [
    ("lq_branch", "DPIRModelLoader",
     lambda n: sink({"1": model_loader(GOOD, n)}, ["1", 1])),
    ("robust_vae", "DPIRRobustVAELoader",
     lambda n: sink({"1": {"class_type": "DPIRRobustVAELoader", "inputs": {"robust_vae": n}}}, ["1", 0])),
    ("t5_embedding", "DPIRT5TextPrompt",
     lambda n: sink({"1": {"class_type": "DPIRT5TextPrompt", "inputs": {"text": "", "t5_embedding": n}}}, ["1", 0])),
])
def test_hostile_pickle_is_refused_in_every_slot_and_never_runs(server, files, slot, node, api_of_name):
    fails(server, api_of_name(rel(files, "malicious")), node, "consolidated_malicious.pth", "refusing to load",
          "could run code")
    assert not files["marker"].exists()


@pytest.mark.parametrize("name,needles", [
    ("malicious_clip", ["clip_malicious.pth", "refusing to load", "could run code"]),
    ("garbage_clip", ["garbage.safetensors", "not a readable safetensors file"]),
    ("transformer_as_clip", ["lq_branch_as_clip.safetensors", "is not a CLIP vision tower"]),
])
def test_broken_or_foreign_clip_vision_file(server, files, name, needles):
    api = sink({"1": {"class_type": "DPIRCLIPVisionLoader", "inputs": {"clip_name": files[name].name}}}, ["1", 0])
    fails(server, api, "DPIRCLIPVisionLoader", *needles)
    assert not files["marker"].exists()


def test_paths_that_leave_the_model_folder(server, files, comfyui_path):
    # ComfyUI's own validation already refuses any name that is not in the loader's list: '..' and absolute paths
    for name in ("../vae/sd3_vae.safetensors", "/etc/passwd", str(files["outside_file"])):
        with pytest.raises(PromptRejected) as e:
            server.queue_prompt(sink({"1": model_loader(name)}, ["1", 0]))
        assert "value_not_in_list" in str(e.value) and "DPIRModelLoader" in str(e.value)
    # symbolic links inside the folder are listed, so they pass validation: the pack refuses them
    listed = server.object_info("DPIRModelLoader")["input"]["required"]["transformer"][0]
    for name in ("linked_file.safetensors", "linked_folder/diffusion_pytorch_model.safetensors"):
        assert name in listed
        fails(server, sink({"1": model_loader(name)}, ["1", 0]), "DPIRModelLoader",
              f"refusing '{name}'", "points outside the model folder",
              load_compat().path_config_name(comfyui_path))  # the YAML this host reads
    # the same file, inside the folder, loads
    entry = server.run(sink({"1": model_loader(GOOD)}, ["1", 0]), timeout=300)
    assert entry["status"]["status_str"] == "success"


def test_a_symlink_loop_in_the_model_folder_is_listed_once(server, files):
    loop = files["root"] / "dpir" / "loop"
    os.symlink(".", loop, target_is_directory=True)
    try:
        listed = server.object_info("DPIRModelLoader")["input"]["required"]["transformer"][0]
        assert not any(n.startswith("loop/") for n in listed) and GOOD in listed
    finally:
        loop.unlink()


def test_missing_file_in_process(pack_nodes, tmp_path):
    """A file deleted between listing and running (ComfyUI validates the name against the list first)."""
    model_files = sys.modules[f"{PACK_NAME}.nodes.model_files"]
    errors = sys.modules[f"{PACK_NAME}.models.errors"]
    with pytest.raises(errors.DPIRModelError, match=r"'gone\.safetensors' was not found.*models/dpir/.*Source"):
        model_files.resolve("dpir", "gone.safetensors", "dpir_transformer")
    with pytest.raises(errors.DPIRModelError, match="points outside the model folder"):
        model_files.resolve("dpir", "../vae/sd3_vae.safetensors", "dpir_transformer")
    with pytest.raises(errors.DPIRModelError, match="no file selected"):
        model_files.resolve("dpir", "none", "dpir_transformer")


# ------------------------------------------------------------------ wrong wiring, wrong models


def test_non_sd3_model_into_apply_lq_condition(server, files):
    unet = {"10": {"class_type": "UNETLoader", "inputs": {"unet_name": "sd15_unet.safetensors",
                                                           "weight_dtype": "default"}}}
    fails(server, apply_lq_api(["10", 0], ["1", 1], unet), "DPIRApplyLQCondition",
          "'model' of 'DPIR Apply LQ Condition' is not SD3", "detects it as SD15", "'DPIR Model Loader'")


def test_non_sd3_model_into_sampler_patch(server, files):
    api = {"10": {"class_type": "UNETLoader", "inputs": {"unet_name": "sd15_unet.safetensors", "weight_dtype": "default"}},
           "11": {"class_type": "DPIRT5TextPrompt", "inputs": {"text": "", "t5_embedding": PROMPT_EMBEDDING}},
           "12": {"class_type": "DPIRSamplerPatch", "inputs": {"model": ["10", 0], "positive": ["11", 0], "steps": 2,
                                                                "cfg": 1.0, "shift": 3.0}}}
    fails(server, sink(api, ["12", 1]), "DPIRSamplerPatch", "is not SD3", "detects it as SD15",
          "'DPIR Apply LQ Condition'")


def test_four_channel_vae(server, files, object_info, workflow_api):
    vae = {"10": {"class_type": "VAELoader", "inputs": {"vae_name": "sd15_vae.safetensors"}},
           "11": {"class_type": "LoadImage", "inputs": {"image": "wiring.png"}}}
    encode = {**vae, "12": {"class_type": "DPIRRobustVAEEncode", "inputs": {
        "image": ["11", 0], "vae": ["10", 0], "resize": "keep size", "long_side": 64, "upscale_factor": 1.0}}}
    fails(server, sink(encode, ["12", 0]), "DPIRRobustVAEEncode", "this VAE has 4 latent channels",
          "'DPIR Robust VAE Loader'")
    loader = {**vae, "12": {"class_type": "DPIRRobustVAELoader", "inputs": {
        "robust_vae": "robust_vae/diffusion_pytorch_model.safetensors", "vae": ["10", 0]}}}
    fails(server, sink(loader, ["12", 0]), "DPIRRobustVAELoader", "has 4 latent channels", "sd3_vae")
    # an SD1.5 (4-channel) latent as the LQ latent
    latent = {"10": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}}}
    fails(server, apply_lq_api(["1", 0], ["1", 1], latent, ["10", 0]), "DPIRApplyLQCondition",
          "must be a 16-channel SD3 latent", "'DPIR Robust VAE Encode'", error="DPIRInputError")


def _visual_api(local, summary):
    return sink({"10": {"class_type": "DPIRCLIPVisionLoader", "inputs": {"clip_name": "clip_vit_b32.safetensors"}},
                 "11": {"class_type": "DPIRCLIPVisionLoader", "inputs": {"clip_name": "clip_vision_g.safetensors"}},
                 "12": {"class_type": "LoadImage", "inputs": {"image": "wiring.png"}},
                 "13": {"class_type": "DPIRVisualPrompt", "inputs": {
                     "clip_vision_local": [local, 0], "clip_vision_summary": [summary, 0], "image": ["12", 0]}}},
                ["13", 0])


def test_clip_vision_towers_swapped(server, files):
    assert server.run(_visual_api("10", "11"), timeout=300)["status"]["status_str"] == "success"
    fails(server, _visual_api("11", "10"), "DPIRVisualPrompt", "gives 257 tokens",
          "'clip_vision_local' must be CLIP ViT-B/32", "swapped", error="DPIRInputError")


def test_clip_without_t5(server, files):
    api = {"10": {"class_type": "CLIPLoader", "inputs": {"clip_name": "clip_l_only.safetensors", "type": "sd3",
                                                          "device": "default"}},
           "11": {"class_type": "DPIRT5TextPrompt", "inputs": {"text": "a photo", "clip": ["10", 0],
                                                                "t5_embedding": "none"}}}
    fails(server, sink(api, ["11", 0]), "DPIRT5TextPrompt", "this CLIP holds no T5-XXL encoder", "'Load CLIP'",
          "type: sd3", "T5 embedding")


def test_lq_branch_of_another_width(server, files):
    fails(server, sink({"1": model_loader(GOOD, rel(files, "narrow_lq"))}, ["1", 0]), "DPIRModelLoader",
          "narrow_lq_branch.safetensors", "does not fit this transformer")
    narrow = {"10": model_loader(rel(files, "narrow"))}
    fails(server, apply_lq_api(["1", 0], ["10", 1], narrow), "DPIRApplyLQCondition",
          "the LQ branch is 64 wide but the model 128", "same 'DPIR Model Loader'")


def test_model_patched_twice(server, files):
    api = apply_lq_api(["1", 0], ["1", 1])
    api["4"] = {"class_type": "DPIRApplyLQCondition", "inputs": {**api["3"]["inputs"], "model": ["3", 0]}}
    api["99"]["inputs"]["source"] = ["4", 0]
    fails(server, api, "DPIRApplyLQCondition", "already has a DPIR LQ condition",
          "one 'DPIR Apply LQ Condition' per model", error="DPIRInputError")


@pytest.mark.parametrize("t5,node,needles", [
    ("t5_narrow", "DPIRDualPrompt", ["visual prompt is 64 wide but the T5 prompt only 32", "T5"]),
    ("t5_wide", "DPIRSamplerPatch", ["'positive' prompt is 128 wide", "reads 64-wide prompts", "T5"]),
])
def test_t5_prompt_of_another_width(server, files, object_info, workflow_api, t5, node, needles):
    api = api_of("dpir_restore", server, object_info, workflow_api, LoadImage={"image": "wiring.png"},
                 DPIRT5TextPrompt={"t5_embedding": rel(files, t5)})
    fails(server, api, node, *needles, error="DPIRInputError")


def test_dual_prompt_inputs_swapped(server, files, object_info, workflow_api):
    api = api_of("dpir_restore", server, object_info, workflow_api, LoadImage={"image": "wiring.png"})
    dual = api[node_id(api, "DPIRDualPrompt")]["inputs"]
    dual["visual_prompt"], dual["text_prompt"] = dual["text_prompt"], dual["visual_prompt"]
    fails(server, api, "DPIRDualPrompt", "are swapped", "'DPIR Visual Prompt' into 'visual_prompt'",
          error="DPIRInputError")


def test_server_still_serves_and_no_code_ran(server, files, object_info, workflow_api):
    api = api_of("dpir_restore", server, object_info, workflow_api, LoadImage={"image": "wiring.png"},
                 DPIRSamplerPatch={"steps": 1})
    entry = server.run(api, timeout=600)
    assert entry["status"]["status_str"] == "success" and server.output_images(entry)
    assert not files["marker"].exists()
    assert not list(files["outside"].glob(f"*{MARKER}*"))


def test_saving_a_t5_embedding_stays_in_the_model_folder(pack_nodes):
    import folder_paths

    errors = sys.modules[f"{PACK_NAME}.models.errors"]
    save = pack_nodes["DPIRSaveT5Embedding"]().save
    folder = Path(folder_paths.get_folder_paths("dpir")[-1])
    emb = torch.randn(1, 256, SPEC.joint_attention_dim)
    out = save([[emb, {}]], "../../escape attempt")  # path characters are dropped, the name is kept
    saved = folder / "escape attempt.safetensors"
    assert str(saved) in out["ui"]["text"][0] and saved.is_file()
    loaded = pack_nodes["DPIRT5TextPrompt"]().encode("", t5_embedding=saved.name)["result"][0][0][0]
    assert torch.equal(loaded, emb)
    for bad, match in (([], "CONDITIONING"), ([[torch.randn(256, 64), {}]], "CONDITIONING"),
                       ([[torch.full((1, 256, 64), float("nan")), {}]], "NaN")):
        with pytest.raises(errors.DPIRInputError, match=match):
            save(bad, "never")
    with pytest.raises(errors.DPIRInputError, match="usable file name"):
        save([[emb, {}]], "../..")
    assert not list(folder.glob("never*")) and not list(folder.glob("*.partial"))


def test_saving_a_t5_embedding_never_replaces_a_model_file_or_another_prompt_unasked(pack_nodes):
    import folder_paths
    from safetensors.torch import load_file

    errors = sys.modules[f"{PACK_NAME}.models.errors"]
    save = pack_nodes["DPIRSaveT5Embedding"]().save
    encode = pack_nodes["DPIRT5TextPrompt"]().encode
    folder = Path(folder_paths.get_folder_paths("dpir")[-1])
    width = SPEC.joint_attention_dim
    a, b = torch.randn(1, 256, width), torch.randn(1, 256, width)
    model = folder / "my_dpir_weights.safetensors"  # a name an artist could type, holding weights
    save_file({"x_embedder.proj.weight": torch.randn(4, 4)}, str(model))
    before = model.read_bytes()
    with pytest.raises(errors.DPIRInputError, match="model file, not a saved T5 prompt"):
        save([[a, {}]], "my_dpir_weights", overwrite=True)
    assert model.read_bytes() == before
    model.unlink()
    name = f"prompt_{uuid.uuid4().hex[:8]}"
    path = folder / f"{name}.safetensors"
    assert save([[a, {}]], name)["ui"]["text"] == [f"saved {path}"]
    assert save([[a, {}]], name)["ui"]["text"] == [f"already saved: {path}"]
    with pytest.raises(errors.DPIRInputError, match="already holds another T5 prompt.*overwrite"):
        save([[b, {}]], name)
    assert torch.equal(load_file(str(path))["t5_embedding"], a)
    save([[b, {}]], name, overwrite=True)
    assert torch.equal(encode("", t5_embedding=path.name)["result"][0][0][0], b)
    # one prompt per image (a batch of captions): one file each, checked before any is written
    batch = torch.cat([a, b])
    (folder / f"{name}_2.safetensors").write_bytes(before)  # a model file under the second name
    with pytest.raises(errors.DPIRInputError, match="model file"):
        save([[batch, {}]], name, overwrite=True)
    assert not (folder / f"{name}_1.safetensors").exists()
    (folder / f"{name}_2.safetensors").unlink()
    texts = save([[batch, {}]], name)["ui"]["text"]
    assert texts == [f"saved {folder / f'{name}_{i}.safetensors'}" for i in (1, 2)]
    for i, row in ((1, a), (2, b)):
        assert torch.equal(encode("", t5_embedding=f"{name}_{i}.safetensors")["result"][0][0][0], row)
    same = torch.cat([a, a])  # the same prompt for every image: one file
    assert save([[same, {}]], f"{name}_same")["ui"]["text"] == [f"saved {folder / f'{name}_same.safetensors'}"]
