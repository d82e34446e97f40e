"""Reading DPIR's official checkpoints in every layout a user may have.

One entry point per piece (``load_transformer``, ``load_lq_branch``,
``load_vae``) that detects the layout, converts it to diffusers names (the
official release's own naming), checks every key and shape against the
architecture inferred from the weights, and says what it found. Weights are
read with safetensors, or ``torch.load(weights_only=True)`` for ``.pth`` —
never an unrestricted unpickle.
"""
from __future__ import annotations

import json
import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from .errors import DPIRModelError

LQ_PREFIX = "control_conv."
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# prefixes that wrap a transformer state dict: DDP, SAI all-in-one, ComfyUI saves
TRANSFORMER_PREFIXES = ("module.", "model.diffusion_model.", "diffusion_model.")
VAE_PREFIXES = ("module.", "first_stage_model.", "vae.")
SD3_SHIFT, SD3_SCALE = 0.0609, 1.5305

# Key families that identify what a file is when it is not what we want.
_FOREIGN = (
    ("input_blocks.0.0.weight", "an SDXL / SD1.5 UNet (LDM layout)"),
    ("conv_in.weight", "a diffusers UNet"),
    ("double_blocks.0.img_attn.qkv.weight", "a Flux transformer"),
    ("encoder.conv_in.weight", "a VAE"),
    ("encoder.block.0.layer.0.SelfAttention.q.weight", "a T5 text encoder"),
    ("vision_model.embeddings.patch_embedding.weight", "a CLIP vision tower"),
)


def _describe(path: Path) -> str:
    return f"'{path}'"


