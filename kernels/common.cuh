// common.cuh -- what every gpubp kernel file shares: math overloads for float and double,
// the grid-stride loop, and the activation functors (sigma and sigma' side by side).
//
// The activations mirror gpubp/activations.py operation for operation, so the NumPy
// reference and these kernels round the same way (up to the fused multiply-adds the
// CUDA compiler forms). Every formula stays finite for float32 inputs up to |z| = 1e4.
//
// No #include of system headers: the sources are compiled by NVRTC at run time, which has
// none. The loader inlines this file where a kernel file includes it.
#pragma once

namespace gpubp {

typedef long long index_t;

// ---- math, overloaded on the element type --------------------------------------------------
__device__ __forceinline__ float gp_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double gp_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float gp_exp(float x) { return expf(x); }
__device__ __forceinline__ double gp_exp(double x) { return exp(x); }
__device__ __forceinline__ float gp_expm1(float x) { return expm1f(x); }
__device__ __forceinline__ double gp_expm1(double x) { return expm1(x); }
__device__ __forceinline__ float gp_log(float x) { return logf(x); }
__device__ __forceinline__ double gp_log(double x) { return log(x); }
__device__ __forceinline__ float gp_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double gp_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float gp_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double gp_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float gp_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double gp_abs(double x) { return fabs(x); }

// finite: neither NaN nor +-Inf (every comparison with a NaN is false)
__device__ __forceinline__ bool gp_finite(float x) { return fabsf(x) <= 3.402823466e+38f; }
__device__ __forceinline__ bool gp_finite(double x) { return fabs(x) <= 1.7976931348623157e+308; }

// max(x, 0) and min(x, 0) that keep a NaN (as NumPy's maximum/minimum do), so a diverging
// run shows up as NaN downstream instead of being clamped away.
template <class T> __device__ __forceinline__ T gp_relu(T x) { return x <= T(0) ? T(0) : x; }
template <class T> __device__ __forceinline__ T gp_negpart(T x) { return x >= T(0) ? T(0) : x; }

// ---- the grid-stride loop ------------------------------------------------------------------
// for (i = global thread index; i < n; i += total threads): any n, including 0, a partial
// last block, and more elements than one grid has threads.
#define GPUBP_GRID_STRIDE(i, n)                                                          \
    for (::gpubp::index_t i = (::gpubp::index_t)blockIdx.x * blockDim.x + threadIdx.x;  \
         i < (n); i += (::gpubp::index_t)blockDim.x * gridDim.x)

// ---- activations: forward(z) -> a, grad(z, a) -> sigma'(z) -----------------------------------
// needs_z is false where sigma' is a function of a alone: the network then overwrites z with a.

// sigmoid(z) = 1/(1 + e^-z) = 0.5*tanh(z/2) + 0.5 (never overflows); sigma' = a(1 - a)
struct Sigmoid {
    static constexpr bool needs_z = false;
    template <class T> __device__ static T forward(T z) { return gp_tanh(z * T(0.5)) * T(0.5) + T(0.5); }
    template <class T> __device__ static T grad(T, T a) { return (T(1) - a) * a; }
};

// tanh; sigma' = 1 - a^2
struct Tanh {
    static constexpr bool needs_z = false;
    template <class T> __device__ static T forward(T z) { return gp_tanh(z); }
    template <class T> __device__ static T grad(T, T a) { return T(1) - a * a; }
};

// relu(z) = max(z, 0); sigma' = [a > 0] (0 at z = 0, PyTorch's convention)
struct Relu {
    static constexpr bool needs_z = false;
    template <class T> __device__ static T forward(T z) { return gp_relu(z); }
    template <class T> __device__ static T grad(T, T a) { return a > T(0) ? T(1) : T(0); }
};

// leaky_relu(z) = z if z > 0 else 0.01 z; sigma' = 1 if a > 0 else 0.01 (a has z's sign)
struct LeakyRelu {
    static constexpr bool needs_z = false;
    template <class T> __device__ static T forward(T z) { return z > T(0) ? z : z * T(0.01); }
    template <class T> __device__ static T grad(T, T a) { return a > T(0) ? T(1) : T(0.01); }
};

// gelu, tanh approximation: u = c(z + k z^3), t = tanh(u), sigma = z(1 + t)/2,
// sigma' = (1 + t)/2 * (1 + 2 * (1 - t) * z * c * (1 + 3k z^2) / 2),  c = sqrt(2/pi), k = 0.044715
struct GeluTanh {
    static constexpr bool needs_z = true;
    template <class T> __device__ static T t(T z) {
        const T c = T(0.7978845608028654), ck = T(0.7978845608028654 * 0.044715);
        return gp_tanh((z * z * ck + c) * z);
    }
    template <class T> __device__ static T forward(T z) { return (t(z) + T(1)) * z * T(0.5); }
    template <class T> __device__ static T grad(T z, T) {
        const T half_c = T(0.5 * 0.7978845608028654), c3k = T(1.5 * 0.7978845608028654 * 0.044715);
        const T tz = t(z);
        const T s = (z * z * c3k + half_c) * z;  // z * c * (1 + 3k z^2) / 2
        return T(0.5) * (tz + T(1)) * ((T(1) - tz) * s * T(2) + T(1));
    }
};

// silu(z) = z s, s = sigmoid(z); sigma' = s (1 + z (1 - s))
struct Silu {
    static constexpr bool needs_z = true;
    template <class T> __device__ static T forward(T z) { return z * Sigmoid::forward(z); }
    template <class T> __device__ static T grad(T z, T) {
        const T s = Sigmoid::forward(z);
        return ((T(1) - s) * z + T(1)) * s;
    }
};

// softplus(z) = max(z, 0) + log1p(e^-|z|); sigma' = sigmoid(z) = 1 - e^-a = -expm1(-a)
struct Softplus {
    static constexpr bool needs_z = false;
    template <class T> __device__ static T forward(T z) { return gp_relu(z) + gp_log1p(gp_exp(-gp_abs(z))); }
    template <class T> __device__ static T grad(T, T a) { return -gp_expm1(-a); }
};

// elu (alpha = 1): max(z, 0) + expm1(min(z, 0)); sigma' = min(a + 1, 1)
struct Elu {
    static constexpr bool needs_z = false;
    template <class T> __device__ static T forward(T z) { return gp_expm1(gp_negpart(z)) + gp_relu(z); }
    template <class T> __device__ static T grad(T, T a) {
        const T g = a + T(1);
        return g > T(1) ? T(1) : g;
    }
};

// identity; sigma' = 1
struct Identity {
    static constexpr bool needs_z = false;
    template <class T> __device__ static T forward(T z) { return z; }
    template <class T> __device__ static T grad(T, T) { return T(1); }
};

}  // namespace gpubp
