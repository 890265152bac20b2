"""The optimized engine's generation state and decode step.

Memory plan of one generation (DecodePlan), sized from (batch, max_len) when `prefill` starts it:

| buffer                      | shape / dtype                          | holds                                  |
|-----------------------------|----------------------------------------|----------------------------------------|
| k[i], v[i] per attention    | [B, nkv, max_len, hd], engine dtype    | post-norm post-RoPE K, raw V           |
| conv[i] per ShortConv layer | [B, L-1, H], engine dtype              | last L-1 columns of B*x, oldest first  |
| lengths                     | [B] int32 on the device                | positions in the cache; the new token  |
|                             |                                        | of sequence b goes to lengths[b]       |
| part_o, part_ml             | [B, nh, nsplit, hd|2] fp32             | flash-decoding partials                |
| work                        | an engine Plan for [B, 1]              | token ids, activations, MoE buffers,   |
|                             |                                        | logits and their pinned host copies    |

Prefill runs the engine's forward body over the prompts (right-padded to the longest: causal
attention and causal conv leave real positions untouched by padding to their right) with a
PrefillFill hooked in: after q/k norm + RoPE the layer's K/V go to the cache's first S slots;
after in_proj each sequence's conv state is cut from its own last L-1 real positions; the LM head
runs on each sequence's own last real row; lengths = the real lengths. Decode attends only to
positions < lengths[b] + 1, so padded slots are never read and are overwritten as it goes.

The decode step (decode_body) is the forward's layer loop for T = B tokens with the decode mixers
(in_proj GEMM + conv_step, one conv_in_step launch at B <= 2; fused qkv GEMM, decode attention with
the q/k norm and RoPE in it, out GEMM); the FFN/MoE, norms and LM head are the engine's own helpers. Its
last launch (the argmax) also advances lengths on the device, so the step is captured once as a
CUDA graph per decode plan and replayed.

Its argmax writes the greedy ids into the step's own input ids (D.next_ids is D.work.ids), so a
replay right after a replay decodes the tokens the GPU just chose: the engine's greedy_steps
streams a generation that way, one step queued ahead, the host only downloading each step's ids
(into D.ids_ring, two pinned slots: the step being read and the step in flight).
"""
from __future__ import annotations

import numpy as np
import torch

from harness.engines.reference import check_prompts

from .decode_kernels import ArgmaxScratch
from .gemv import CONV_STEP_MAX_TOKENS

ELEMENT_BYTES = {"fp32": 4, "bf16": 2, torch.float32: 4, torch.bfloat16: 2}


def cache_bytes(cfg, batch: int, max_len: int, dtype) -> int:
    """Bytes of the generation caches: K and V of every attention layer over max_len positions
    plus the conv state of every ShortConv layer, for `batch` sequences, in `dtype` ("fp32"/"bf16"
    or the torch dtype)."""
    if dtype not in ELEMENT_BYTES:
        raise ValueError(f"dtype {dtype!r} not supported; choose fp32 or bf16")
    if batch < 1 or max_len < 1:
        raise ValueError("batch and max_len must be >= 1")
    kv = len(cfg.attention_layers) * 2 * cfg.num_key_value_heads * max_len * cfg.head_dim
    conv = len(cfg.conv_layers) * (cfg.conv_L_cache - 1) * cfg.hidden_size
    return batch * (kv + conv) * ELEMENT_BYTES[dtype]


def check_room(lengths, max_len: int, steps: int, doing: str) -> None:
    """Refuse (ValueError) when a sequence of `lengths` would need more than max_len cache
    positions after `steps` more tokens."""
    need = int(np.max(lengths)) + int(steps)
    if need > max_len:
        raise ValueError(f"{doing} needs {need} cache positions for the longest sequence but the engine was built "
                         f"with max_len={max_len}; build it with max_len={need} or more, or generate fewer tokens")


def pad_prompts(prompts, cfg) -> tuple[np.ndarray, np.ndarray]:
    """An int [B, S] array or a list of 1-D prompts of any lengths -> (int32 [B, longest] right-
    padded with the pad id, int32 [B] real lengths)."""
    rows = check_prompts(prompts, cfg)
    lengths = np.array([len(r) for r in rows], np.int32)
    padded = np.full((len(rows), int(lengths.max())), cfg.pad_token_id, np.int32)
    for b, r in enumerate(rows):
        padded[b, :len(r)] = r
    return padded, lengths


