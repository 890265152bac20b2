// Phase 3's kernels: the middle of the ShortConv block fused into one pass, and the embedding
// gather. float32; one output element per thread; correct for any size (bounds checks, 64-bit
// offsets). Activations are [rows, features] row-major, rows = batch sequences of seq_len tokens.

// Everything of ShortConv between in_proj and out_proj, in one kernel (plan 2.1):
//   bcx [rows, 3H] = in_proj output, chunks B | C | x along the features, as HF's Lfm2ShortConv splits them
//   w   [H, L]     = conv.weight [H, 1, L], depthwise, cross-correlation (tap L-1 is the current token)
//   y[r, c] = C[r, c] * sum_j w[c, j] * Bx[r - (L-1) + j, c],  Bx = B * x,
// where a tap that reaches before the start of r's own sequence reads zero (zero conv history;
// the sequences of a batch never see each other). Bx is recomputed per tap instead of stored:
// three reads of cached data are cheaper than a round trip through memory, and there is no
// transpose at all because channels stay the fast (coalesced) index.
// Taps are summed oldest first, the order of the reference formula.
extern "C" __global__ void shortconv_gate(const float* bcx, const float* w, float* y,
                                          int rows, int seq_len, int H, int L)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * H)
        return;
    int r = (int)(i / H), c = (int)(i % H);
    int t = r % seq_len;                    // position of row r inside its sequence
    size_t stride = 3 * (size_t)H;          // one row of bcx
    float acc = 0.0f;
    for (int j = 0; j < L; ++j) {
        int back = L - 1 - j;               // tap j looks `back` tokens into the past
        if (back > t)
            continue;                       // before this sequence's first token: zero history
        const float* src = bcx + (size_t)(r - back) * stride;
        acc += w[(size_t)c * L + j] * (src[c] * src[2 * (size_t)H + c]);
    }
    y[i] = bcx[(size_t)r * stride + H + c] * acc;
}

// The embedding lookup (plan 2.3): out[r, :] = table[ids[r], :], table [vocab, H].
// The host validates every id before the launch; an id that still falls outside [0, vocab)
// writes NaN into its row instead of reading out of bounds, so it can never go unnoticed.
extern "C" __global__ void embedding_gather(const int* ids, const float* table, float* out,
                                            int rows, int H, int vocab)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * H)
        return;
    int r = (int)(i / H), c = (int)(i % H);
    int id = ids[r];
    out[i] = (id >= 0 && id < vocab) ? table[(size_t)id * H + c] : __int_as_float(0x7fc00000);
}
