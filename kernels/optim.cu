// optim.cu -- one launch per optimizer step over the whole flat parameter buffer.
//
// The update rules are PyTorch's (torch.optim.SGD with dampening 0, Adam, AdamW; amsgrad
// off), in the operation order of the reference in gpubp/backends/base.py. Every scalar that
// depends only on the hyperparameters is computed once on the host in double precision and
// passed in the element type, as the NumPy reference does. Adam's bias corrections depend on
// the step count, which lives on the device (`steps`, the number of updates applied): one
// thread counts the step and computes them in double (adam_prepare), so the host never needs
// to know whether the divergence guard skipped a step.
//
// sgd_step<T>    g = grad + wd * theta
//                momentum:  v = mu v + g;  theta -= lr g + lr mu v   (Nesterov)
//                                          theta -= lr v             (heavy ball)
//                none:      theta -= lr g
// Both take `skip`, a device flag: when *skip != 0 the step does nothing (the divergence guard
// sets it when the loss or a gradient is not finite, so a bad step never reaches the weights
// and no host synchronisation is needed to decide).
//
// count_step     if *skip == 0: *steps += 1   (one thread; launched before sgd_step)
// adam_prepare<T>  if *skip == 0: t = ++*steps;  factors = [lr / (1 - b1^t), 1 / sqrt(1 - b2^t)]
//                (one thread; launched before adam_step, which reads the two factors)
//
// adam_step<T>   AdamW: theta *= 1 - lr wd   (decoupled);  Adam: g = grad + wd theta (L2)
//                m = m + (1 - b1)(g - m);  v = b2 v + (1 - b2) g^2
//                theta -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
#include "common.cuh"

namespace gpubp {

__global__ void count_step(long long* steps, const int* __restrict__ skip) {
    if (blockIdx.x == 0 && threadIdx.x == 0 && *skip == 0) *steps += 1;
}

template <class T>
__global__ void adam_prepare(long long* steps, const int* __restrict__ skip, double beta1, double beta2,
                             double lr, T* factors) {
    if (blockIdx.x != 0 || threadIdx.x != 0 || *skip != 0) return;
    const long long t = *steps + 1;
    *steps = t;
    factors[0] = (T)(lr / (1.0 - pow(beta1, (double)t)));
    factors[1] = (T)(1.0 / sqrt(1.0 - pow(beta2, (double)t)));
}

template <class T>
__global__ void sgd_step(T* params, const T* __restrict__ grads, T* velocity, index_t n,
                         T lr, T momentum, T lr_momentum, T weight_decay, int nesterov,
                         const int* __restrict__ skip) {
    if (*skip) return;
    GPUBP_GRID_STRIDE(i, n) {
        T p = params[i];
        T g = grads[i];
        if (weight_decay != T(0)) g = p * weight_decay + g;
        if (momentum != T(0)) {
            const T v = velocity[i] * momentum + g;
            velocity[i] = v;
            if (nesterov) {
                p = p - g * lr;
                p = p - v * lr_momentum;
                params[i] = p;
                continue;
            }
            g = v;
        }
        params[i] = p - g * lr;
    }
}

template <class T>
__global__ void adam_step(T* params, const T* __restrict__ grads, T* m, T* v, index_t n,
                          T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T weight_decay, T decay,
                          int decoupled, const T* __restrict__ factors, const int* __restrict__ skip) {
    if (*skip) return;
    const T step_size = factors[0];
    const T inv_bias_correction2_sqrt = factors[1];
    GPUBP_GRID_STRIDE(i, n) {
        T p = params[i];
        T g = grads[i];
        if (weight_decay != T(0)) {
            if (decoupled) p = p * decay;
            else g = p * weight_decay + g;
        }
        const T mi = m[i] + (g - m[i]) * one_minus_beta1;
        const T vi = v[i] * beta2 + g * g * one_minus_beta2;
        m[i] = mi;
        v[i] = vi;
        const T denom = gp_sqrt(vi) * inv_bias_correction2_sqrt + eps;
        params[i] = p - mi / denom * step_size;
    }
}

}  // namespace gpubp
