"""The files of a PEFT adapter folder (torch-free, so the CLI can name them before importing torch)."""

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"
DIFFUSERS_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LoRA folders (LORA_WEIGHT_NAME_SAFE)
ADAPTER_FILES = (CONFIG_NAME, SAFETENSORS_NAME, BIN_NAME, DIFFUSERS_WEIGHTS_NAME)  # what a load reads in a folder


def weights_candidates(folder: str) -> list[str]:
    """The weights files PEFT would read, in its order of preference (safetensors first)."""
    import os

    return [os.path.join(folder, SAFETENSORS_NAME), os.path.join(folder, BIN_NAME)]
