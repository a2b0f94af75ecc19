// loss.cu -- the output layer: fused softmax / sigmoid, the losses and BP1.
//
// With M = rows * cols output elements and N = rows (mean reduction, PyTorch's definitions;
// the scale is the caller's, see "Members" below):
//
// bias_softmax<T>       Z = Z + b;  P = softmax(Z) row by row, shifted by the row maximum so exp
//                       never overflows.  Leaves m = max_k z_k in row_max and s = sum_k e^(z_k - m)
//                       in row_sum (logsumexp(z) = m + log s), for the loss.  One thread per row.
//                       Row r belongs to member r / member_rows, whose bias is b + member * b_stride
//                       (one network: member_rows = rows).
// softmax_xent<T>       row_loss[n] = max(0, m_n + log s_n - sum_k y_nk z_nk)   (cross entropy of row n,
//                       never below 0 by rounding)
//                       delta = (P - Y) * scale, scale = 1/N          (BP1 through the softmax).
//                       row_loss may alias row_sum (each thread reads its s before writing).
// bce<T>                elem = max(0, softplus(z) - y z)   (= -[y log p + (1 - y) log(1 - p)], stable)
//                       delta = (p - y) * scale, scale = 1/M, p = sigmoid(z) already in a.
// pointwise_loss<T, L>  d = a - y;  mse: elem = d^2, delta = 2 d scale;  l1: elem = |d|,
//                       delta = sign(d) scale;  huber (delta = 1): c = clip(d, -1, 1),
//                       elem = c d - c^2/2, delta = c scale;  scale = 1/M.
// one_hot<T>            out[n, k] = (labels[n] == k).
//
// Members: an ensemble of K networks stacks its members' rows (rows = K N, M = K N cols) and
// passes scale = 1/N (softmax_xent) or 1/(N cols): each member's mean; the caller sums each
// member's part of row_loss / elem.  The weights then hold K N rows, each member's scaled to mean 1.
//
// Sample weights: softmax_xent, bce and pointwise_loss take w (one weight per row) and a flag
// `weighted`.  When it is nonzero, row n's loss terms and output error are multiplied by w[n]
// (the caller scales the weights to mean 1 over the batch, so the mean-reduced loss becomes the
// weighted mean).  When it is 0, w is not read (any pointer will do) and nothing is multiplied.
//
// The loss value is the sum of elem (or row_loss) times scale; the caller reduces it with a
// deterministic tree reduction, so no kernel here uses atomics.
#include "common.cuh"

namespace gpubp {

template <class T>
__global__ void bias_softmax(const T* __restrict__ b_all, T* z, T* p, T* row_max, T* row_sum,
                             index_t rows, index_t cols, index_t member_rows, index_t b_stride) {
    if (cols <= 0) return;
    GPUBP_GRID_STRIDE(r, rows) {
        const T* b = b_all + (r / member_rows) * b_stride;
        T* zr = z + r * cols;
        T* pr = p + r * cols;
        T m = zr[0] + b[0];
        zr[0] = m;
        for (index_t k = 1; k < cols; ++k) {
            const T v = zr[k] + b[k];
            zr[k] = v;
            if (v > m || v != v) m = v;  // a NaN wins, as in NumPy's max
        }
        T s = T(0);
        for (index_t k = 0; k < cols; ++k) {
            const T e = gp_exp(zr[k] - m);
            pr[k] = e;
            s += e;
        }
        for (index_t k = 0; k < cols; ++k) pr[k] = pr[k] / s;
        row_max[r] = m;
        row_sum[r] = s;
    }
}

template <class T>
__global__ void softmax_xent(const T* __restrict__ z, const T* __restrict__ p, const T* __restrict__ y,
                             T* delta, const T* row_max, const T* row_sum, T* row_loss,
                             const T* __restrict__ w, int weighted, index_t rows, index_t cols, T scale) {
    GPUBP_GRID_STRIDE(r, rows) {
        const index_t base = r * cols;
        const T wr = weighted ? w[r] : T(1);
        const T row_scale = weighted ? scale * wr : scale;
        T yz = T(0);
        for (index_t k = 0; k < cols; ++k) {
            const T yk = y[base + k];
            yz += yk * z[base + k];
            delta[base + k] = (p[base + k] - yk) * row_scale;
        }
        const T lse = gp_log(row_sum[r]) + row_max[r];
        const T loss = lse - yz;  // >= 0 exactly; rounding of saturated logits must not make it negative
        const T clamped = loss < T(0) ? T(0) : loss;  // (NaN stays NaN for the divergence guard)
        row_loss[r] = weighted ? clamped * wr : clamped;
    }
}

template <class T>
__global__ void bce(const T* __restrict__ z, const T* __restrict__ a, const T* __restrict__ y,
                    T* delta, T* elem, const T* __restrict__ w, int weighted, index_t n, index_t cols,
                    T scale) {
    GPUBP_GRID_STRIDE(i, n) {
        const T zi = z[i], yi = y[i];
        const T e = Softplus::forward(zi) - yi * zi;  // >= 0 exactly for y in [0, 1]
        const T clamped = e < T(0) ? T(0) : e;
        if (weighted) {
            const T wi = w[i / cols];
            elem[i] = clamped * wi;
            delta[i] = (a[i] - yi) * (scale * wi);
        } else {
            elem[i] = clamped;
            delta[i] = (a[i] - yi) * scale;
        }
    }
}

struct Mse {
    template <class T> __device__ static void apply(T d, T scale, T& elem, T& delta) {
        elem = d * d;
        delta = d * (T(2) * scale);
    }
};
struct L1 {
    template <class T> __device__ static void apply(T d, T scale, T& elem, T& delta) {
        elem = gp_abs(d);
        const T sign = d > T(0) ? T(1) : (d < T(0) ? T(-1) : d);  // sign(0) = 0, sign(NaN) = NaN
        delta = sign * scale;
    }
};
struct Huber {
    template <class T> __device__ static void apply(T d, T scale, T& elem, T& delta) {
        const T c = d > T(1) ? T(1) : (d < T(-1) ? T(-1) : d);
        elem = c * d - T(0.5) * c * c;
        delta = c * scale;
    }
};

template <class T, class L>
__global__ void pointwise_loss(const T* __restrict__ a, const T* __restrict__ y, T* delta, T* elem,
                               const T* __restrict__ w, int weighted, index_t n, index_t cols, T scale) {
    GPUBP_GRID_STRIDE(i, n) {
        T e, d;
        if (weighted) {
            const T wi = w[i / cols];
            L::apply(a[i] - y[i], scale * wi, e, d);
            elem[i] = e * wi;
        } else {
            L::apply(a[i] - y[i], scale, e, d);
            elem[i] = e;
        }
        delta[i] = d;
    }
}

template <class T>
__global__ void one_hot(const long long* __restrict__ labels, T* out, index_t rows, index_t cols) {
    GPUBP_GRID_STRIDE(i, rows * cols) {
        out[i] = labels[i / cols] == i % cols ? T(1) : T(0);
    }
}

}  // namespace gpubp
