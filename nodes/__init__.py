"""ComfyUI adapters: one module per concern, each with its own mappings."""
import importlib

# Order = order in the node menu.
_MODULES = ("loaders", "robust_encode", "visual_prompt", "text_prompt", "dual_prompt", "lq_injection", "sampler", "colour_fix")

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _name in _MODULES:
    try:
        _mod = importlib.import_module(f".{_name}", __name__)
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{_name}":  # a module not written yet
            continue
        raise
    NODE_CLASS_MAPPINGS.update(_mod.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_mod.NODE_DISPLAY_NAME_MAPPINGS)
