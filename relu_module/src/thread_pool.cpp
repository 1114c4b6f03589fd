#include "thread_pool.hpp"

#include <chrono>
#include <cstdlib>
#include <string>

#if defined(__linux__)
#include <sched.h>
#include <unistd.h>
#endif
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define RELU_CPU_RELAX() _mm_pause()
#else
#define RELU_CPU_RELAX() std::this_thread::yield()
#endif

namespace relu_kernel {
namespace {

// How long an idle worker spins before sleeping: long enough to catch the next call of a tight
// loop, short enough not to steal a core from other work.
constexpr auto kSpinTime = std::chrono::microseconds(50);

std::atomic<int> g_num_threads{0};  // 0 = not yet initialised

int current_pid() {
#if defined(__linux__)
    return static_cast<int>(::getpid());
#else
    return 0;
#endif
}

}  // namespace

ThreadPool::ThreadPool(int nthreads) {
    for (int i = 1; i < nthreads; ++i) workers_.emplace_back(&ThreadPool::worker_loop, this, i);
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
}

bool ThreadPool::try_run(Task task, void* ctx, int parts) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    if (parts > size()) parts = size();
    {
        std::lock_guard<std::mutex> lk(mu_);
        task_ = task;
        ctx_ = ctx;
        parts_ = parts;
        pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
        generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    task(ctx, 0, parts);
    // Every worker acknowledges every job, so no worker can still be reading task_/ctx_ when
    // the next job overwrites them.
    for (unsigned spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
        if (spins < 4096) {
            RELU_CPU_RELAX();
        } else {
            std::this_thread::yield();  // a worker was preempted: give it the core
        }
    }
    return true;
}

void ThreadPool::worker_loop(int index) {
    std::uint64_t seen = 0;
    for (;;) {
        std::uint64_t gen = generation_.load(std::memory_order_acquire);
        if (gen == seen) {
            const auto deadline = std::chrono::steady_clock::now() + kSpinTime;
            for (unsigned k = 1; gen == seen; ++k) {
                RELU_CPU_RELAX();
                gen = generation_.load(std::memory_order_acquire);
                if ((k & 63u) == 0 && std::chrono::steady_clock::now() > deadline) break;
            }
        }
        if (gen == seen) {
            std::unique_lock<std::mutex> lk(mu_);
            cv_.wait(lk, [&] { return stop_ || generation_.load(std::memory_order_acquire) != seen; });
            if (stop_) return;
            gen = generation_.load(std::memory_order_acquire);
        }
        seen = gen;
        Task task;
        void* ctx;
        int parts;
        {
            std::lock_guard<std::mutex> lk(mu_);
            task = task_;
            ctx = ctx_;
            parts = parts_;
        }
        if (index < parts) task(ctx, index, parts);
        pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
}

int default_num_threads() {
    if (const char* env = std::getenv("RELU_MODULE_NUM_THREADS")) {
        char* end = nullptr;
        long v = std::strtol(env, &end, 10);
        if (end != env && *end == '\0' && v >= 1 && v <= 1024) return static_cast<int>(v);
    }
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n >= 1) return n;
    }
#endif
    unsigned hw = std::thread::hardware_concurrency();
    return hw >= 1 ? static_cast<int>(hw) : 1;
}

int get_num_threads() {
    int n = g_num_threads.load(std::memory_order_relaxed);
    if (n == 0) {
        n = default_num_threads();
        g_num_threads.store(n, std::memory_order_relaxed);
    }
    return n;
}

void set_num_threads(int n) { g_num_threads.store(n < 1 ? 1 : n, std::memory_order_relaxed); }

namespace {
std::mutex g_pool_mu;
std::shared_ptr<ThreadPool>* g_pool = nullptr;  // leaked at exit on purpose: joining workers
int g_pool_pid = 0;                             // during interpreter shutdown can deadlock
}  // namespace

std::shared_ptr<ThreadPool> global_pool() {
    const int want = get_num_threads();
    const int pid = current_pid();
    std::lock_guard<std::mutex> lk(g_pool_mu);
    if (g_pool != nullptr && g_pool_pid != pid) {
        // Forked child: the workers exist only in the parent and the pool's mutexes may be in
        // any state. Abandon the old pool (never join or destroy it) and build a fresh one.
        g_pool = nullptr;
    }
    if (g_pool == nullptr) {
        g_pool = new std::shared_ptr<ThreadPool>();
    }
    if (!*g_pool || (*g_pool)->size() != want) {
        *g_pool = std::make_shared<ThreadPool>(want);
        g_pool_pid = pid;
    }
    return *g_pool;
}

}  // namespace relu_kernel