def pickled_global(error: Exception) -> str | None:
    """The Python object a ``weights_only`` load refused (e.g. 'builtins.exec'), or None if it refused none."""
    m = re.search(r"GLOBAL ([\w.]+)", str(error))
    return m.group(1) if m else None


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of one weight file, with a clear error for every way it can be broken."""
    if not path.exists():
        raise DPIRModelError(f"model file {_describe(path)} does not exist")
    if path.stat().st_size == 0:
        raise DPIRModelError(f"model file {_describe(path)} is empty (an interrupted download?); download it again")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # SafetensorError, OSError...: whatever a broken file makes the reader raise
            raise DPIRModelError(f"model file {_describe(path)} is not a readable safetensors file ({e}); "
                                 "it is probably truncated or corrupted: download it again") from None
    if suffix in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
        except pickle.UnpicklingError as e:
            culprit = pickled_global(e)
            if culprit is None:  # not code, just bytes the unpickler does not understand
                raise DPIRModelError(f"model file {_describe(path)} cannot be read as a PyTorch state dict; it is "
                                     "probably truncated or corrupted: download it again") from None
            raise DPIRModelError(
                f"refusing to load {_describe(path)}: it contains Python objects other than tensors ({culprit}), "
                "which could run code when loaded. Use the official safetensors file, or a .pth that holds only a "
                "state dict of tensors") from None
        except Exception as e:  # RuntimeError, EOFError, IndexError...: whatever garbage makes the unpickler raise
            raise DPIRModelError(f"model file {_describe(path)} cannot be read as a PyTorch state dict "
                                 f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                                 "it is probably truncated or corrupted: download it again") from None
        # training scripts often wrap the weights one level down
        while isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
            obj = next(iter(obj.values()))
        for key in ("state_dict", "model", "module"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise DPIRModelError(f"{_describe(path)} does not hold a state dict of tensors")
        return obj
    raise DPIRModelError(f"{_describe(path)} has an unknown weight format '{suffix}'; "
                         f"expected one of {', '.join(WEIGHT_SUFFIXES)} or a diffusers folder")


def _read_diffusers_folder(folder: Path, stem: str) -> tuple[dict, dict | None, str]:
    """State dict and config of a ``save_pretrained`` folder (single file or shards with index)."""
    config_path = folder / "config.json"
    config = None
    if config_path.exists():
        try:
            config = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DPIRModelError(f"'{config_path}' is not valid JSON ({e})") from None
    index = folder / f"{stem}.safetensors.index.json"
    single = folder / f"{stem}.safetensors"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
            raise DPIRModelError(f"'{index}' is not a valid shard index ({e})") from None
        sd = {}
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            sd.update(_read_file(folder / shard))
        missing = sorted(set(weight_map) - set(sd))
        if missing:
            raise DPIRModelError(f"the shards in '{folder}' lack {len(missing)} tensors listed in its index, "
                                 f"e.g. {missing[:3]}; download the folder again")
        return sd, config, f"diffusers folder ({len(shards)} shards)"
    if single.exists():
        return _read_file(single), config, "diffusers folder"
    candidates = sorted(p for p in folder.iterdir() if p.suffix.lower() in WEIGHT_SUFFIXES)
    if len(candidates) == 1:
        return _read_file(candidates[0]), config, f"folder with {candidates[0].name}"
    raise DPIRModelError(f"no weights found in folder '{folder}': expected {stem}.safetensors "
                         f"(or its shards and {stem}.safetensors.index.json)")


def _strip_prefixes(sd: dict, prefixes) -> dict:
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def _foreign_kind(sd: dict) -> str | None:
    for key, what in _FOREIGN:
        if key in sd:
            return what
    return None


# --------------------------------------------------------------------------- transformer


@dataclass
class TransformerCheckpoint:
    """A DPIR transformer in diffusers names, split into the DiT and the LQ branch."""
    state_dict: dict
    lq_state_dict: dict | None
    config: dict
    layout: str
    source: str
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        cfg = self.config
        lq = "with the LQ branch" if self.lq_state_dict else "WITHOUT the LQ branch"
        return (f"{self.source}: SD3 transformer ({self.layout}, {cfg['num_layers']} blocks, width "
                f"{cfg['num_attention_heads'] * cfg['attention_head_dim']}, context {cfg['joint_attention_dim']}, "
                f"pooled {cfg['pooled_projection_dim']}) {lq}")


# the weights an SD3 transformer's architecture is read from, with their number of dimensions
_SD3_ANCHORS = {"pos_embed.proj.weight": 4, "pos_embed.pos_embed": 3, "context_embedder.weight": 2,
                "time_text_embed.text_embedder.linear_1.weight": 2, "proj_out.weight": 2}


def infer_sd3_config(sd: dict, source: str = "the transformer") -> dict:
    """``SD3Transformer2DModel`` config from diffusers-named weights (head size 64 as in every SD3)."""
    for key, ndim in _SD3_ANCHORS.items():
        t = sd.get(key)
        if not isinstance(t, torch.Tensor):
            raise DPIRModelError(f"{source} lacks {key}, so it is not a complete SD3 transformer: the file is "
                                 "truncated or another model; use the official DPIR transformer")
        if t.ndim != ndim or 0 in t.shape:
            raise DPIRModelError(f"{source}: {key} has the shape {tuple(t.shape)}, which no SD3 transformer has; "
                                 "the file is corrupted or another model")
    proj = sd["pos_embed.proj.weight"]
    hidden, in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    if hidden % 64:
        raise DPIRModelError(f"transformer width {hidden} is not a multiple of SD3's 64-wide attention heads")
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"transformer_blocks\.(\d+)\.", k))}
    pos = sd["pos_embed.pos_embed"]
    side = math.isqrt(pos.shape[1])
    if side * side != pos.shape[1] or sd["proj_out.weight"].shape[0] % (patch * patch) or not blocks:
        raise DPIRModelError(f"{source}: its position table ({pos.shape[1]} entries), output projection or "
                             "transformer blocks do not describe an SD3 transformer; the file is corrupted or "
                             "another model")
    return {
        "sample_size": 128,
        "patch_size": patch,
        "in_channels": in_channels,
        "num_layers": len(blocks),
        "attention_head_dim": 64,
        "num_attention_heads": hidden // 64,
        "joint_attention_dim": sd["context_embedder.weight"].shape[1],
        "caption_projection_dim": sd["context_embedder.weight"].shape[0],
        "pooled_projection_dim": sd["time_text_embed.text_embedder.linear_1.weight"].shape[1],
        "out_channels": sd["proj_out.weight"].shape[0] // (patch * patch),
        "pos_embed_max_size": side,
        "dual_attention_layers": tuple(sorted(i for i in blocks if f"transformer_blocks.{i}.attn2.to_q.weight" in sd)),
        "qk_norm": "rms_norm" if "transformer_blocks.0.attn.norm_q.weight" in sd else None,
    }


def _expected_shapes(config: dict, source: str = "the transformer") -> dict[str, torch.Size]:
    from diffusers import SD3Transformer2DModel

    args = {k: v for k, v in config.items() if not k.startswith("_")}
    try:
        with torch.device("meta"):
            model = SD3Transformer2DModel.from_config(args)
    except Exception as e:  # whatever diffusers raises for a geometry it cannot build
        raise DPIRModelError(f"{source}: its weights describe an SD3 transformer that cannot be built "
                             f"({type(e).__name__}: {str(e)[:200]}); the file is corrupted or another model") from None
    return {k: v.shape for k, v in model.state_dict().items()}


def check_against_architecture(sd: dict, expected: dict, source: str, what: str) -> None:
    """Name every missing, unexpected and mis-shaped key, or return quietly."""
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(expected[k])})"
             for k in sorted(set(sd) & set(expected)) if sd[k].shape != expected[k]]
    if not (missing or unexpected or wrong):
        return

    def few(items):
        return ", ".join(items[:6]) + (f" and {len(items) - 6} more" if len(items) > 6 else "")

    parts = []
    if wrong:
        parts.append(f"wrong shapes: {few(wrong)}")
    if missing:
        parts.append(f"missing keys: {few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {few(unexpected)}")
    raise DPIRModelError(f"{source} does not match the {what} its weights describe; " + "; ".join(parts))


def _to_diffusers_transformer(sd: dict, source: str) -> tuple[dict, str]:
    """Diffusers-named transformer weights from diffusers or MMDiT (SAI/ComfyUI) names."""
    if "transformer_blocks.0.attn.to_q.weight" in sd:
        return sd, "diffusers names"
    if "joint_blocks.0.context_block.attn.qkv.weight" in sd:
        from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

        rest = dict(sd)  # the converter pops what it knows: what is left is unexpected
        try:
            converted = convert_sd3_transformer_checkpoint_to_diffusers(rest)
        except KeyError as e:
            raise DPIRModelError(f"{source}: MMDiT weights lack {e.args[0]!r}; the file is incomplete") from None
        except Exception as e:  # IndexError, RuntimeError...: a tensor of an impossible shape
            raise DPIRModelError(f"{source}: MMDiT weights of impossible shapes ({type(e).__name__}: {e}); the file "
                                 "is corrupted") from None
        converted.update(rest)
        return converted, "SAI/ComfyUI MMDiT names"
    kind = _foreign_kind(sd)
    if kind:
        raise DPIRModelError(f"{source} holds {kind}, not an SD3 transformer. DPIR needs its SD3-based "
                             "transformer (the official 'transformer' folder or a single file made from it)")
    raise DPIRModelError(f"{source} is not an SD3 transformer: none of its {len(sd)} keys look like SD3 "
                         f"(first keys: {sorted(sd)[:3]})")


def sd3_pos_embed(hidden: int, max_size: int, sample_size: int = 128, patch: int = 2) -> torch.Tensor:
    """SD3's fixed 2-D sin-cos position table (1, max_size², hidden), as diffusers builds it."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    table = get_2d_sincos_pos_embed(hidden, max_size, base_size=sample_size // patch, interpolation_scale=1.0,
                                    output_type="pt")
    return table.float().unsqueeze(0)


