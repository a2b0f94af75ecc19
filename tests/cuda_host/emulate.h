// emulate.h -- run gpubp's CUDA kernels on the host, for the tests of machines without a GPU.
//
// Included before kernels/*.cu by the test harness (tests/kernel_host.py) and compiled with
// g++: the CUDA qualifiers become nothing, the built-in index variables become thread-local
// globals, and a launch runs every thread of every block in turn. This is exact for kernels
// whose threads do not talk to each other (no __syncthreads, no shared memory, no warp
// shuffles) -- which is every gpubp kernel, by design. It checks the kernels' arithmetic and
// index math (grid-stride loops, partial blocks, 2-D grids); it says nothing about speed,
// coalescing or races, which only a GPU run shows.
#pragma once
#include <math.h>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct gpubp_dim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local gpubp_dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {

// One character per kernel parameter, so the Python side can check what it passes:
// f float, d double, i int, q long long; upper case for a pointer to that type.
template <class T> constexpr char code() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_pointer_v<U>) {
        using E = std::remove_cv_t<std::remove_pointer_t<U>>;
        return std::is_same_v<E, float> ? 'F' : std::is_same_v<E, double> ? 'D'
             : std::is_same_v<E, int> ? 'I' : std::is_same_v<E, long long> ? 'Q' : '?';
    } else {
        return std::is_same_v<U, float> ? 'f' : std::is_same_v<U, double> ? 'd'
             : std::is_same_v<U, int> ? 'i' : std::is_same_v<U, long long> ? 'q' : '?';
    }
}

template <class... P> const char* signature(void (*)(P...)) {
    static const char text[] = {code<P>()..., '\0'};
    return text;
}

template <class... P, std::size_t... I>
void call(void (*kernel)(P...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<P>*>(args[I])...);
}

template <class... P>
void launch(void (*kernel)(P...), void** args, unsigned gx, unsigned gy, unsigned bx, unsigned by) {
    gridDim = {gx, gy, 1};
    blockDim = {bx, by, 1};
    for (unsigned y = 0; y < gy; ++y)
        for (unsigned x = 0; x < gx; ++x) {
            blockIdx = {x, y, 0};
            for (unsigned ty = 0; ty < by; ++ty)
                for (unsigned tx = 0; tx < bx; ++tx) {
                    threadIdx = {tx, ty, 0};
                    call(kernel, args, std::index_sequence_for<P...>{});
                }
        }
}

}  // namespace emu
