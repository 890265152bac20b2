"""The peer: transformers' own Lfm2MoeForCausalLM on the same weights.

It needs a Hugging Face folder (the synthetic checkpoints are written as one). Logits are
taken at the last position only (`logits_to_keep=1`), as the job asks.
"""
from __future__ import annotations

import inspect

import numpy as np
import torch

from harness.engines.base import Engine


DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class HFEngine(Engine):
    name = "hf"
    max_batch = 64
    supports_generation = True
    counts_transfers = False  # transformers moves the tensors; the harness's counters never see it

    def __init__(self, checkpoint, device=0, dtype: str = "bf16", **options):
        super().__init__(checkpoint, device, **options)
        if dtype not in DTYPES:  # before the slow transformers import
            raise ValueError(f"the hf engine runs {' or '.join(DTYPES)}, not {dtype!r}")
        try:
            import transformers
        except ImportError:
            raise RuntimeError("the hf engine needs transformers: pip install '.[dev]'") from None
        folder = getattr(checkpoint, "path", None)
        if folder is None or not (folder / "config.json").exists():
            raise RuntimeError("the hf engine loads a Hugging Face folder; give --model DIR with config.json "
                               "and safetensors (make one with `python -m harness make-model`)")
        self.dtype = dtype
        torch_dtype = DTYPES[dtype]
        on_gpu = isinstance(device, int) and torch.cuda.is_available()
        self.torch_device = f"cuda:{device}" if on_gpu else "cpu"
        self.model = transformers.Lfm2MoeForCausalLM.from_pretrained(folder, dtype=torch_dtype).to(self.torch_device).eval()
        # the KV cache's name in forward() and its output: `cache` in recent transformers, which deprecates
        # `past_key_values` (warning on every decode step), the name of earlier 5.x releases
        self._cache_name = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    @torch.no_grad()
    def forward(self, tokens: np.ndarray) -> np.ndarray:
        ids = torch.as_tensor(np.asarray(tokens, np.int64), device=self.torch_device)
        out = self.model(ids, logits_to_keep=1, use_cache=False)
        return out.logits[:, -1].float().cpu().numpy()

    @torch.no_grad()
    def prefill(self, prompts: np.ndarray) -> np.ndarray:
        """Equal-length prompts (the harness's synthetic sets), so no padding or mask is needed."""
        ids = torch.as_tensor(np.asarray(prompts, np.int64), device=self.torch_device)
        out = self.model(ids, use_cache=True, logits_to_keep=1)
        self._past = getattr(out, self._cache_name)
        return out.logits[:, -1].float().cpu().numpy()

    @torch.no_grad()
    def decode(self, tokens: np.ndarray) -> np.ndarray:
        ids = torch.as_tensor(np.asarray(tokens, np.int64).reshape(-1, 1), device=self.torch_device)
        out = self.model(ids, use_cache=True, logits_to_keep=1, **{self._cache_name: self._past})
        self._past = getattr(out, self._cache_name)
        return out.logits[:, -1].float().cpu().numpy()

    def synchronize(self) -> None:
        if self.torch_device.startswith("cuda"):
            torch.cuda.synchronize(self.torch_device)

    def close(self) -> None:
        del self.model
