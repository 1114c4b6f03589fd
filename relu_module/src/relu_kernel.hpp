// ReLU forward and backward kernels: plain C++, no Python types.
//
// Semantics equal torch.relu bit for bit: y = (x < 0) ? +0 : x. So -0.0 stays -0.0, every NaN
// (any sign, any payload) passes through unchanged, +-inf and denormals behave as numbers.
// Backward equals torch's threshold_backward: dx = (x <= 0) ? +0 : g, so a NaN input passes
// its gradient and an infinite gradient at x <= 0 gives 0, not NaN.
#pragma once

#include <cstddef>
#include <cstdint>

#include "policy.hpp"

namespace relu_kernel {

// A view of an n-d array: byte strides, as numpy keeps them.
struct View {
    char* data;
    const std::ptrdiff_t* strides;  // ndim entries, bytes
};

// When a second thread and non-temporal stores pay: policy() (policy.hpp), from the CPU's caches.

// Contiguous kernels. out may equal x exactly (in place) but must not partially overlap it.
// They split across the global thread pool when the output is large.
void relu(const float* x, float* out, std::size_t n);
void relu(const double* x, double* out, std::size_t n);
void relu_backward(const float* grad, const float* x, float* out, std::size_t n);
void relu_backward(const double* grad, const double* x, double* out, std::size_t n);

// For a caller that splits a contiguous job over threads of its own (relu_module._torch_ops runs
// on torch's intra-op threads through at::parallel_for, so that a model mixing torch's ops and
// these never has two spinning pools on the same cores): the job's decisions, taken once on the
// calling thread, and one share of the job under them. A share never uses the pool.
struct JobEnv {
    unsigned csr;  // the caller's MXCSR (x86; 0 elsewhere): its DAZ bit decides the semantics
    bool stream;   // non-temporal stores: the whole output exceeds policy().stream_min_bytes
};
JobEnv job_env(std::size_t out_bytes, bool in_place);
template <class T>
void relu_part(const T* x, T* out, std::size_t n, JobEnv env);
template <class T>
void relu_backward_part(const T* grad, const T* x, T* out, std::size_t n, JobEnv env);

extern template void relu_part<float>(const float*, float*, std::size_t, JobEnv);
extern template void relu_part<double>(const double*, double*, std::size_t, JobEnv);
extern template void relu_backward_part<float>(const float*, const float*, float*, std::size_t,
                                               JobEnv);
extern template void relu_backward_part<double>(const double*, const double*, double*, std::size_t,
                                                JobEnv);

// Strided n-d kernels over `shape` (ndim >= 1, no zero-size dimension). out may equal x (same
// data and strides) but must not otherwise overlap an input. Parallel over the first dimension.
template <class T>
void relu_strided(int ndim, const std::ptrdiff_t* shape, View x, View out);
template <class T>
void relu_backward_strided(int ndim, const std::ptrdiff_t* shape, View grad, View x, View out);

extern template void relu_strided<float>(int, const std::ptrdiff_t*, View, View);
extern template void relu_strided<double>(int, const std::ptrdiff_t*, View, View);
extern template void relu_backward_strided<float>(int, const std::ptrdiff_t*, View, View, View);
extern template void relu_backward_strided<double>(int, const std::ptrdiff_t*, View, View, View);

// Which instruction set the dispatcher picked for the contiguous loops ("avx512f", "avx2",
// "baseline"), for diagnostics and benchmark reports.
const char* simd_level();

}  // namespace relu_kernel
