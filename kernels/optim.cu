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
//
// The member dimension (an ensemble of K networks, parameters K x per_member, one row each):
// the same rules, one launch for every member, with each member's own hyperparameters, step
// count and skip flag.  The grid is K blocks tall: member blockIdx.y updates its own row.
//
// count_steps           steps[k] += 1 where skip[k] == 0 (one thread per member)
// adam_prepare_members<T>  where skip[k] == 0: t = ++steps[k];
//                       factors[k] = [lr[k] / (1 - b1^t), 1 / sqrt(1 - b2^t)]
// sgd_step_members<T>   hyper[k] = [lr, momentum, lr * momentum, weight_decay] of member k
// adam_step_members<T>  hyper[k] = [weight_decay, 1 - lr weight_decay] of member k
// A member whose skip[k] is set (the guard's flag, a member frozen by early stopping or by
// divergence) is left exactly as it was: parameters, state and step count.
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

// one parameter's SGD step (shared by the network and the ensemble kernels)
template <class T>
__device__ __forceinline__ void sgd_element(T* params, const T* __restrict__ grads, T* velocity, index_t i,
                                            T lr, T momentum, T lr_momentum, T weight_decay, int nesterov) {
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
            return;
        }
        g = v;
    }
    params[i] = p - g * lr;
}

template <class T>
__global__ void sgd_step(T* params, const T* __restrict__ grads, T* velocity, index_t n,
                         T lr, T momentum, T lr_momentum, T weight_decay, int nesterov,
                         const int* __restrict__ skip) {
    if (*skip) return;
    GPUBP_GRID_STRIDE(i, n) {
        sgd_element(params, grads, velocity, i, lr, momentum, lr_momentum, weight_decay, nesterov);
    }
}

// one parameter's Adam/AdamW step, given the step's two bias-correction factors
template <class T>
__device__ __forceinline__ void adam_element(T* params, const T* __restrict__ grads, T* m, T* v, index_t i,
                                             T one_minus_beta1, T beta2, T one_minus_beta2, T eps,
                                             T weight_decay, T decay, int decoupled, T step_size,
                                             T inv_bias_correction2_sqrt) {
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

template <class T>
__global__ void adam_step(T* params, const T* __restrict__ grads, T* m, T* v, index_t n,
                          T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T weight_decay, T decay,
                          int decoupled, const T* __restrict__ factors, const int* __restrict__ skip) {
    if (*skip) return;
    const T step_size = factors[0];
    const T inv_bias_correction2_sqrt = factors[1];
    GPUBP_GRID_STRIDE(i, n) {
        adam_element(params, grads, m, v, i, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay,
                     decoupled, step_size, inv_bias_correction2_sqrt);
    }
}

// ---- the member dimension ------------------------------------------------------------------
// for (i = this member's first index + x thread index; i < its end; i += the x threads):
// member blockIdx.y's row of a K x per_member buffer.
#define GPUBP_MEMBER_STRIDE(i, per_member)                                                           \
    for (::gpubp::index_t i = (::gpubp::index_t)blockIdx.y * (per_member) +                          \
                              (::gpubp::index_t)blockIdx.x * blockDim.x + threadIdx.x;               \
         i < ((::gpubp::index_t)blockIdx.y + 1) * (per_member); i += (::gpubp::index_t)blockDim.x * gridDim.x)

__global__ void count_steps(long long* steps, const int* __restrict__ skip, index_t members) {
    GPUBP_GRID_STRIDE(k, members) {
        if (skip[k] == 0) steps[k] += 1;
    }
}

template <class T>
__global__ void adam_prepare_members(long long* steps, const int* __restrict__ skip, index_t members,
                                     double beta1, double beta2, const double* __restrict__ lr, T* factors) {
    GPUBP_GRID_STRIDE(k, members) {
        if (skip[k] != 0) continue;
        const long long t = steps[k] + 1;
        steps[k] = t;
        factors[2 * k] = (T)(lr[k] / (1.0 - pow(beta1, (double)t)));
        factors[2 * k + 1] = (T)(1.0 / sqrt(1.0 - pow(beta2, (double)t)));
    }
}

template <class T>
__global__ void sgd_step_members(T* params, const T* __restrict__ grads, T* velocity, index_t per_member,
                                 const T* __restrict__ hyper, int nesterov, const int* __restrict__ skip) {
    const index_t k = blockIdx.y;
    if (skip[k]) return;
    const T lr = hyper[4 * k], momentum = hyper[4 * k + 1], lr_momentum = hyper[4 * k + 2];
    const T weight_decay = hyper[4 * k + 3];
    GPUBP_MEMBER_STRIDE(i, per_member) {
        sgd_element(params, grads, velocity, i, lr, momentum, lr_momentum, weight_decay, nesterov);
    }
}

template <class T>
__global__ void adam_step_members(T* params, const T* __restrict__ grads, T* m, T* v, index_t per_member,
                                  T one_minus_beta1, T beta2, T one_minus_beta2, T eps,
                                  const T* __restrict__ hyper, int decoupled, const T* __restrict__ factors,
                                  const int* __restrict__ skip) {
    const index_t k = blockIdx.y;
    if (skip[k]) return;
    const T weight_decay = hyper[2 * k], decay = hyper[2 * k + 1];
    const T step_size = factors[2 * k], inv_bias_correction2_sqrt = factors[2 * k + 1];
    GPUBP_MEMBER_STRIDE(i, per_member) {
        adam_element(params, grads, m, v, i, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay,
                     decoupled, step_size, inv_bias_correction2_sqrt);
    }
}

}  // namespace gpubp
