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
    for (int e = threadIdx.x; e < E; e += blockDim.x) count[e] = 0;
    __syncthreads();
    for (int p = threadIdx.x; p < npairs; p += blockDim.x) atomicAdd(&count[expert_of(p)], 1);
    __syncthreads();
    if (threadIdx.x == 0) {
        int acc = 0, tile = 0;
        for (int e = 0; e < E; ++e) {
            cursor[e] = acc;
            expert_offsets[e] = acc;
            for (int r = 0; r < count[e]; r += BM, ++tile) {
                tiles[3 * tile] = e;
                tiles[3 * tile + 1] = acc + r;
                tiles[3 * tile + 2] = acc + count[e];
            }
            acc += count[e];
        }
        expert_offsets[E] = acc;
        *num_tiles = tile;
    }
    __syncthreads();
    for (int p = threadIdx.x; p < npairs; p += blockDim.x) {
        int pos = atomicAdd(&cursor[expert_of(p)], 1);
        sorted_pair[pos] = p;
    }
}
