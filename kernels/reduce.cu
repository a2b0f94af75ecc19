// reduce.cu -- BP3, the bias gradient: column sums  db[c] = sum_n delta[n, c],  deterministic.
//
// Two passes, no atomics, so the result is the same bit for bit on every run:
//
// column_partials<T>  partials[j, c] = sum of delta[n, c] over the rows of chunk j,
//                     n in [j * chunk_rows, (j + 1) * chunk_rows), in increasing n.
//                     Block (32, 8): threadIdx.x walks 32 neighbouring columns (coalesced
//                     reads of each row), threadIdx.y and blockIdx.y walk the chunks.
// column_total<T>     out[c] = sum_j partials[j, c], in increasing j; one thread per column.
//
// With a single chunk the first pass writes the result directly (partials = out).
//
// any_nonfinite<T>    *flag = 1 if the scalar *loss or any of x[0..n) is NaN or +-Inf; otherwise
//                     *flag is left as it was (the caller sets it first: 0, or the previous step's
//                     flag to carry it). Every writer writes the same value, so the outcome does not
//                     depend on the order of the threads.
#include "common.cuh"

namespace gpubp {

template <class T>
__global__ void column_partials(const T* __restrict__ x, T* partials, index_t rows, index_t cols,
                                index_t chunk_rows, index_t chunks) {
    const index_t c = (index_t)blockIdx.x * blockDim.x + threadIdx.x;
    const index_t j = (index_t)blockIdx.y * blockDim.y + threadIdx.y;
    if (c >= cols || j >= chunks) return;
    index_t stop = (j + 1) * chunk_rows;
    if (stop > rows) stop = rows;
    T s = T(0);
    for (index_t n = j * chunk_rows; n < stop; ++n) s += x[n * cols + c];
    partials[j * cols + c] = s;
}

template <class T>
__global__ void column_total(const T* __restrict__ partials, T* out, index_t chunks, index_t cols) {
    GPUBP_GRID_STRIDE(c, cols) {
        T s = T(0);
        for (index_t j = 0; j < chunks; ++j) s += partials[j * cols + c];
        out[c] = s;
    }
}

template <class T>
__global__ void any_nonfinite(const T* __restrict__ x, index_t n, const T* __restrict__ loss, int* flag) {
    bool bad = blockIdx.x == 0 && threadIdx.x == 0 && !gp_finite(*loss);
    GPUBP_GRID_STRIDE(i, n) {
        if (!gp_finite(x[i])) bad = true;
    }
    if (bad) *flag = 1;
}

}  // namespace gpubp
