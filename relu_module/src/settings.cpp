#include "settings.hpp"

#include <climits>
#include <cstdint>
#include <cstdlib>
#include <thread>

#if defined(__linux__)
#include <sched.h>
#endif

namespace relu_kernel {
namespace {

bool is_blank(char c) {
    return c == ' ' || c == '\t';
}

// "NAME='text' is not ...; ignoring it and using <what>".
std::string ignored(const char* name, const char* text, const std::string& why,
                    const std::string& used) {
    return std::string(name) + "='" + text + "' " + why + "; ignoring it and using " + used;
}

Settings read_settings() {
    Settings s{usable_cpus(), kDefaultCacheMb << 20, kDefaultSpinUs, {}};
    unsigned long long v = 0;
    if (const char* env = std::getenv("RELU_MODULE_NUM_THREADS")) {
        const std::string used =
            "the default of " + std::to_string(s.num_threads) + " thread(s), one per usable CPU";
        if (parse_count(env, 1, kMaxThreads, &v)) {
            s.num_threads = static_cast<int>(v);
        } else {
            s.warnings.push_back(ignored(
                "RELU_MODULE_NUM_THREADS", env,
                "is not a plain decimal integer in [1, " + std::to_string(kMaxThreads) + "]",
                used));
        }
    }
    if (const char* env = std::getenv("RELU_MODULE_CACHE_MB")) {
        const unsigned long long max_mb = SIZE_MAX >> 20;  // larger would overflow the byte count
        if (parse_count(env, 0, max_mb, &v)) {
            s.cache_limit_bytes = static_cast<std::size_t>(v) << 20;
        } else {
            s.warnings.push_back(
                ignored("RELU_MODULE_CACHE_MB", env,
                        "is not a plain decimal integer in [0, " + std::to_string(max_mb) + "]",
                        "the default of " + std::to_string(kDefaultCacheMb) + " MiB"));
        }
    }
    if (const char* env = std::getenv("RELU_MODULE_SPIN_US")) {
        if (parse_count(env, 0, kMaxSpinUs, &v)) {
            s.spin_us = static_cast<long long>(v);
        } else {
            s.warnings.push_back(
                ignored("RELU_MODULE_SPIN_US", env,
                        "is not a plain decimal integer in [0, " + std::to_string(kMaxSpinUs) + "]",
                        "the default of " + std::to_string(kDefaultSpinUs) + " us"));
        }
    }
    return s;
}

}  // namespace

bool parse_count(const char* text, unsigned long long lo, unsigned long long hi,
                 unsigned long long* value) {
    const char* p = text;
    while (is_blank(*p)) ++p;
    if (*p < '0' || *p > '9') return false;  // no sign, no empty string, ASCII digits only
    unsigned long long v = 0;
    for (; *p >= '0' && *p <= '9'; ++p) {
        const unsigned long long digit = static_cast<unsigned long long>(*p - '0');
        if (v > (ULLONG_MAX - digit) / 10) return false;  // overflow
        v = v * 10 + digit;
    }
    while (is_blank(*p)) ++p;
    if (*p != '\0' || v < lo || v > hi) return false;
    *value = v;
    return true;
}

int usable_cpus() {
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n >= 1) return n < kMaxThreads ? n : kMaxThreads;
    }
#endif
    const unsigned hw = std::thread::hardware_concurrency();
    if (hw < 1) return 1;
    return hw < static_cast<unsigned>(kMaxThreads) ? static_cast<int>(hw) : kMaxThreads;
}

const Settings& settings() {
    static const Settings s = read_settings();  // thread-safe initialisation (C++11)
    return s;
}

}  // namespace relu_kernel
