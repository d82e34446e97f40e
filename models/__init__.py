"""DPIR model core in plain PyTorch. Never imports ComfyUI."""
