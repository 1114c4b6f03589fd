// Allocation of large out-of-place outputs: plain C++, no Python types.
//
// Out-of-place ReLU of >= 1e7 elements is bound by page faults on the fresh output, not by
// the kernel (measured here at 1e8 float32: 4 KiB pages ~170 ms, transparent huge pages ~40 ms,
// the same kernel into an existing array ~16 ms). Large outputs therefore come from 2 MiB-aligned
// mappings advised MADV_HUGEPAGE, and when the array dies its mapping goes back to a small,
// bounded cache for the next call of a similar size instead of to the kernel, as the heap
// already does for glibc's smaller blocks (< 32 MiB).
#pragma once

#include <cstddef>

namespace relu_kernel {

// Outputs smaller than this use numpy's allocator (glibc's heap reuses them without faults).
constexpr std::size_t kCacheMinBytes = std::size_t(32) << 20;

// A zero-initialised-or-reused block of at least `bytes` bytes, 2 MiB-aligned; nullptr if the
// mapping fails (the caller then falls back to numpy's allocator). `*capacity` receives the
// mapped length, which release() needs.
void* acquire_buffer(std::size_t bytes, std::size_t* capacity);
// Returns a block from acquire_buffer to the cache, or unmaps it when the cache is full.
void release_buffer(void* ptr, std::size_t capacity) noexcept;
// Unmaps every cached block; returns the bytes released.
std::size_t clear_buffer_cache() noexcept;
// Bytes currently held by the cache, and its limit (RELU_MODULE_CACHE_MB, default 1024; 0
// disables caching).
std::size_t cached_bytes() noexcept;
std::size_t cache_limit_bytes() noexcept;

}  // namespace relu_kernel
