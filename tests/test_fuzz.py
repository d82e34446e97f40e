"""Fuzzing of the pure functions with hypothesis: whatever they are given, they either work or raise the
pack's own clear errors (DPIRError subclasses) — never an IndexError, KeyError or shape error from torch.

* prompt assembly (models/dual_prompt.py): random batch sizes, token counts, widths, image sizes, tile
  settings and visual encoders that return random geometries;
* checkpoint key mapping and loading (models/checkpoints.py, models/lq_condition.py): the tiny official
  transformer / VAE / LQ-branch state dicts with keys dropped, added, renamed and re-shaped at random, and
  random key sets, read through the loaders' real code (files replaced by the generated dicts), plus random
  bytes as files;
* .pth files holding random (tensor-only, so loadable) structures, and T5 embedding files;
* tile planning (models/tiling.py) with random plans and tiles (token_aligned_plan, which lives with the
  ComfyUI nodes, is fuzzed in tests/host/test_fuzz_tiles.py).
"""
from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tiny_models as tm
from dpir_pack.models import checkpoints
from dpir_pack.models import dual_prompt as dp
from dpir_pack.models import tiling
from dpir_pack.models.errors import DPIRError
from dpir_pack.models.lq_condition import LQCondition, inject
from dpir_pack.models.text_prompt import load_t5_embedding

SPEC = tm.TinySpec()
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)


def only_our_errors(call):
    """Run ``call``; a DPIRError is a clear refusal, anything else fails the test."""
    try:
        return call()
    except DPIRError as e:
        assert str(e), "a DPIRError must say what is wrong"
        return None


# ------------------------------------------------------------------ prompt assembly

dims = st.integers(0, 6)
small = st.integers(1, 5)


def tensor(shape):
    return torch.randn(*shape) if all(d >= 0 for d in shape) else None


class FakeEncoder:
    """A visual encoder returning ``tokens`` hidden states of width ``hidden`` and embeds of width ``proj``."""

    def __init__(self, tokens, hidden, proj):
        self.tokens, self.hidden, self.proj = tokens, hidden, proj

    def __call__(self, images):
        b = images.shape[0]
        return torch.randn(b, self.tokens, self.hidden), torch.randn(b, self.proj)


@FUZZ
@given(st.lists(st.integers(0, 5), min_size=1, max_size=4), st.lists(st.integers(0, 5), min_size=1, max_size=4),
       st.integers(-2, 90), st.integers(-2, 9))
def test_token_and_feature_padding(shape_a, shape_b, length, width):
    a, b = torch.randn(*shape_a), torch.randn(*shape_b)
    out = only_our_errors(lambda: dp.pad_tokens(a, length))
    if out is not None:
        assert out.shape[1] == length
    only_our_errors(lambda: dp.pad_features(a, width))
    only_our_errors(lambda: dp.dual_context(a, b))
    only_our_errors(lambda: dp.pooled_vector(a, b))
    only_our_errors(lambda: dp.zero_prompt(a, b))
    only_our_errors(lambda: dp.visual_tokens(a, b, width, max(length, 1)))


@FUZZ
@given(st.integers(-3, 5000), st.integers(-3, 3000), st.integers(-3, 3000))
def test_tile_starts(size, tile, overlap):
    starts = only_our_errors(lambda: dp.tile_starts(size, tile, overlap))
    if starts is not None:
        assert starts[0] == 0 and all(0 <= s <= max(0, size - tile) for s in starts)
        covered = max(s + min(tile, size) for s in starts)
        assert covered == size
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


@FUZZ
@given(small, st.integers(1, 300), st.integers(1, 300), st.integers(1, 120), st.integers(1, 16),
       st.integers(1, 16), st.integers(1, 16), st.integers(8, 512), st.integers(0, 128),
       st.one_of(st.none(), st.integers(1, 64)), st.integers(1, 90))
def test_visual_prompt_with_random_geometries(batch, h, w, tokens1, hidden1, tokens2, proj2, tile, overlap,
                                              context, length):
    images = torch.rand(batch, 3, h, w)
    enc1, enc2 = FakeEncoder(tokens1, hidden1, 7), FakeEncoder(tokens2, 5, proj2)
    out = only_our_errors(lambda: dp.visual_prompt(images, images[:1], enc1, enc2, context, tile, overlap, length))
    if out is not None:
        seq, pooled = out
        assert seq.shape == (batch, length, context or hidden1 + proj2) and pooled.shape == (batch, hidden1 + proj2)
        assert torch.isfinite(seq).all()


@FUZZ
@given(st.lists(st.integers(0, 4), min_size=0, max_size=5), st.integers(0, 70))
def test_visual_prompt_with_wrong_image_shapes(shape, length):
    images = torch.rand(*shape) if shape else torch.tensor(0.5)
    enc = FakeEncoder(3, 4, 4)
    only_our_errors(lambda: dp.visual_prompt(images, images, enc, enc, None, 64, 8, max(1, length)))


# ------------------------------------------------------------------ checkpoints: keys and shapes


def transformer_sd():
    return tm.transformer_state_dict(SPEC, with_control=True)


SHAPES = st.lists(st.integers(0, 9), min_size=0, max_size=4)


