"""DPIR Caption with tiny random vision-language models of two families (Qwen2.5-VL, LLaVA), through a real server.

The models are written at test time (tests/tiny_vlms.py: real processors,
tokenizers trained locally, nothing downloaded) into the server's
models/LLM/ (ComfyUI's folder) and models/dpir_caption/ (the pack's). Their
captions are random text, which is all these tests need: the same text for
the same image under greedy decoding, one per image of a batch, the text
arriving unchanged in DPIR T5 Text Prompt and tokenised as the release does.
"""
from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

import tiny_vlms as tv
from host.comfy_harness import PACK_NAME, ExecutionFailed
from host.dpir_env import PHOTO, PROMPT_EMBEDDING, api_of, saved_images, write_photo

# model folders, and their entries in the caption node's list (each folder is listed by its config.json)
QWEN_DIR, LLAVA_DIR = "tiny-qwen2.5-vl", "tiny-llava"
QWEN, LLAVA = f"{QWEN_DIR}/config.json", f"{LLAVA_DIR}/config.json"
T5_TOKENS = 256


@pytest.fixture(scope="module")
def vlms(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlms")
    qwen, llava = tv.write_qwen25_vl(root / QWEN_DIR), tv.write_llava(root / LLAVA_DIR)
    not_vlm = root / "not-a-vlm"  # a T5 encoder folder: a Hugging Face model, but no vision-language model
    not_vlm.mkdir()
    (not_vlm / "config.json").write_text('{"model_type": "t5", "d_model": 8}')
    shutil.copy(qwen / "model.safetensors", not_vlm / "model.safetensors")
    no_processor = root / "no-processor"
    shutil.copytree(qwen, no_processor)
    (no_processor / "processor_config.json").unlink()
    return {"qwen": qwen, "llava": llava, "not_vlm": not_vlm, "no_processor": no_processor}


@pytest.fixture(scope="module")
def server(dpir_server, vlms, tmp_path_factory):
    inputs = tmp_path_factory.mktemp("caption_inputs")
    dpir_server.add_input(write_photo(inputs / PHOTO))
    dpir_server.add_input(write_photo(inputs / "photo2.png", seed=7))
    # real folders (the pack refuses links that leave a model folder)
    for key, name in (("LLM", "qwen"), ("dpir_caption", "llava"), ("LLM", "not_vlm"), ("LLM", "no_processor")):
        shutil.copytree(vlms[name], dpir_server.models_dir / key / vlms[name].name, dirs_exist_ok=True)
    return dpir_server


def caption_api(model, images=(PHOTO,), seed=0, prefix="", suffix="", **caption):
    """LoadImage(s) → [ImageBatch] → DPIR Caption → DPIR T5 Text Prompt (embedding file) → Save T5 Embedding."""
    api = {"1": {"class_type": "LoadImage", "inputs": {"image": images[0]}}}
    image = ["1", 0]
    if len(images) > 1:
        api["2"] = {"class_type": "LoadImage", "inputs": {"image": images[1]}}
        api["3"] = {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}}
        image = ["3", 0]
    api["10"] = {"class_type": "DPIRCaption", "inputs": {
        "image": image, "caption_model": model, "instruction": "Describe the photo.", "max_new_tokens": 12,
        "sampling": "greedy", "sampling_seed": seed, "dtype": "auto", "keep_loaded": False, **caption}}
    api["11"] = {"class_type": "DPIRT5TextPrompt", "inputs": {"text": ["10", 0], "t5_embedding": PROMPT_EMBEDDING,
                                                            "prefix": prefix, "suffix": suffix}}
    api["12"] = {"class_type": "DPIRSaveT5Embedding", "inputs": {"text_prompt": ["11", 0],
                                                               "name": f"cap_{uuid.uuid4().hex[:8]}"}}
    return api


def texts(entry, node):
    return entry["outputs"][node]["text"]


@pytest.mark.parametrize("model", [QWEN, f"{LLAVA}"])
def test_two_families_caption_greedily_one_per_image(server, model):
    assert {QWEN, LLAVA} <= set(server.object_info("DPIRCaption")["input"]["required"]["caption_model"][0])
    first = server.run(caption_api(model, images=(PHOTO, "photo2.png"), seed=0), timeout=300)
    again = server.run(caption_api(model, images=(PHOTO, "photo2.png"), seed=1), timeout=300)  # greedy: seed unused
    single = server.run(caption_api(model, images=(PHOTO,), seed=2), timeout=300)
    captions = texts(first, "10")
    assert len(captions) == 2 and all(isinstance(c, str) and c for c in captions)
    assert texts(again, "10") == captions
    assert texts(single, "10") == captions[:1]  # each image is captioned on its own
    # the T5 prompt node received the captions unchanged, one prompt per image
    assert [t.split(") ", 1)[1] for t in texts(first, "11")] == captions


def test_sampling_follows_the_seed(server):
    def sampled(images, seed):
        return texts(server.run(caption_api(QWEN, images=images, seed=seed, sampling="sample"), timeout=300), "10")

    pair, single, other = sampled((PHOTO, "photo2.png"), 5), sampled((PHOTO,), 5), sampled((PHOTO,), 6)
    assert single == pair[:1]  # image i is sampled with seed + i, whatever the batch
    assert other != single


