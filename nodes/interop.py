"""A MODEL that reaches the DPIR sampler without its LQ condition would sample plain SD3 without a word.

The typical cause is a model merge with the DPIR MODEL as ``model2``: ModelMergeSimple / ModelMergeSD3_2B
(core ``ModelMergeBlocks``) clone ``model1`` -- its model options, where the LQ condition lives as a block patch
and wrappers -- and add only ``model2``'s weights (``get_key_patches``) as weight patches.
"""
from __future__ import annotations

from ..models.errors import DPIRInputError
from .lq_injection import injection_of


def merged(model) -> bool:
    """True when the MODEL carries weight patches from a model merge (another model's weights, as a list; a
    LoRA adds an adapter object)."""
    return any(isinstance(p[1], list) for ps in getattr(model, "patches", {}).values() for p in ps)


def require_lq_condition(model, node: str) -> None:
    """A DPIRInputError naming the cause when ``model`` carries no DPIR LQ condition."""
    if injection_of(model.model_options) is not None:
        return
    plain = "without it the sampler makes a plain SD3 picture that ignores the photo"
    if merged(model):
        raise DPIRInputError(
            f"the MODEL wired into '{node}' comes from a model merge (ModelMergeSimple, ModelMergeSD3_2B, ...) "
            "whose model1 has no DPIR LQ condition: a merge keeps only model1's patches and takes model2's weights, "
            "so the LQ condition of a DPIR model wired as model2 is dropped. Connect the DPIR model (the MODEL of "
            "'DPIR Apply LQ Condition') as model1, or put 'DPIR Apply LQ Condition' after the merge; " + plain)
    raise DPIRInputError(
        f"the MODEL wired into '{node}' has no DPIR LQ condition ('DPIR Apply LQ Condition' is bypassed or not in "
        "the graph): wire 'DPIR Model Loader' -> 'DPIR Apply LQ Condition' -> this node's 'model'; " + plain)
