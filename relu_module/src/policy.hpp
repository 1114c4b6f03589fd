// The mid-size policy of the kernels (when a second thread pays, when non-temporal stores pay),
// derived from the cache sizes of the CPU the process runs on: plain C++, no Python types.
//
// Why not constants: a threshold tuned on one CPU (an AVX2 Zen with 512 KiB L2 per core) was
// 1.5-2x slower than torch at 3e5-1e6 elements on another (an AVX-512 Zen with 1 MiB L2), where
// the same arrays still fit in one core's L2. Both thresholds follow from where the data lives.
#pragma once

#include <cstddef>
#include <string>

namespace relu_kernel {

struct Policy {
    std::size_t l2_bytes;            // cpu0's (per-core) level-2 cache
    std::size_t llc_bytes;           // cpu0's last-level cache (L3 if any, else L2)
    std::size_t parallel_min_bytes;  // outputs below this run on the calling thread
    std::size_t stream_min_bytes;    // outputs from this size on use non-temporal stores
    std::string source;              // where the cache sizes came from ("sysfs" or a fallback)
    std::string why;                 // one sentence per threshold, for reports
};

// Read once, on first use, then fixed for the life of the process.
const Policy& policy();

// The cache size in bytes of a sysfs `size` file's text ("1024K", "32768K", "1M"), or 0.
std::size_t parse_cache_size(const std::string& text);

}  // namespace relu_kernel
