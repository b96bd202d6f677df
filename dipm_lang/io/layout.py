"""The files of a PEFT adapter folder (torch-free, so the CLI can name them before importing torch)."""

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"
ADAPTER_FILES = (CONFIG_NAME, SAFETENSORS_NAME, BIN_NAME)  # what open_adapter reads in a folder


def weights_candidates(folder: str) -> list[str]:
    """The weights files PEFT would read, in its order of preference (safetensors first)."""
    import os

    return [os.path.join(folder, SAFETENSORS_NAME), os.path.join(folder, BIN_NAME)]