class DecodePlan:
    """Caches and buffers of one generation of `work.B` sequences (see the module table)."""

    def __init__(self, cfg, work, max_len: int, nsplit: int):
        B, dtype, dev = work.B, work.h.dtype, work.h.device
        nh, nkv, hd, H = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        self.B, self.max_len, self.work, self.nsplit = B, max_len, work, nsplit
        self.k = {i: torch.empty((B, nkv, max_len, hd), dtype=dtype, device=dev) for i in cfg.attention_layers}
        self.v = {i: torch.empty((B, nkv, max_len, hd), dtype=dtype, device=dev) for i in cfg.attention_layers}
        self.conv = {i: torch.zeros((B, cfg.conv_L_cache - 1, H), dtype=dtype, device=dev) for i in cfg.conv_layers}
        self.lengths = torch.zeros(B, dtype=torch.int32, device=dev)
        self.len_host = np.zeros(B, np.int64)  # the host's copy of lengths (checked before each step)
        self.part_o = torch.empty((B, nh, nsplit, hd), dtype=torch.float32, device=dev)
        self.part_ml = torch.empty((B, nh, nsplit, 2), dtype=torch.float32, device=dev)
        # each step's greedy choice lands in the next step's input ids: a replay after it decodes
        # the chosen tokens with no host round trip (only the embedding, the step's first launch,
        # reads ids; decode/decode_greedy upload the caller's ids over it)
        self.next_ids = work.ids
        self.argmax = ArgmaxScratch(B, cfg.vocab_size, dev)
        self.next_ids_host = torch.empty(B, dtype=torch.int32, pin_memory=True)
        self.ids_ring = torch.empty((2, B), dtype=torch.int32, pin_memory=True)  # streamed steps' ids, by parity
        self.active = False  # a prefill filled the caches
        self.streaming = False  # a greedy_steps stream is open (steps may be queued on the GPU)
        self.graph = None
        self.capture_tried = False

    def nbytes(self) -> int:
        caches = [*self.k.values(), *self.v.values(), *self.conv.values()]
        return sum(t.numel() * t.element_size() for t in caches)


class PrefillFill:
    """The hooks the engine's forward body calls during a prefill of sequences b0 .. b0 + B - 1 of
    decode plan D (the prompts right-padded to S; `lengths` their real lengths, already on the
    device in D.lengths)."""

    def __init__(self, DK, D: DecodePlan, b0: int, lengths: np.ndarray, S: int):
        B = len(lengths)
        self.DK, self.D, self.b0, self.B, self.S = DK, D, b0, B, S
        self.lengths = D.lengths[b0:b0 + B]
        dev = D.lengths.device
        self.rows = torch.as_tensor(np.arange(B) * S + lengths - 1, dtype=torch.long, device=dev)
        self.last = torch.empty((B, D.work.h.shape[1]), dtype=D.work.h.dtype, device=dev)

    def keep_kv(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [B, nkv, S, hd] of the prompts -> the cache's first S positions."""
        sl = slice(self.b0, self.b0 + self.B)
        self.D.k[layer][sl, :, :self.S].copy_(k)
        self.D.v[layer][sl, :, :self.S].copy_(v)

    def keep_conv(self, layer: int, bcx: torch.Tensor) -> None:
        self.DK.conv_state_fill(bcx, self.lengths, self.D.conv[layer][self.b0:self.b0 + self.B], self.S)

    def last_rows(self, h: torch.Tensor) -> torch.Tensor:
        """Each sequence's last real row of the final-normed h [B*S, H]."""
        return torch.index_select(h, 0, self.rows, out=self.last)


def decode_body(eng, D: DecodePlan) -> None:
    """One decode step's device work, for the token ids already in D.work.ids: logits of every
    sequence in D.work.logits_f32 and their argmax in D.next_ids (= D.work.ids, the next step's
    input), caches extended by one position, lengths advanced."""
    cfg, DK, P = eng.config, eng.DK, D.work
    eps = cfg.norm_eps

    def mix(i: int, L: dict) -> None:
        if cfg.is_attention(i):
            eng._mm(P.h, L["qkv"], P.qkv)
            DK.qkv_decode_attention(P.qkv, L["q_norm"], L["k_norm"], D.lengths, D.k[i], D.v[i], P.o, D.part_o,
                                    D.part_ml, eps, cfg.rope_theta)
            eng._out_proj(i, L, P.o, P)
        else:
            if eng.use_gemv and P.T <= CONV_STEP_MAX_TOKENS:  # in_proj and the conv step in one launch
                eng.G.conv_in_step(P.h, L["in"], L["conv_w"], D.conv[i], P.cy)
            else:
                eng._mm(P.h, L["in"], P.bcx)
                DK.conv_step(P.bcx, L["conv_w"], D.conv[i], P.cy)
            eng._out_proj(i, L, P.cy, P)

    eng._layers(P, mix)
    eng._lm_head(P.h, P)
    DK.argmax_rows(P.logits_f32, D.next_ids, D.argmax, advance=D.lengths)
