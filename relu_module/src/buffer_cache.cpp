#include "buffer_cache.hpp"

#include "settings.hpp"

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sys/mman.h>
#endif

namespace relu_kernel {
namespace {

constexpr std::size_t kHugePage = std::size_t(2) << 20;
constexpr std::size_t kMaxCachedBlocks = 4;

struct Block {
    void* ptr;
    std::size_t capacity;
};

std::mutex g_mu;
std::vector<Block>* g_blocks = new std::vector<Block>();  // leaked: no unmapping at exit
std::size_t g_cached = 0;

#if defined(__linux__)
// Hold the cache lock across fork() so that a child never inherits it locked.
[[maybe_unused]] const bool g_atfork_registered =
    pthread_atfork([] { g_mu.lock(); }, [] { g_mu.unlock(); }, [] { g_mu.unlock(); }) == 0;
#endif

void unmap(void* ptr, std::size_t capacity) noexcept {
#if defined(__linux__)
    ::munmap(ptr, capacity);
#else
    std::free(ptr);
#endif
}

}  // namespace

std::size_t cache_limit_bytes() noexcept {
    return settings().cache_limit_bytes;
}

void* acquire_buffer(std::size_t bytes, std::size_t* capacity) {
    const std::size_t want = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    {
        // Reuse the smallest cached block that fits without wasting more than half of it.
        std::lock_guard<std::mutex> lk(g_mu);
        std::size_t best = g_blocks->size();
        for (std::size_t i = 0; i < g_blocks->size(); ++i) {
            const Block& b = (*g_blocks)[i];
            if (b.capacity >= want && b.capacity / 2 <= want &&
                (best == g_blocks->size() || b.capacity < (*g_blocks)[best].capacity))
                best = i;
        }
        if (best != g_blocks->size()) {
            Block b = (*g_blocks)[best];
            g_blocks->erase(g_blocks->begin() + static_cast<std::ptrdiff_t>(best));
            g_cached -= b.capacity;
            *capacity = b.capacity;
            return b.ptr;
        }
    }
#if defined(__linux__)
    // Over-map by one huge page, then trim so the block starts on a 2 MiB boundary and every
    // page of it can be a huge page.
    const std::size_t span = want + kHugePage;
    void* raw = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    const auto base = reinterpret_cast<std::uintptr_t>(raw);
    const std::uintptr_t aligned = (base + kHugePage - 1) & ~(std::uintptr_t(kHugePage) - 1);
    if (aligned > base) ::munmap(raw, aligned - base);
    const std::size_t tail = base + span - (aligned + want);
    if (tail) ::munmap(reinterpret_cast<void*>(aligned + want), tail);
#if defined(MADV_HUGEPAGE)
    ::madvise(reinterpret_cast<void*>(aligned), want, MADV_HUGEPAGE);
#endif
    *capacity = want;
    return reinterpret_cast<void*>(aligned);
#else
    void* p = std::aligned_alloc(kHugePage, want);
    *capacity = want;
    return p;
#endif
}

void release_buffer(void* ptr, std::size_t capacity) noexcept {
    if (ptr == nullptr) return;
    std::vector<Block> evicted;
    bool cached = false;
    if (capacity <= cache_limit_bytes()) {
        std::lock_guard<std::mutex> lk(g_mu);
        try {
            evicted.reserve(kMaxCachedBlocks);
            // Least recently released first out: a loop over one size keeps its block even after
            // other sizes came and went.
            while (!g_blocks->empty() && (g_blocks->size() >= kMaxCachedBlocks ||
                                          g_cached + capacity > cache_limit_bytes())) {
                evicted.push_back(g_blocks->front());
                g_cached -= g_blocks->front().capacity;
                g_blocks->erase(g_blocks->begin());
            }
            g_blocks->push_back({ptr, capacity});
            g_cached += capacity;
            cached = true;
        } catch (...) {  // out of memory growing the list: unmap instead
        }
    }
    for (const Block& b : evicted) unmap(b.ptr, b.capacity);  // outside the lock
    if (!cached) unmap(ptr, capacity);
}

std::size_t clear_buffer_cache() noexcept {
    std::vector<Block> blocks;
    {
        std::lock_guard<std::mutex> lk(g_mu);
        blocks.swap(*g_blocks);
        g_cached = 0;
    }
    std::size_t total = 0;
    for (const Block& b : blocks) {
        unmap(b.ptr, b.capacity);
        total += b.capacity;
    }
    return total;
}

std::size_t cached_bytes() noexcept {
    std::lock_guard<std::mutex> lk(g_mu);
    return g_cached;
}

}  // namespace relu_kernel
