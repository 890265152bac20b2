// Phase 5's kernels: the batched head's row gather, and the expert -> position map of the
// expert-parallel exchange. float32 rows, int32 ids; extern "C" so PyCUDA finds them.

// out[b, :] = x[b * seq_len + last_b, :] for b < batch, with last_b = last[b] when `last` is
// given (mixed-length prompts padded on the right: each one's own last real position) and
// seq_len - 1 when it is null (every prompt is seq_len long). Grid (batch, column blocks).
extern "C" __global__ void last_rows(const float* x, const int* last, float* out, int batch, int seq_len, int H)
{
    int b = blockIdx.x;
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (b >= batch || c >= H)
        return;
    int t = last ? last[b] : seq_len - 1;
    out[(size_t)b * H + c] = x[((size_t)b * seq_len + t) * H + c];
}

// out[i] = table[ids[i]] for i < n: expert ids -> their position in the shard-major expert order,
// so grouping by position puts each shard's rows in one contiguous block. out may equal ids.
extern "C" __global__ void map_ids(const int* ids, const int* table, int* out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        out[i] = table[ids[i]];
}
