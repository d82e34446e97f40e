"""Checkpoint reading: every official layout gives the same tensors; every broken file a clear error."""
import pytest
import torch

import tiny_models as tm
from dpir_pack.models.checkpoints import load_lq_branch, load_transformer, load_vae
from dpir_pack.models.errors import DPIRModelError

SPEC = tm.TinySpec()


@pytest.fixture(scope="module")
def expected():
    sd = tm.transformer_state_dict(SPEC, with_control=True)
    return ({k: v for k, v in sd.items() if not k.startswith("control_conv.")},
            {k: v for k, v in sd.items() if k.startswith("control_conv.")})


def assert_same(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k].float(), b[k].float()), k


LAYOUTS = {
    "diffusers folder": lambda d: tm.write_transformer_folder(d / "transformer", SPEC),
    "diffusers folder, sharded": lambda d: tm.write_transformer_folder(d / "transformer", SPEC, sharded=True),
    "single file, diffusers names": lambda d: tm.write_transformer_file(d / "t.safetensors", SPEC),
    "single file, MMDiT names": lambda d: tm.write_transformer_file(d / "t.safetensors", SPEC, naming="mmdit"),
    "SAI prefix": lambda d: tm.write_transformer_file(d / "t.safetensors", SPEC, naming="mmdit",
                                                      prefix="model.diffusion_model."),
    "consolidated pth": lambda d: tm.write_transformer_pth(d / "t.pth", SPEC),
    "consolidated pth, DDP prefix": lambda d: tm.write_transformer_pth(d / "t.pth", SPEC, module_prefix=True),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_transformer_layout_loads_identical_tensors(layout, tmp_path, expected):
    path = LAYOUTS[layout](tmp_path)
    ckpt = load_transformer(path)
    assert_same(ckpt.state_dict, expected[0])
    assert_same(ckpt.lq_state_dict, expected[1])
    cfg = ckpt.config
    assert (cfg["num_layers"], cfg["num_attention_heads"], cfg["joint_attention_dim"], cfg["pooled_projection_dim"]) \
        == (2, 2, SPEC.joint_attention_dim, SPEC.pooled_projection_dim)
    assert "with the LQ branch" in ckpt.describe()


def test_separate_lq_branch_file(tmp_path, expected):
    t = tm.write_transformer_file(tmp_path / "t.safetensors", SPEC, naming="mmdit", with_control=False)
    lq = tm.write_control_conv_file(tmp_path / "lq.safetensors", SPEC)
    assert load_transformer(t).lq_state_dict is None
    ckpt = load_transformer(t, lq_path=lq)
    assert_same(ckpt.lq_state_dict, expected[1])
    assert_same(load_lq_branch(lq), expected[1])
    with pytest.raises(DPIRModelError, match="only the LQ branch"):
        load_transformer(lq)


def test_real_sd3_medium_shapes_are_inferred():
    from diffusers import SD3Transformer2DModel

    from dpir_pack.models.checkpoints import _expected_shapes, infer_sd3_config

    real = dict(num_layers=24, num_attention_heads=24, attention_head_dim=64, joint_attention_dim=4096,
                caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192)
    with torch.device("meta"):
        sd = SD3Transformer2DModel(**real).state_dict()
    cfg = infer_sd3_config(sd)
    assert {k: cfg[k] for k in real} == real
    assert sum(s.numel() for s in _expected_shapes(cfg).values()) > 2.0e9


@pytest.mark.parametrize("layout", ["folder", "diffusers file", "ldm file", "encoder only, diffusers",
                                    "encoder only, ldm"])
def test_every_vae_layout_loads_identical_tensors(layout, tmp_path):
    want = tm.vae_state_dict(SPEC, robust=True)
    if layout == "folder":
        path = tm.write_vae_folder(tmp_path / "vae", SPEC, robust=True)
    elif layout == "diffusers file":
        path = tm.write_vae_file(tmp_path / "v.safetensors", SPEC, robust=True)
    elif layout == "ldm file":
        path = tm.write_vae_file(tmp_path / "v.safetensors", SPEC, robust=True, naming="ldm")
    else:
        naming = "diffusers" if layout.endswith("diffusers") else "ldm"
        path = tm.write_vae_file(tmp_path / "v.safetensors", SPEC, robust=True, naming=naming, encoder_only=True)
        want = {k: v for k, v in want.items() if k.startswith(("encoder.", "quant_conv."))}
    ckpt = load_vae(path)
    assert_same(ckpt.state_dict, want)
    assert ckpt.has_decoder == (not layout.startswith("encoder only"))
    assert_same(ckpt.encoder_state_dict(), {k: v for k, v in want.items() if k.startswith("encoder.")})
    # the robust encoder differs from the stock one, the decoder does not
    stock = tm.vae_state_dict(SPEC)
    assert not torch.equal(stock["encoder.conv_in.weight"], ckpt.state_dict["encoder.conv_in.weight"])


def test_truncated_file_is_named(tmp_path):
    path = tm.write_truncated_safetensors(tmp_path / "cut.safetensors", SPEC)
    with pytest.raises(DPIRModelError, match=r"cut\.safetensors.*(truncated|corrupted)"):
        load_transformer(path)


def test_lying_header_is_named(tmp_path):
    for kind in ("offsets", "shape"):
        path = tm.write_lying_header_safetensors(tmp_path / f"lie_{kind}.safetensors", kind=kind)
        with pytest.raises(DPIRModelError, match=f"lie_{kind}"):
            load_transformer(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(DPIRModelError, match="empty"):
        load_transformer(tmp_path / "empty.safetensors")
    with pytest.raises(DPIRModelError, match="does not exist"):
        load_transformer(tmp_path / "nope.safetensors")
    with pytest.raises(DPIRModelError, match="unknown weight format"):
        (tmp_path / "model.gguf").write_bytes(b"GGUF")
        load_transformer(tmp_path / "model.gguf")


def test_wrong_shapes_are_named(tmp_path):
    sd = tm.transformer_state_dict(SPEC)
    sd["transformer_blocks.1.attn.to_q.weight"] = torch.zeros(5, 5)
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(DPIRModelError, match=r"bad\.safetensors.*transformer_blocks\.1\.attn\.to_q\.weight \(5, 5\)"):
        load_transformer(tmp_path / "bad.safetensors")
    del sd["transformer_blocks.1.attn.to_q.weight"]
    save_file(sd, str(tmp_path / "missing.safetensors"))
    with pytest.raises(DPIRModelError, match=r"missing keys: transformer_blocks\.1\.attn\.to_q\.weight"):
        load_transformer(tmp_path / "missing.safetensors")


def test_lq_branch_of_another_width_is_refused(tmp_path):
    path = tm.write_mismatched_control_file(tmp_path / "mismatch.safetensors", SPEC) \
        if hasattr(tm, "write_mismatched_control_file") else None
    if path is None:
        sd = tm.transformer_state_dict(SPEC, with_control=False)
        sd.update(tm.control_conv_state_dict(SPEC, out_channels=SPEC.hidden * 2))
        from safetensors.torch import save_file

        path = tmp_path / "mismatch.safetensors"
        save_file(sd, str(path))
    with pytest.raises(DPIRModelError, match="does not fit this transformer"):
        load_transformer(path)


def test_sdxl_unet_is_named(tmp_path):
    path = tm.write_sdxl_unet_file(tmp_path / "sdxl.safetensors")
    with pytest.raises(DPIRModelError, match=r"sdxl\.safetensors.*SDXL"):
        load_transformer(path)
    with pytest.raises(DPIRModelError, match="not a VAE"):
        load_vae(path)


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tm.write_malicious_pth(tmp_path / "evil.pth", marker, SPEC)
    with pytest.raises(DPIRModelError, match=r"refusing to load .*evil\.pth"):
        load_transformer(path)
    with pytest.raises(DPIRModelError, match="refusing"):
        load_lq_branch(path)
    assert not marker.exists()


def test_four_channel_vae_is_refused(tmp_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4)
    vae.save_pretrained(tmp_path / "sd15_vae")
    with pytest.raises(DPIRModelError, match="4-channel VAE"):
        load_vae(tmp_path / "sd15_vae")


def test_missing_position_table_is_rebuilt_as_sd3s(tmp_path):
    from diffusers import SD3Transformer2DModel
    from safetensors.torch import save_file

    sd = tm.transformer_state_dict(SPEC)
    del sd["pos_embed.pos_embed"]
    save_file(sd, str(tmp_path / "no_pos.safetensors"))
    ckpt = load_transformer(tmp_path / "no_pos.safetensors")
    fresh = SD3Transformer2DModel(**{k: v for k, v in ckpt.config.items()})  # diffusers' own table
    torch.testing.assert_close(ckpt.state_dict["pos_embed.pos_embed"], fresh.pos_embed.pos_embed)
    assert any("rebuilt" in n for n in ckpt.notes)


def test_pos_embed_t5_file_replaces_the_table_like_the_released_scripts(tmp_path):
    folder = tm.write_transformer_folder(tmp_path / "transformer", SPEC)
    table = torch.randn(1, SPEC.pos_embed_max_size ** 2, SPEC.hidden)
    torch.save(table, tmp_path / "pos_embed.t5")  # beside the folder, as in the authors' working directory
    ckpt = load_transformer(folder)
    assert torch.equal(ckpt.state_dict["pos_embed.pos_embed"], table)
    torch.save({"x": table, "y": 1}, tmp_path / "pos_embed.t5")
    with pytest.raises(DPIRModelError, match="position table"):
        load_transformer(folder)