def _fix_pos_embed(sd: dict, config: dict | None, path: Path, notes: list) -> None:
    """The position table the released scripts use.

    The authors' scripts overwrite a loaded folder's table with a separate
    ``pos_embed.t5`` file (``transformer.pos_embed.pos_embed.copy_(torch.load(
    'pos_embed.t5'))``): when that file sits in or beside the transformer
    folder it is used the same way. A missing or non-finite/all-zero table is
    rebuilt as SD3's sin-cos table.
    """
    hidden = sd["pos_embed.proj.weight"].shape[0]
    base = path if path.is_dir() else path.parent
    for candidate in (base / "pos_embed.t5", base.parent / "pos_embed.t5"):
        if candidate.is_file():
            try:
                table = torch.load(str(candidate), map_location="cpu", weights_only=True)
            except Exception as e:  # weights_only refuses code; any failure is reported the same way
                raise DPIRModelError(f"cannot read the position table '{candidate}': {str(e).splitlines()[0]}") from None
            if not isinstance(table, torch.Tensor) or table.ndim != 3 or table.shape[-1] != hidden:
                raise DPIRModelError(f"'{candidate}' should hold a (1, N, {hidden}) position table")
            sd["pos_embed.pos_embed"] = table.float()
            notes.append(f"position table taken from {candidate}, as the released scripts do")
            return
    table = sd.get("pos_embed.pos_embed")
    if table is None or not torch.isfinite(table).all() or not table.abs().max() > 0:
        size = (config or {}).get("pos_embed_max_size") or (round(math.sqrt(table.shape[1])) if table is not None else 192)
        sample = (config or {}).get("sample_size") or 128
        sd["pos_embed.pos_embed"] = sd3_pos_embed(hidden, size, sample, sd["pos_embed.proj.weight"].shape[-1])
        notes.append(f"the checkpoint's position table was {'missing' if table is None else 'unusable'}: "
                     f"rebuilt SD3's sin-cos table ({size}×{size})")


