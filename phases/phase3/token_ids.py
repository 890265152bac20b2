"""Host-side check of token ids before they reach the GPU embedding gather.

The gather kernel indexes the table with each id, so a bad id must be stopped on the host, before
anything is uploaded or launched. The check runs on the ids' own integer type: casting first to
int32 would turn 2**32 + 5 into the valid id 5.
"""
from __future__ import annotations

import numpy as np


def checked_ids(ids, vocab_size: int) -> np.ndarray:
    """`ids` (any shape, any integer dtype) as a flat C-contiguous int32 array, after checking that
    every id is in [0, vocab_size). ValueError names the first bad id, its position and the vocab."""
    a = np.asarray(ids)
    if not np.issubdtype(a.dtype, np.integer):  # bool and float are not ids
        raise ValueError(f"token ids must be integers, got dtype {a.dtype}; pass an int32 array of ids")
    if a.size == 0:
        raise ValueError(f"no token ids (shape {a.shape}): the embedding needs at least one token")
    if not 0 < vocab_size <= np.iinfo(np.int32).max:
        raise ValueError(f"vocab_size {vocab_size} must be in 1..{np.iinfo(np.int32).max} for int32 ids")
    bad = (a < 0) | (a >= vocab_size)
    if bad.any():
        first = int(np.argmax(bad.ravel()))
        where = np.unravel_index(first, a.shape)
        position = int(where[0]) if a.ndim == 1 else tuple(int(p) for p in where)
        raise ValueError(f"token id {int(a.ravel()[first])} at position {position} is outside the vocabulary "
                         f"[0, {vocab_size}) ({int(bad.sum())} bad id(s) in all); the prompt must be tokenized "
                         "for this model (its vocab_size)")
    return np.ascontiguousarray(a.ravel(), dtype=np.int32)
