"""The T5 half of the dual prompt: 256 tokens of T5-XXL's last hidden state."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .checkpoints import _read_file, pickled_global
from .dual_prompt import T5_TOKENS
from .errors import DPIRModelError


@torch.no_grad()
def encode_text(tokenizer, t5, prompts, length: int = T5_TOKENS) -> torch.Tensor:
    """T5 embedding (B, length, width) as the released code computes it (padded, truncated, no mask)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    ids = tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                    return_tensors="pt").input_ids
    p = next(t5.parameters())
    return t5(input_ids=ids.to(p.device)).last_hidden_state


def compose_prompt(prefix: str, text: str, suffix: str) -> str:
    """``prefix``, ``text`` and ``suffix`` joined by ", " (a bare space after a part that ends in punctuation);
    empty parts are left out: "film photo, 1970s," + "a red house" → "film photo, 1970s, a red house"."""
    out = ""
    for part in (prefix, text, suffix):
        part = (part or "").strip()
        if part:
            out = part if not out else f"{out} {part}" if out.endswith((",", ";", ":", ".")) else f"{out}, {part}"
    return out


def load_t5_embedding(path) -> torch.Tensor:
    """A precomputed T5 embedding (1, N, width) from ``.safetensors`` (one tensor) or a ``.pt`` tensor."""
    path = Path(path)
    if path.suffix.lower() in (".pt", ".pth"):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # weights_only refuses code
            culprit = pickled_global(e)
            if culprit is None:
                raise DPIRModelError(f"cannot read the T5 embedding '{path}': the file is corrupted") from None
            raise DPIRModelError(
                f"refusing to load '{path}': it contains Python objects other than tensors ({culprit}), which could "
                "run code when loaded. Make the embedding again with 'DPIR Save T5 Embedding' (a .safetensors "
                "file)") from None
        except Exception as e:  # report any other failure the same way
            why = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
            raise DPIRModelError(f"cannot read the T5 embedding '{path}' ({why}): the file is missing, empty or "
                                 "corrupted; make it again with 'DPIR Save T5 Embedding'") from None
        tensors = obj if isinstance(obj, dict) else {"t5_embedding": obj}
    else:
        tensors = _read_file(path)
    tensors = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    emb = tensors.get("t5_embedding", next(iter(tensors.values())) if len(tensors) == 1 else None)
    if emb is None:
        raise DPIRModelError(f"'{path}' should hold one T5 embedding tensor; found {sorted(tensors)}")
    if emb.ndim == 2:
        emb = emb[None]
    if emb.ndim != 3:
        raise DPIRModelError(f"the T5 embedding in '{path}' has shape {tuple(emb.shape)}; expected (1, tokens, width)")
    return emb.float()