def _check_lq_fits(lq: dict, config: dict, source: str) -> None:
    from .lq_condition import LQCondition

    branch = LQCondition.from_state_dict(lq, source)  # validates the layout by itself
    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    if branch.hidden != hidden or branch.latent_channels != config["in_channels"]:
        raise DPIRModelError(
            f"{source}: the LQ branch ({branch.latent_channels}→{branch.hidden} channels) does not fit this "
            f"transformer ({config['in_channels']} latent channels, width {hidden}); both must come from the "
            "same DPIR checkpoint")


def read_weights(path) -> tuple[dict, dict | None, str]:
    """Raw tensors of a file or diffusers folder: (state dict, config or None, layout)."""
    path = Path(path)
    if path.is_dir():
        stems = [s for s in ("diffusion_pytorch_model", "model") if any(path.glob(f"{s}*.safetensors"))]
        return _read_diffusers_folder(path, stems[0] if stems else "diffusion_pytorch_model")
    sd = _read_file(path)
    return sd, None, f"single {path.suffix} file"


def load_transformer(path, lq_path=None) -> TransformerCheckpoint:
    """The DPIR transformer from a diffusers folder, one file (diffusers or MMDiT names) or a ``.pth``.

    ``lq_path`` names a separate file holding only ``control_conv.*`` (needed
    when the transformer file lacks it; it wins over one inside the file).
    """
    path = Path(path)
    source = _describe(path)
    sd, config, layout = read_weights(path)
    sd = _strip_prefixes(sd, TRANSFORMER_PREFIXES)
    lq = {k: v for k, v in sd.items() if k.startswith(LQ_PREFIX)}
    sd = {k: v for k, v in sd.items() if not k.startswith(LQ_PREFIX)}
    notes = []
    if not sd and lq:
        raise DPIRModelError(f"{source} holds only the LQ branch (control_conv); load the DPIR transformer "
                             "itself here and give this file as the separate LQ branch")
    sd, naming = _to_diffusers_transformer(sd, source)
    _fix_pos_embed(sd, config, path, notes)
    inferred = infer_sd3_config(sd, source)
    if config is not None:
        # the folder's config wins where it names an architecture field; it must agree with the weights
        given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k in inferred}
        clash = {k: (given[k], inferred[k]) for k in given
                 if k not in ("sample_size",) and given[k] != inferred[k]}
        if clash:
            notes.append(f"config.json disagrees with the weights on {clash}; using the weights")
    check_against_architecture(sd, _expected_shapes(inferred, source), source, "SD3 transformer")
    if lq_path is not None:
        lq = load_lq_branch(lq_path)
    if lq:
        _check_lq_fits(lq, inferred, source if lq_path is None else _describe(Path(lq_path)))
    return TransformerCheckpoint(sd, lq or None, inferred, f"{layout}, {naming}", source, notes)


def load_lq_branch(path) -> dict:
    """Only the ``control_conv.*`` weights, from a branch-only file or any transformer layout."""
    path = Path(path)
    sd, _, _ = read_weights(path)
    sd = _strip_prefixes(sd, TRANSFORMER_PREFIXES)
    lq = {k: v for k, v in sd.items() if k.startswith(LQ_PREFIX)}
    if not lq:
        raise DPIRModelError(f"{_describe(path)} has no LQ branch weights (control_conv.*): it is "
                             f"{_foreign_kind(sd) or 'not a DPIR checkpoint'}; use the official DPIR transformer "
                             "or its LQ-branch file")
    from .lq_condition import LQCondition

    LQCondition.from_state_dict(lq, _describe(path))
    return lq


# --------------------------------------------------------------------------- VAE


@dataclass
class VAECheckpoint:
    """A (robust) SD3 VAE in diffusers ``AutoencoderKL`` names; the decoder may be absent."""
    state_dict: dict
    config: dict
    layout: str
    source: str

    @property
    def has_decoder(self) -> bool:
        return any(k.startswith("decoder.") for k in self.state_dict)

    def encoder_state_dict(self) -> dict:
        return {k: v for k, v in self.state_dict.items() if k.startswith(("encoder.", "quant_conv."))}


