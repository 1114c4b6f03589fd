// The environment settings of relu_module, parsed in one place: plain C++, no Python types.
//
// RELU_MODULE_NUM_THREADS: threads for large arrays, 1..kMaxThreads (default: the CPUs in the
// process's affinity mask). RELU_MODULE_CACHE_MB: limit of the output-block cache in MiB
// (default kDefaultCacheMb; 0 disables it). RELU_MODULE_SPIN_US: how long pool workers keep
// spinning after a job while calls arrive at least that often, 0..kMaxSpinUs (default
// kDefaultSpinUs; 0 never spins). A value is a plain decimal integer, optionally
// surrounded by blanks; anything else (signs, other digits, overflow, out of range) is ignored
// with a warning that says so and names the value used instead.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace relu_kernel {

constexpr int kMaxThreads = 1024;
constexpr std::size_t kDefaultCacheMb = 1024;
constexpr long long kDefaultSpinUs = 2000;
constexpr long long kMaxSpinUs = 1000000;

struct Settings {
    int num_threads;                    // what get_num_threads() starts with
    std::size_t cache_limit_bytes;      // the output-block cache limit
    long long spin_us;                  // the pool workers' spin after a job, at most
    std::vector<std::string> warnings;  // one line per ignored value, for the Python side to log
};

// Parsed from the environment on first use, then fixed for the life of the process.
const Settings& settings();

// The CPUs this process may run on (sched_getaffinity), at least 1.
int usable_cpus();

// Parses `text` as a plain decimal integer in [lo, hi] (blanks around it allowed). Returns false,
// and leaves *value alone, for anything else, including values that overflow.
bool parse_count(const char* text, unsigned long long lo, unsigned long long hi,
                 unsigned long long* value);

}  // namespace relu_kernel
