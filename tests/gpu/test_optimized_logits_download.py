"""The chunked logits download (optimized/logits_download.py) on a GPU, chunked (16.8 MB in 2 MB
DMAs; 1.3 MB in 14 DMAs with a short last one) and small (one DMA, a plain copy): every chunk lands, each
call returns a new array that later calls leave alone, and a wrong shape is refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("rows,V,chunk_bytes", [(64, 65536, 2 << 20), (1, 65536, 2 << 20), (40, 8192, 100_000),
                                                (3, 5, 1)])
def test_download_equals_the_device_logits_and_keeps_earlier_answers(gpu, rows, V, chunk_bytes):
    from optimized.logits_download import SMALL_BYTES, LogitsDownload
    pinned = torch.full((rows, V), float("nan"), pin_memory=True)
    dl = LogitsDownload(pinned, chunk_bytes)
    assert len(dl.chunks) == (1 if rows * V * 4 < SMALL_BYTES else -(-rows // max(1, chunk_bytes // (4 * V))))
    stream = torch.cuda.Stream()
    answers = []
    for seed in range(3):
        logits = torch.randn((rows, V), device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
        with torch.cuda.stream(stream):
            torch.cuda._sleep(2_000_000)  # the "forward" is still running while the host prepares
            dl.enqueue(logits)
        if seed != 1:  # collect without prepare allocates then
            dl.prepare()
        got = dl.collect()
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (rows, V)
        np.testing.assert_array_equal(got, logits.cpu().numpy())
        answers.append((got, logits.cpu().numpy()))
    for got, want in answers:  # a later download wrote into its own array
        np.testing.assert_array_equal(got, want)
    assert len({a.ctypes.data for a, _ in answers}) == 3


def test_download_refuses_logits_of_another_shape(gpu):
    from optimized.logits_download import LogitsDownload
    dl = LogitsDownload(torch.empty((4, 16), pin_memory=True))
    with pytest.raises(ValueError, match="do not match"):
        dl.enqueue(torch.zeros((4, 17), device="cuda"))
