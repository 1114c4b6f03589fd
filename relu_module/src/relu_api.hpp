// The kernels as a table of C function pointers, exported by relu_module._ext as the capsule
// "relu_module._ext._C_API" (numpy's own scheme for its C API). relu_module._torch_ops, built
// against torch, calls the kernels through it: one copy of the kernels, the thread pool and the
// buffer cache per process, and an _ext that never links torch.
#pragma once

#include <cstddef>

#include "buffer_cache.hpp"
#include "relu_kernel.hpp"

namespace relu_kernel {

constexpr unsigned kApiVersion = 2;
constexpr const char* kApiCapsule = "relu_module._ext._C_API";

struct Api {
    unsigned version;  // kApiVersion of the _ext that filled the table
    void (*relu_strided_f32)(int ndim, const std::ptrdiff_t* shape, View x, View out);
    void (*relu_strided_f64)(int ndim, const std::ptrdiff_t* shape, View x, View out);
    void (*backward_strided_f32)(int ndim, const std::ptrdiff_t* shape, View g, View x, View out);
    void (*backward_strided_f64)(int ndim, const std::ptrdiff_t* shape, View g, View x, View out);
    // Contiguous jobs that the caller splits over its own threads (relu_kernel.hpp, JobEnv).
    JobEnv (*job_env)(std::size_t out_bytes, bool in_place);
    void (*relu_part_f32)(const float* x, float* out, std::size_t n, JobEnv env);
    void (*relu_part_f64)(const double* x, double* out, std::size_t n, JobEnv env);
    void (*backward_part_f32)(const float* g, const float* x, float* out, std::size_t n,
                              JobEnv env);
    void (*backward_part_f64)(const double* g, const double* x, double* out, std::size_t n,
                              JobEnv env);
    // Prepares the pool a job of out_bytes would use and copies a degraded pool's warning (once)
    // into buf, NUL-terminated; returns its length, 0 if there is none.
    std::size_t (*pool_warning)(std::size_t out_bytes, char* buf, std::size_t cap);
    // The output-block cache (buffer_cache.hpp): outputs of at least cache_min_bytes.
    std::size_t cache_min_bytes;
    void* (*acquire_buffer)(std::size_t bytes, std::size_t* capacity);
    void (*release_buffer)(void* ptr, std::size_t capacity);
};

}  // namespace relu_kernel
