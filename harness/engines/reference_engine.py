"""The reference forward as an engine, so the harness can run and time it like any variant."""
from __future__ import annotations

import numpy as np
import torch

from harness.engines.base import Engine
from harness.engines.reference import (WeightCache, _Weights, check_prompts, check_tokens, reference_forward,
                                       reference_logits)
from harness.engines.reference_generate import SequenceCache, _chunk


class ReferenceEngine(Engine):
    """float64 on the CPU (exact), float32 on a GPU with TF32 off. One prompt at a time."""

    name = "reference"
    max_batch = 8
    supports_generation = True

    def __init__(self, checkpoint, device=0, dtype: str | None = None, **options):
        super().__init__(checkpoint, device, **options)
        on_gpu = isinstance(device, int) and torch.cuda.is_available()
        self.torch_device = f"cuda:{device}" if on_gpu else "cpu"
        self.dtype = dtype or ("fp32" if on_gpu else "fp64")
        self._torch_dtype = {"fp64": torch.float64, "fp32": torch.float32}[self.dtype]
        torch.backends.cuda.matmul.allow_tf32 = False
        self._cache = WeightCache()

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        return reference_logits(self.checkpoint, tokens, dtype=self._torch_dtype, device=self.torch_device,
                                cache=self._cache)

    def touched_experts(self, tokens: np.ndarray) -> list[int]:
        out = reference_forward(self.checkpoint, tokens, dtype=self._torch_dtype, device=self.torch_device,
                                debug=True, cache=self._cache)
        return [int(torch.unique(out.router_indices[i]).numel()) for i in self.config.moe_layers]

    @torch.no_grad()
    def prefill(self, prompts) -> np.ndarray:
        """prompts: int [batch, prompt_len], or a list of 1-D arrays of different lengths (each
        sequence keeps its own cache, so nothing is padded)."""
        prompts = check_prompts(prompts, self.config)
        self._W = _Weights(self.checkpoint, self._torch_dtype, self.torch_device, self._cache)
        self._seqs = [SequenceCache() for _ in prompts]
        return self._step([row for row in prompts])

    @torch.no_grad()
    def decode(self, tokens: np.ndarray) -> np.ndarray:
        tokens = check_tokens(np.asarray(tokens).reshape(-1, 1), self.config)
        if len(tokens) != len(getattr(self, "_seqs", [])):
            raise ValueError("decode needs one token per sequence of the last prefill")
        return self._step([row for row in tokens])

    def _step(self, chunks) -> np.ndarray:
        embed = self._W("embed_tokens.weight")
        out = np.empty((len(chunks), self.config.vocab_size), np.float32)
        for b, (ids, seq) in enumerate(zip(chunks, self._seqs)):
            out[b] = _chunk(embed[torch.as_tensor(ids, device=embed.device)], self._W, self.config, seq).float().cpu()
        return out

    def synchronize(self) -> None:
        if self.torch_device.startswith("cuda"):
            torch.cuda.synchronize(self.torch_device)

    def close(self) -> None:
        self._cache.tensors.clear()
