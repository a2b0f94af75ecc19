// activation.cu -- the fused elementwise passes of every layer.
//
// bias_act_forward<T, Act>   forward, one pass:  Z = Z + b (b broadcast over the rows),
//                            A = sigma(Z).  Z is written back only when it lives in its own
//                            buffer (z != a), i.e. when sigma' needs it (gelu, silu) or a fused
//                            loss reads it; otherwise A overwrites Z in place.
//                            The member dimension: an ensemble of K networks stacks its members'
//                            rows (Z is K x member_rows x cols) and launches a grid of K in y;
//                            member blockIdx.y adds its own bias row, b + blockIdx.y * b_stride
//                            (b_stride = the members' distance in the flat parameter buffer).
//                            One network: gridDim.y = 1, member_rows = rows.
// act_backward<T, Act>       backward, one pass, in place:  delta = delta (.) sigma'(Z), the
//                            last factor of BP1 and BP2; sigma' from A where the activation
//                            allows (z is then never read and may be any pointer).
//
// Arrays are row-major (rows x cols), contiguous. The column of element i is tracked
// incrementally along the grid-stride loop, so the loop has one integer division in all.
#include "common.cuh"

namespace gpubp {

template <class T, class Act>
__global__ void bias_act_forward(const T* __restrict__ b, T* z, T* a, index_t member_rows, index_t cols,
                                 index_t b_stride) {
    const index_t n = member_rows * cols;
    const index_t member_offset = (index_t)blockIdx.y * n;
    b += (index_t)blockIdx.y * b_stride;
    z += member_offset;
    a += member_offset;
    const index_t start = (index_t)blockIdx.x * blockDim.x + threadIdx.x;
    const index_t stride = (index_t)blockDim.x * gridDim.x;
    if (start >= n) return;
    const index_t col_step = stride % cols;
    index_t col = start % cols;
    const bool keep_z = z != a;
    for (index_t i = start; i < n; i += stride) {
        const T v = z[i] + b[col];
        if (keep_z) z[i] = v;
        a[i] = Act::forward(v);
        col += col_step;
        if (col >= cols) col -= cols;
    }
}

template <class T, class Act>
__global__ void act_backward(T* delta, const T* z, const T* __restrict__ a, index_t n) {
    GPUBP_GRID_STRIDE(i, n) {
        const T zi = Act::needs_z ? z[i] : T(0);
        delta[i] = delta[i] * Act::grad(zi, a[i]);
    }
}

}  // namespace gpubp
