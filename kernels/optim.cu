// optim.cu -- one launch per optimizer step over the whole flat parameter buffer.
//
// The update rules are PyTorch's (torch.optim.SGD with dampening 0, Adam, AdamW; amsgrad
// off), in the operation order of gpubp/optim.py. Every scalar that depends only on the
// hyperparameters and the step count is computed once on the host in double precision and
// passed in the element type, as the NumPy reference does.
//
// sgd_step<T>    g = grad + wd * theta
//                momentum:  v = mu v + g;  theta -= lr g + lr mu v   (Nesterov)
//                                          theta -= lr v             (heavy ball)
//                none:      theta -= lr g
// Both take `skip`, a device flag: when *skip != 0 the step does nothing (the divergence guard
// sets it when the loss or a gradient is not finite, so a bad step never reaches the weights
// and no host synchronisation is needed to decide).
//
// adam_step<T>   AdamW: theta *= 1 - lr wd   (decoupled);  Adam: g = grad + wd theta (L2)
//                m = m + (1 - b1)(g - m);  v = b2 v + (1 - b2) g^2
//                theta -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
#include "common.cuh"

namespace gpubp {

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
                          T one_minus_beta1, T beta2, T one_minus_beta2, T inv_bias_correction2_sqrt,
                          T eps, T step_size, T weight_decay, T decay, int decoupled,
                          const int* __restrict__ skip) {
    if (*skip) return;
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
