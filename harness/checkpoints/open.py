"""open_checkpoint: a path to the Checkpoint subclass that reads what it holds."""
from __future__ import annotations

from pathlib import Path

from harness.checkpoints.base import Checkpoint, CheckpointError
from harness.checkpoints.hf import HFCheckpoint
from harness.checkpoints.modelbin import ModelBinCheckpoint


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open a Hugging Face folder (config.json + safetensors) or an original `model.bin`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: give a Hugging Face folder, a model.bin, "
                              "or make one with `python -m harness make-model`")
    if path.is_dir() and (path / "config.json").exists() and any(path.glob("*.safetensors")):
        return HFCheckpoint(path)
    bin_path = path / "model.bin" if path.is_dir() else path
    if bin_path.suffix == ".bin" and bin_path.exists():
        return ModelBinCheckpoint(bin_path)
    raise CheckpointError(f"{path} holds neither config.json + *.safetensors nor a model.bin")
