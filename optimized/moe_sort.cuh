// The sort of (token, slot) pairs by expert, and the grouped GEMM's tile table: elementwise.cu's
// moe_sort_pairs launch, and the last block of router.cu's norm_route_sort (the small-batch path,
// where the sort costs no launch of its own).
#pragma once
#include "common.cuh"

// One block. pair p = t * k + j routes to idx[p]. Output: sorted_pair[pos] = p, grouped by expert
// in ascending id (order inside an expert is arbitrary: every row is computed independently and
// the combine goes by pair id, so results do not depend on it); expert_offsets[E + 1]; and for
// the grouped GEMM with row tiles of BM: tiles[3 * i] = {expert, first row, end row}, num_tiles.
// Everything stays on the device: no host synchronisation between routing and the experts.
// FROM_L2: idx was written by other blocks of the same launch (norm_route_sort), so it is read
// from L2 (__ldcg), never through this SM's L1.
#define SORT_MAX_E 256
template <bool FROM_L2>
__device__ void moe_sort(const int* idx, int npairs, int E, int BM, int* sorted_pair, int* expert_offsets,
                         int* tiles, int* num_tiles)
{
    __shared__ int count[SORT_MAX_E], cursor[SORT_MAX_E];
    auto expert_of = [&](int p) { return FROM_L2 ? __ldcg(idx + p) : idx[p]; };
    const int p0 = threadIdx.x;
    const int e0 = p0 < npairs ? expert_of(p0) : 0;  // the first pair's expert, read once for both passes
    for (int e = threadIdx.x; e < E; e += blockDim.x) count[e] = 0;
    __syncthreads();
    if (p0 < npairs) atomicAdd(&count[e0], 1);
    for (int p = p0 + blockDim.x; p < npairs; p += blockDim.x) atomicAdd(&count[expert_of(p)], 1);
    __syncthreads();
    // Offsets and tile table by warp 0: lane l takes a run of experts, and two warp scans give each
    // run its first row and first tile. (Thread 0 walking all experts alone was ~1 us at E = 32 in
    // the batch-64 decode step, on the path between the router and the experts' GEMM.)
    if (threadIdx.x < 32) {
        const int lane = threadIdx.x, per = (E + 31) / 32, first = min(lane * per, E), end = min(first + per, E);
        int rows = 0, ntiles = 0;
        for (int e = first; e < end; ++e) {
            rows += count[e];
            ntiles += (count[e] + BM - 1) / BM;
        }
        int rows_incl = rows, tiles_incl = ntiles;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int r = __shfl_up_sync(0xffffffffu, rows_incl, o), t = __shfl_up_sync(0xffffffffu, tiles_incl, o);
            if (lane >= o) {
                rows_incl += r;
                tiles_incl += t;
            }
        }
        int acc = rows_incl - rows, tile = tiles_incl - ntiles;
        for (int e = first; e < end; ++e) {
            cursor[e] = acc;
            expert_offsets[e] = acc;
            for (int r = 0; r < count[e]; r += BM, ++tile) {
                tiles[3 * tile] = e;
                tiles[3 * tile + 1] = acc + r;
                tiles[3 * tile + 2] = acc + count[e];
            }
            acc += count[e];
        }
        if (lane == 31) {
            expert_offsets[E] = rows_incl;
            *num_tiles = tiles_incl;
        }
    }
    __syncthreads();
    if (p0 < npairs) sorted_pair[atomicAdd(&cursor[e0], 1)] = p0;
    for (int p = p0 + blockDim.x; p < npairs; p += blockDim.x) sorted_pair[atomicAdd(&cursor[expert_of(p)], 1)] = p;
}
