"""The host check that guards phase 3's GPU embedding gather (no GPU needed)."""
from __future__ import annotations

import numpy as np
import pytest

from phases.phase3.token_ids import checked_ids

V = 100


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16, np.uint64, np.int8])
def test_valid_ids_become_flat_int32(dtype):
    ids = np.array([[0, 5], [99, 7]], dtype=dtype)
    out = checked_ids(ids, V)
    assert out.dtype == np.int32 and out.flags.c_contiguous and out.shape == (4,)
    np.testing.assert_array_equal(out, [0, 5, 99, 7])


def test_python_lists_and_scalars():
    np.testing.assert_array_equal(checked_ids([3, 4], V), [3, 4])
    np.testing.assert_array_equal(checked_ids(np.int64(42), V), [42])


@pytest.mark.parametrize("bad,pos", [(-1, 0), (V, 3), (V + 7, 5), (2**32 + 5, 2), (-(2**63), 4)])
def test_first_bad_id_is_named_with_position_and_vocab(bad, pos):
    ids = np.arange(6, dtype=np.int64)
    ids[pos] = bad
    with pytest.raises(ValueError, match=rf"token id {bad} at position {pos} is outside the vocabulary \[0, {V}\)"):
        checked_ids(ids, V)


def test_2d_position_and_count():
    ids = np.zeros((3, 4), np.int32)
    ids[1, 2], ids[2, 0] = V, -5
    with pytest.raises(ValueError, match=r"token id 100 at position \(1, 2\) .*2 bad id"):
        checked_ids(ids, V)


def test_wraparound_is_not_accepted():
    """2**32 + 5 cast to int32 is 5, a valid id: the check must see the original value."""
    assert np.array([2**32 + 5]).astype(np.int32)[0] == 5
    with pytest.raises(ValueError, match="4294967301"):
        checked_ids(np.array([2**32 + 5]), V)


@pytest.mark.parametrize("ids", [np.array([1.0, 2.0]), np.array([True, False]), np.array(["1"])])
def test_non_integer_dtypes_rejected(ids):
    with pytest.raises(ValueError, match="must be integers"):
        checked_ids(ids, V)


def test_empty_rejected():
    with pytest.raises(ValueError, match="at least one token"):
        checked_ids(np.zeros((1, 0), np.int32), V)


def test_vocab_too_large_for_int32():
    with pytest.raises(ValueError, match="vocab_size"):
        checked_ids(np.array([1]), 2**31)
