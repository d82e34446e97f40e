"""A full tiny restoration with the core, against the independent diffusers reference."""
import pytest
import torch

import reference
import tiny_models as tm
from dpir_pack.models.checkpoints import load_transformer, load_vae
from dpir_pack.models.dual_prompt import visual_prompt
from dpir_pack.models.lq_condition import LQCondition
from dpir_pack.models.restore import DPIRPipeline, resize_long_side
from dpir_pack.models.text_prompt import encode_text, load_t5_embedding
from dpir_pack.models.visual_encoders import HFVisionEncoder, clip_preprocess, load_hf_vision_encoder

SPEC = tm.TinySpec()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return {
        "transformer": tm.write_transformer_folder(d / "transformer", SPEC),
        "vae": tm.write_vae_folder(d / "robust_vae", SPEC, robust=True),
        "clip1": tm.write_clip_vision_folder(d / "clip1", SPEC, which=1),
        "clip2": tm.write_clip_vision_folder(d / "clip2", SPEC, which=2),
        "t5": tm.write_t5_folder(d / "t5", SPEC),
        "t5_embedding": tm.write_t5_embedding(d / "prompt.safetensors", SPEC, prompt="a sharp photo"),
    }


@pytest.fixture(scope="module")
def pipeline(files):
    from diffusers import AutoencoderKL, SD3Transformer2DModel

    ckpt = load_transformer(files["transformer"])
    transformer = SD3Transformer2DModel.from_config(ckpt.config)
    transformer.load_state_dict(ckpt.state_dict)
    vae_ckpt = load_vae(files["vae"])
    vae = AutoencoderKL.from_config(vae_ckpt.config)
    vae.load_state_dict(vae_ckpt.state_dict)
    return DPIRPipeline(transformer.eval(), LQCondition.from_state_dict(ckpt.lq_state_dict).eval(), vae.eval(),
                        load_hf_vision_encoder(files["clip1"]), load_hf_vision_encoder(files["clip2"]))


def lq_image(seed=0, h=64, w=96):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h // 8, w // 8, generator=g)
    return torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)


def test_t5_embedding_file_equals_encoding(files):
    from transformers import AutoTokenizer, T5EncoderModel

    tok = AutoTokenizer.from_pretrained(str(files["t5"]))
    t5 = T5EncoderModel.from_pretrained(str(files["t5"])).eval()
    ours = encode_text(tok, t5, "a sharp photo")
    theirs = reference.t5_embedding(tok, t5, "a sharp photo")
    assert ours.shape == (1, 256, SPEC.t5_d_model)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(load_t5_embedding(files["t5_embedding"]), ours, rtol=1e-5, atol=1e-5)


def test_clip_preprocessing_close_to_hf_processor():
    img = lq_image(3, 300, 500)
    ours, theirs = clip_preprocess(img), reference.clip_pixels(img)
    assert ours.shape == theirs.shape == (1, 3, 224, 224)
    # torch antialiased bicubic vs the processor's resampling: same geometry, small interpolation differences
    assert (ours - theirs).abs().mean() < 0.02


def test_visual_prompt_matches_reference(files, pipeline):
    from transformers import CLIPVisionModelWithProjection

    img = lq_image(1, 64, 96)
    clip1 = CLIPVisionModelWithProjection.from_pretrained(str(files["clip1"])).eval()
    clip2 = CLIPVisionModelWithProjection.from_pretrained(str(files["clip2"])).eval()
    t5 = torch.zeros(1, 256, SPEC.joint_attention_dim)
    with torch.no_grad():
        ref_ctx, ref_pooled = reference.dual_prompt(img, clip1, clip2, t5, SPEC.joint_attention_dim)
        tokens, pooled = visual_prompt(img, img, pipeline.encoder1, pipeline.encoder2, SPEC.joint_attention_dim)
    assert tokens.shape == ref_ctx[:, :77].shape
    # identical layout; the values differ only through the CLIP resampling (previous test)
    zero = ref_ctx[:, :77] == 0
    assert torch.equal(tokens == 0, zero)
    assert torch.allclose(pooled, ref_pooled, rtol=0.1, atol=0.1)
    # fed the same pixels, the towers give the reference's numbers exactly
    with torch.no_grad():
        px = reference.clip_pixels(img)
        hidden = clip1(pixel_values=px).last_hidden_state
        enc1 = HFVisionEncoder(clip1)
        torch.testing.assert_close(enc1.model(pixel_values=px).last_hidden_state, hidden)


def _reference_restore(files, pipeline, img, t5, steps, seed, guidance=1.0, strength=1.0):
    conv = reference.control_conv_from_weights({f"control_conv.{k}": v for k, v in
                                                pipeline.lq_branch.control_conv.state_dict().items()})
    return reference.restore(img, pipeline.transformer, conv, pipeline.vae, *_hf_towers(files), t5,
                             steps=steps, seed=seed, guidance_scale=guidance, control_scale=strength)


def _hf_towers(files):
    from transformers import CLIPVisionModelWithProjection

    return [CLIPVisionModelWithProjection.from_pretrained(str(files[k])).eval() for k in ("clip1", "clip2")]


def test_restore_is_deterministic_and_conditioned_on_lq(files, pipeline):
    t5 = load_t5_embedding(files["t5_embedding"])
    img = lq_image(0)
    a = pipeline.restore(img, t5, steps=4, seed=7)
    b = pipeline.restore(img, t5, steps=4, seed=7)
    other = pipeline.restore(lq_image(5), t5, steps=4, seed=7, colour_fix=False)
    same_no_fix = pipeline.restore(img, t5, steps=4, seed=7, colour_fix=False)
    assert a.shape == img.shape and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert (other - same_no_fix).abs().max() > 1e-3  # the LQ branch really conditions the output
    assert not torch.equal(pipeline.restore(img, t5, steps=4, seed=8), a)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_restore_equals_reference_given_the_same_prompt_pixels(files, pipeline, guidance, monkeypatch):
    """With the reference's CLIP pixels, the core's restoration equals the reference's to float precision."""
    import dpir_pack.models.visual_encoders as ve

    monkeypatch.setattr(ve, "clip_preprocess", lambda images, size=224: reference.clip_pixels(images))
    t5 = load_t5_embedding(files["t5_embedding"])
    img = lq_image(2)
    ours = pipeline.restore(img, t5, steps=4, seed=3, guidance=guidance, strength=0.8, colour_fix=False)
    theirs = _reference_restore(files, pipeline, img, t5, steps=4, seed=3, guidance=guidance, strength=0.8)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_resize_long_side():
    out = resize_long_side(torch.rand(1, 3, 300, 500), 1024)
    assert out.shape == (1, 3, 608, 1024)
