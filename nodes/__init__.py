"""ComfyUI adapters: one module per concern, each with its own mappings."""
import importlib

# Order = order in the node menu.
_MODULES = ("loaders", "robust_encode", "tiled_vae", "visual_prompt", "caption", "restoration_prompt", "text_prompt", "dual_prompt",
            "lq_injection", "tiled_sampling", "sampler", "colour_fix")

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _name in _MODULES:
    _mod = importlib.import_module(f".{_name}", __name__)
    NODE_CLASS_MAPPINGS.update(_mod.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_mod.NODE_DISPLAY_NAME_MAPPINGS)

from . import downloads  # noqa: E402,F401  (its routes: POST /dpir/download, /dpir/model_hashes)
