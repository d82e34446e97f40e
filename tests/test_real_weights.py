"""bench/real_weights.py: its key tables equal diffusers'/transformers' own models (tiny and real size); the files
it writes tensor by tensor are valid safetensors in the official layouts and load through models/checkpoints.py."""
import importlib.util
import json
import struct

import pytest
import torch
from safetensors import safe_open

import tiny_models as tm
from dpir_pack.models.checkpoints import load_transformer, load_vae, sd3_pos_embed

from conftest import PACK_ROOT

_spec = importlib.util.spec_from_file_location("real_weights", PACK_ROOT / "bench" / "real_weights.py")
rw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rw)

SIZES = ["tiny", "sd3-medium"]


def shapes_of(model) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("position_ids")}


def as_shapes(table: dict) -> dict:
    return {k: tuple(v.shape) for k, v in table.items()}


@pytest.mark.parametrize("size", SIZES)
def test_transformer_table_is_diffusers_sd3_plus_the_lq_branch(size):
    spec = rw.spec_for(size)
    with torch.device("meta"):
        expected = shapes_of(tm._new_sd3(spec))
        expected.update({f"control_conv.{k}": s for k, s in shapes_of(tm._new_control_conv(spec)).items()})
    table = rw.transformer_shapes(spec)
    assert as_shapes(table) == expected
    if size == "sd3-medium":  # SD3-medium: 2.03 B parameters + its 56.6 M-entry position table + 8.3 M LQ branch
        assert rw.param_count(table) == pytest.approx(2.09e9, rel=0.01)
        assert rw.param_count({k: v for k, v in table.items() if k.startswith("control_conv.")}) == pytest.approx(
            8.3e6, rel=0.01)


@pytest.mark.parametrize("size", SIZES)
def test_vae_table_is_diffusers_autoencoderkl(size):
    spec = rw.spec_for(size)
    with torch.device("meta"):
        expected = shapes_of(tm._new_vae(spec, full=True))
    assert as_shapes(rw.vae_shapes(spec)) == expected
    assert as_shapes(rw.vae_shapes(spec, encoder_only=True)) == {k: v for k, v in expected.items()
                                                                  if k.startswith("encoder.")}


def test_real_size_towers_and_t5_have_the_published_sizes():
    spec = rw.spec_for("sd3-medium")
    assert rw.param_count(rw.clip_vision_shapes(spec, 2)) == pytest.approx(1.845e9, rel=0.01)  # ViT-bigG/14 tower
    assert rw.param_count(rw.clip_model_shapes(spec)) == pytest.approx(151.3e6, rel=0.01)  # clip-vit-base-patch32
    t5 = rw.t5_shapes(spec)
    assert rw.param_count(t5) == pytest.approx(4.762e9, rel=0.01)  # T5-XXL encoder
    assert "encoder.block.23.layer.1.DenseReluDense.wi_1.weight" in t5  # what ComfyUI detects T5-XXL by
    assert "encoder.embed_tokens.weight" not in t5 and "shared.weight" in t5


def test_tiny_t5_table_matches_the_tiny_models():
    assert as_shapes(rw.t5_shapes(tm.TinySpec())) == {k: tuple(v.shape) for k, v in tm.t5_state_dict().items()}


def test_position_table_is_sd3s_sincos():
    assert torch.allclose(rw._sincos(128, 16, 64), sd3_pos_embed(128, 16), atol=1e-6)


def test_written_files_are_valid_safetensors_in_the_official_layouts(tmp_path):
    spec = tm.TinySpec()
    paths = rw.write_model_set(tmp_path, "tiny", t5xxl=True, shard_gb=200_000 / rw.GiB)
    folder = paths["transformer"]
    index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((folder / s).is_file() for s in shards)
    assert not list(tmp_path.rglob("*.partial"))
    table = rw.transformer_shapes(spec)
    total = 0
    for s in shards:
        with safe_open(str(folder / s), "pt") as f:
            assert f.metadata() == {"format": "pt"}
            for k in f.keys():  # noqa: SIM118  (safe_open is no dict)
                t = f.get_tensor(k)
                assert t.dtype == torch.bfloat16 and t.shape == table[k].shape and torch.isfinite(t).all(), k
                assert index["weight_map"][k] == s
                total += t.numel() * 2
    assert total == index["metadata"]["total_size"]
    assert sorted(index["weight_map"]) == sorted(table)
    expected = {"sd3_vae": (torch.float16, rw.vae_shapes(spec)),
                "clip_vit_b32": (torch.float32, rw.clip_model_shapes(spec)),
                "clip_vision_g": (torch.float16, rw.clip_vision_shapes(spec, 2)),
                "t5xxl": (torch.float16, rw.t5_shapes(spec))}
    for name, (dtype, shapes) in expected.items():
        with safe_open(str(paths[name]), "pt") as f:
            assert sorted(f.keys()) == sorted(shapes), name
            for k in f.keys():  # noqa: SIM118  (safe_open is no dict)
                t = f.get_tensor(k)
                assert t.dtype == dtype and t.shape == shapes[k].shape and torch.isfinite(t).all(), (name, k)
    with safe_open(str(paths["t5_embedding"]), "pt") as f:
        assert f.get_tensor("t5_embedding").shape == (1, 256, spec.t5_d_model)
    # the header is 8-byte aligned as the format requires, and the data section ends the file exactly
    raw = paths["sd3_vae"].read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert n % 8 == 0 and max(v["data_offsets"][1] for v in header.values()) == len(raw) - 8 - n


def test_values_depend_on_the_name_not_the_write_order(tmp_path):
    spec = tm.TinySpec()
    table = rw.vae_shapes(spec)
    a = rw.write_safetensors(tmp_path / "a.safetensors", table, torch.float32, spec, "vae")
    b = rw.write_safetensors(tmp_path / "b.safetensors", dict(reversed(table.items())), torch.float32, spec, "vae")
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        for k in table:
            assert torch.equal(fa.get_tensor(k), fb.get_tensor(k)), k
    w = rw.random_tensor("decoder.up_blocks.0.resnets.0.norm1.weight", (64,), spec, "vae")
    assert (w - 1).abs().max() < 0.5 and w.std() > 0  # norm weights near 1, not degenerate


def test_written_folders_load_through_the_checkpoint_reader(tmp_path):
    spec = tm.TinySpec()
    paths = rw.write_model_set(tmp_path, "tiny", shard_gb=200_000 / rw.GiB)
    ckpt = load_transformer(paths["transformer"])
    assert ckpt.layout.startswith("diffusers folder (") and "shards" in ckpt.layout
    assert {k: ckpt.config[k] for k in tm.transformer_config(spec) if not k.startswith("_")} == {
        k: v for k, v in tm.transformer_config(spec).items() if not k.startswith("_")}
    assert sorted(ckpt.lq_state_dict) == sorted(tm.CONTROL_CONV_KEYS) and not ckpt.notes
    vae = load_vae(paths["robust_vae"])
    assert vae.has_decoder and sorted(vae.state_dict) == sorted(rw.vae_shapes(spec))