def infer_vae_config(sd: dict, ldm: bool, source: str = "the VAE") -> dict:
    """``AutoencoderKL`` config of an SD3-family VAE from its encoder weights."""
    try:
        return _infer_vae_config(sd, ldm)
    except KeyError as e:
        raise DPIRModelError(f"{source} lacks {e.args[0]}, so it is not a complete VAE: the file is truncated or "
                             "another model; use the official robust VAE") from None
    except (IndexError, AttributeError, TypeError):
        raise DPIRModelError(f"{source}: the encoder's weights have shapes no SD3 VAE has; the file is corrupted "
                             "or another model") from None


def _infer_vae_config(sd: dict, ldm: bool) -> dict:
    if ldm:
        downs = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
        widths = [sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in downs]
        layers = len({m.group(1) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))})
    else:
        downs = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))})
        widths = [sd[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in downs]
        layers = len({m.group(1) for k in sd if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k))})
    latent = sd["encoder.conv_out.weight"].shape[0] // 2
    return {
        "in_channels": sd["encoder.conv_in.weight"].shape[1],
        "out_channels": sd["encoder.conv_in.weight"].shape[1],
        "down_block_types": ["DownEncoderBlock2D"] * len(widths),
        "up_block_types": ["UpDecoderBlock2D"] * len(widths),
        "block_out_channels": widths,
        "layers_per_block": layers,
        "latent_channels": latent,
        "norm_num_groups": 32,
        "shift_factor": SD3_SHIFT if latent == 16 else None,
        "scaling_factor": SD3_SCALE if latent == 16 else 0.18215,
        "use_quant_conv": "quant_conv.weight" in sd,
        "use_post_quant_conv": "post_quant_conv.weight" in sd,
    }


def load_vae(path) -> VAECheckpoint:
    """A (robust) VAE: diffusers folder, single file in diffusers or LDM names, or encoder only."""
    from diffusers import AutoencoderKL

    path = Path(path)
    source = _describe(path)
    sd, config, layout = read_weights(path)
    sd = _strip_prefixes(sd, VAE_PREFIXES)
    if "encoder.conv_in.weight" not in sd:
        raise DPIRModelError(f"{source} is not a VAE (no encoder.conv_in.weight): it holds "
                             f"{_foreign_kind(sd) or 'something else'}. Use the official robust VAE "
                             "(the 'denoise VAE' folder) or its encoder weights")
    ldm = any(k.startswith("encoder.down.") for k in sd)
    inferred = infer_vae_config(sd, ldm, source)
    if config is not None:
        inferred.update({k: v for k, v in config.items() if k in inferred and k not in ("block_out_channels",)})
    if ldm:
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        try:
            sd = convert_ldm_vae_checkpoint(sd, inferred)
        except KeyError as e:
            raise DPIRModelError(f"{source}: LDM VAE weights lack {e.args[0]!r}; the file is incomplete") from None
        except Exception as e:  # IndexError, RuntimeError...: a tensor of an impossible shape
            raise DPIRModelError(f"{source}: LDM VAE weights of impossible shapes ({type(e).__name__}: {e}); the "
                                 "file is corrupted") from None
        layout += ", LDM names"
    if inferred["latent_channels"] != 16:
        raise DPIRModelError(f"{source} is a {inferred['latent_channels']}-channel VAE; DPIR needs an SD3 "
                             "(16-channel) VAE — the official robust VAE or SD3's own")
    try:
        with torch.device("meta"):
            model = AutoencoderKL.from_config({k: v for k, v in inferred.items()})
    except Exception as e:  # whatever diffusers raises for a geometry it cannot build
        raise DPIRModelError(f"{source}: its weights describe a VAE that cannot be built ({type(e).__name__}: "
                             f"{str(e)[:200]}); the file is corrupted or another model") from None
    expected = model.state_dict()
    has_decoder = any(k.startswith("decoder.") for k in sd)
    if not has_decoder:
        expected = {k: v for k, v in expected.items() if not k.startswith(("decoder.", "post_quant_conv."))}
        layout += ", encoder only"
    check_against_architecture(sd, {k: v.shape for k, v in expected.items()}, source, "SD3 VAE")
    return VAECheckpoint(sd, inferred, layout, source)
