#include "policy.hpp"

#include <cstdlib>
#include <fstream>
#include <string>

namespace relu_kernel {

namespace {

// Measured on a 2-core Zen 3 (512 KiB L2, 32 MiB L3) before this policy existed; used only
// when sysfs does not say (a container without /sys, a non-Linux build).
constexpr std::size_t kFallbackL2 = std::size_t(512) << 10;
constexpr std::size_t kFallbackLlc = std::size_t(32) << 20;

std::string read_line(const std::string& path) {
    std::ifstream f(path);
    std::string line;
    std::getline(f, line);
    return line;
}

// cpu0's unified or data cache of each level, from /sys/devices/system/cpu/cpu0/cache/index*.
void read_sysfs(std::size_t* l2, std::size_t* llc) {
    int llc_level = 0;
    for (int i = 0; i < 16; ++i) {
        const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i);
        const std::string type = read_line(dir + "/type");
        if (type.empty()) break;
        if (type == "Instruction") continue;
        const int level = std::atoi(read_line(dir + "/level").c_str());
        const std::size_t size = parse_cache_size(read_line(dir + "/size"));
        if (size == 0) continue;
        if (level == 2) *l2 = size;
        if (level >= 2 && level >= llc_level) {
            llc_level = level;
            *llc = size;
        }
    }
}

Policy derive() {
    Policy p{0, 0, 0, 0, "sysfs", ""};
    read_sysfs(&p.l2_bytes, &p.llc_bytes);
    if (p.l2_bytes == 0 || p.llc_bytes == 0) {
        p.source = "fallback (sysfs gave no L2/LLC size): 512 KiB L2, 32 MiB LLC";
        p.l2_bytes = kFallbackL2;
        p.llc_bytes = kFallbackLlc;
    }
    // Input and output of a call below half a core's L2 both stay in that L2: one thread runs at
    // L2 bandwidth and a second adds only its wake-up. Above, the data streams from L3 or memory,
    // where a second core adds bandwidth.
    p.parallel_min_bytes = p.l2_bytes / 2;
    // Non-temporal stores skip the cache: they pay once input plus output no longer fit the
    // last-level cache; below that they evict data the next call would find there.
    p.stream_min_bytes = p.llc_bytes / 2;
    p.why = "threads from L2/2 = " + std::to_string(p.parallel_min_bytes >> 10) +
            " KiB of output (input + output fit one core's L2 below it); non-temporal stores "
            "from LLC/2 = " +
            std::to_string(p.stream_min_bytes >> 10) +
            " KiB (input + output exceed the last-level cache above it)";
    return p;
}

}  // namespace

std::size_t parse_cache_size(const std::string& text) {
    std::size_t i = 0, value = 0;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
        value = value * 10 + static_cast<std::size_t>(text[i] - '0');
        ++i;
    }
    if (i == 0) return 0;
    const char unit = i < text.size() ? text[i] : '\0';
    if (unit == 'K') return value << 10;
    if (unit == 'M') return value << 20;
    if (unit == 'G') return value << 30;
    return value;
}

const Policy& policy() {
    static const Policy p = derive();  // thread-safe initialisation (C++11 magic statics)
    return p;
}

}  // namespace relu_kernel