def test_prefix_and_suffix_frame_the_caption(server):
    entry = server.run(caption_api(QWEN, prefix="film photo, 1970s,", suffix="upscale 4x", seed=3), timeout=300)
    caption = texts(entry, "10")[0]
    assert texts(entry, "11")[0].split(") ", 1)[1] == f"film photo, 1970s, {caption}, upscale 4x"


@pytest.mark.parametrize("folder, says", [
    ("not-a-vlm", ["not-a-vlm", "holds a t5 model, not a vision-language model"]),
    ("no-processor", ["no-processor", "lacks its image processor", "processor_config.json"]),
])
def test_unusable_folder_is_a_clear_error(server, folder, says):
    with pytest.raises(ExecutionFailed) as e:
        server.run(caption_api(f"{folder}/config.json"), timeout=300)
    text = str(e.value)
    assert "DPIRCaption" in text and all(s in text for s in says), text
    assert "Traceback" not in text.split("\n")[0]


def test_autoprompt_workflow_runs(server, object_info, workflow_api):
    api = api_of("dpir_restore_autoprompt", server, object_info, workflow_api,
                 DPIRCaption={"caption_model": QWEN, "max_new_tokens": 12})
    entry = server.run(api, timeout=900)
    image = saved_images(server, entry)[0]
    assert image.shape == (54, 72, 3) and np.isfinite(image).all() and image.std() > 0
    cap = next(k for k, v in api.items() if v["class_type"] == "DPIRCaption")
    t5 = next(k for k, v in api.items() if v["class_type"] == "DPIRT5TextPrompt")
    assert [t.split(") ", 1)[1] for t in texts(entry, t5)] == texts(entry, cap)


# ---------------------------------------------------------------- in-process (ComfyUI imported, real model management)

def test_model_is_offloaded_after_use_and_captions_fit_t5(pack_nodes, vlms, tmp_path):
    import comfy.model_management as mm
    import comfy.text_encoders.sd3_clip as sd3_clip
    import folder_paths
    import torch
    from transformers import T5TokenizerFast

    caption_mod = sys.modules[f"{PACK_NAME}.nodes.caption"]
    t5_only_tokens = sys.modules[f"{PACK_NAME}.nodes.text_prompt"].t5_only_tokens
    extra = tmp_path / "extra_llm"  # as extra_model_paths.yaml adds it under the key LLM
    shutil.copytree(vlms["qwen"], extra / "from-extra-paths")
    folder_paths.add_model_folder_path("LLM", str(extra))
    assert "from-extra-paths/config.json" in caption_mod.list_caption_models()

    node = pack_nodes["DPIRCaption"]()
    image = torch.rand(2, 40, 56, 3, generator=torch.Generator().manual_seed(1))

    def patchers():
        return [lm.model for lm in mm.current_loaded_models if lm.model is not None and
                lm.model in [p for p, *_ in caption_mod._cache.values()]]

    args = dict(caption_model="from-extra-paths/config.json", instruction="Describe the photo.", sampling="greedy", sampling_seed=0,
                dtype="auto")
    out = node.caption(image, max_new_tokens=400, keep_loaded=False, **args)
    assert patchers() == []  # unloaded from ComfyUI's loaded models right after captioning
    patcher = next(iter(caption_mod._cache.values()))[0]
    assert next(patcher.model.parameters()).dtype == torch.float32  # 'auto' on a CPU
    kept = node.caption(image, max_new_tokens=8, keep_loaded=True, **args)
    assert patchers() == [patcher]
    caption_mod._unload(patcher)
    assert len(kept["result"][0]) == 2

    # cut to what T5's 256 tokens hold, at a word boundary, with a warning on the node; tokenised as released
    hf = T5TokenizerFast.from_pretrained(str(Path(sd3_clip.__file__).parent / "t5_tokenizer"))
    captions = out["result"][0]
    _, processor, model_type = next(iter(caption_mod._cache.values()))
    from PIL import Image

    from dpir_pack.models.captioning import caption_images

    pixels = (image.numpy() * 255).round().astype(np.uint8)
    raw = caption_images(patcher.model.vlm, processor, model_type, [Image.fromarray(p) for p in pixels],
                         instruction="Describe the photo.", max_new_tokens=400)
    long = [len(hf(r).input_ids) > T5_TOKENS for r in raw]
    for r, c, cut in zip(raw, captions, long):
        assert len(hf(c).input_ids) <= T5_TOKENS
        assert (c != r and r.startswith(c) and r[len(c):][:1] in (" ", ",", ";", ":")) if cut else c == r
    assert bool(out["ui"]["warning"][0]) == any(long)

    class TokenizerOnlyCLIP:
        """ComfyUI's real SD3 tokenizer; T5-XXL itself is too large to build here."""
        cond_stage_model = type("M", (), {"t5xxl": object()})()
        tokenizer = sd3_clip.SD3Tokenizer()

        def tokenize(self, text, **kwargs):
            return self.tokenizer.tokenize_with_weights(text, **kwargs)

    for c in captions:
        ours = [t[0] for t in t5_only_tokens(TokenizerOnlyCLIP(), c)["t5xxl"][0]]
        assert ours == hf(c, padding="max_length", max_length=T5_TOKENS, truncation=True).input_ids