@st.composite
def mutated(draw, base):
    """``base`` with a few keys dropped, added, renamed or re-shaped; sometimes wrapped in a prefix."""
    sd = dict(base)
    keys = sorted(sd)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["drop", "reshape", "add", "rename", "drop_family"]))
        key = draw(st.sampled_from(keys))
        if op == "drop":
            sd.pop(key, None)
        elif op == "reshape":
            sd[key] = torch.zeros(draw(SHAPES))
        elif op == "add":
            sd[draw(st.sampled_from(keys + ["x", "input_blocks.0.0.weight", "encoder.conv_in.weight",
                                            "control_conv.7.weight", "pos_embed.pos_embed"]))
               + draw(st.sampled_from(["", ".extra", "_"]))] = torch.zeros(draw(SHAPES))
        elif op == "rename" and key in sd:
            sd[key.replace(".", draw(st.sampled_from(["_", "..", ".0."])), 1)] = sd.pop(key)
        elif op == "drop_family":
            family = key.split(".")[0]
            sd = {k: v for k, v in sd.items() if not k.startswith(family)}
    prefix = draw(st.sampled_from(["", "", "module.", "model.diffusion_model.", "first_stage_model."]))
    return {prefix + k: v for k, v in sd.items()}


def load_from_dict(loader, sd, *args):
    """Run a loader on ``sd`` as if a file had held it (the reading itself is fuzzed below)."""
    with mock.patch.object(checkpoints, "read_weights", return_value=(sd, None, "fuzzed dict")):
        return loader("fuzzed.safetensors", *args)


@FUZZ
@given(mutated(transformer_sd()))
def test_transformer_loading_of_mutated_state_dicts(sd):
    only_our_errors(lambda: load_from_dict(checkpoints.load_transformer, sd))
    only_our_errors(lambda: load_from_dict(checkpoints.load_lq_branch, sd))


@FUZZ
@given(mutated(tm.mmdit_state_dict(SPEC, with_control=True)))
def test_mmdit_named_transformer_loading_of_mutated_state_dicts(sd):
    only_our_errors(lambda: load_from_dict(checkpoints.load_transformer, sd))


@FUZZ
@given(mutated(tm.vae_state_dict(SPEC, robust=True)))
def test_vae_loading_of_mutated_state_dicts(sd):
    only_our_errors(lambda: load_from_dict(checkpoints.load_vae, sd))


@FUZZ
@given(st.dictionaries(st.text(min_size=0, max_size=40), SHAPES.map(torch.zeros), max_size=8))
def test_loaders_with_random_key_sets(sd):
    for loader in (checkpoints.load_transformer, checkpoints.load_lq_branch, checkpoints.load_vae):
        only_our_errors(lambda: load_from_dict(loader, sd))


@FUZZ
@given(mutated(tm.control_conv_state_dict(SPEC)), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9))
def test_lq_branch_of_mutated_weights(sd, batch, h, w):
    branch = only_our_errors(lambda: LQCondition.from_state_dict(sd, "fuzzed"))
    if branch is not None:
        feats = only_our_errors(lambda: branch.features(torch.randn(batch, branch.latent_channels, h, w)))
        assert feats is None or feats.shape == (batch, math.ceil(h / 2) * math.ceil(w / 2), branch.hidden)


@FUZZ
@given(st.lists(st.integers(0, 5), min_size=1, max_size=4), st.lists(st.integers(0, 5), min_size=1, max_size=4),
       st.floats(-2, 2))
def test_inject_with_random_shapes(h_shape, c_shape, strength):
    only_our_errors(lambda: inject(torch.randn(*h_shape), torch.randn(*c_shape), strength))


@settings(FUZZ, max_examples=40)
@given(st.binary(max_size=300), st.sampled_from([".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".gguf", ""]))
def test_random_bytes_as_model_files(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("bytes") / f"random{suffix}"
    path.write_bytes(data)
    for loader in (checkpoints.load_transformer, checkpoints.load_lq_branch, checkpoints.load_vae,
                   load_t5_embedding):
        only_our_errors(lambda: loader(path))


tensors = st.lists(st.integers(0, 4), max_size=4).map(torch.zeros)
pickled = st.recursive(st.one_of(st.none(), st.integers(), st.text(max_size=8), tensors),
                       lambda inner: st.one_of(st.lists(inner, max_size=3),
                                               st.dictionaries(st.text(max_size=12), inner, max_size=3)),
                       max_leaves=8)


@settings(FUZZ, max_examples=40)
@given(pickled, st.sampled_from([".pth", ".pt", ".safetensors"]))
def test_random_structures_as_model_and_embedding_files(tmp_path_factory, obj, suffix):
    path = tmp_path_factory.mktemp("structures") / f"random{suffix}"
    if suffix == ".safetensors":
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            obj = {"t": torch.zeros(2)}
        from safetensors.torch import save_file

        save_file({str(k): v for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, str(path))
    for loader in (checkpoints.load_transformer, checkpoints.load_lq_branch, checkpoints.load_vae,
                   load_t5_embedding):
        only_our_errors(lambda: loader(path))


# ------------------------------------------------------------------ tile planning


@FUZZ
@given(st.integers(1, 700), st.integers(1, 700), st.integers(1, 200), st.integers(0, 200), st.integers(-500, 500),
       st.integers(-500, 500), st.sampled_from([0.01, 0.02, 1e-4, 1.0]))
def test_plans_and_blends(height, width, tile, overlap, shift_y, shift_x, var):
    plan = only_our_errors(lambda: tiling.shifted_plan(height, width, tile, overlap, shift_y, shift_x))
    if plan is None:
        assert overlap >= tile
        return
    if len(plan) <= 64:
        blend = tiling.blend_weights(plan, height, width, var=var)
        acc = torch.zeros(height, width)
        for t, wt in zip(plan, blend.weights):
            acc[t.slices] += wt
        assert torch.allclose(acc, torch.ones_like(acc), atol=1e-4)
