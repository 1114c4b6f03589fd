#include "thread_pool.hpp"

#include <algorithm>
#include <chrono>
#include <string>
#include <system_error>

#include "policy.hpp"
#include "settings.hpp"

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#include <unistd.h>
#endif
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define RELU_CPU_RELAX() _mm_pause()
#define RELU_HAVE_MXCSR 1
#else
#define RELU_CPU_RELAX() std::this_thread::yield()
#endif

namespace relu_kernel {
namespace {

// How long an idle worker spins before it sleeps. A worker that sleeps when a call arrives costs
// that call a futex wake and 10-50 us before the worker helps, a large share of a call on an
// L3-resident array (3e5 float32: ~40 us); OpenMP avoids it by spinning for milliseconds after
// every parallel region, idle or not. Here the spin adapts: while calls come faster than
// settings().spin_us apart, workers spin that long after each job, so the next call finds them
// awake; after an isolated call they spin only kMinSpin, so an idle process pays next to nothing.
constexpr std::int64_t kMinSpinNs = 50'000;

std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

std::atomic<int> g_num_threads{0};  // 0 = not yet initialised

int current_pid() {
#if defined(__linux__)
    return static_cast<int>(::getpid());
#else
    return 0;
#endif
}

}  // namespace

ThreadPool::ThreadPool(int nthreads) : shares_(new Share[nthreads < 1 ? 1 : nthreads]) {
    const int want = nthreads > 1 ? nthreads - 1 : 0;
    const int started = start_workers(want);
    if (started < want) {
        // Out of threads (address-space or pid limits): whatever started used up the headroom
        // the process needs for its data. Keep no more workers than there are usable CPUs.
        stop_workers();
        start_workers(std::min(started, usable_cpus() - 1));
    }
}

ThreadPool::~ThreadPool() {
    stop_workers();
}

int ThreadPool::start_workers(int count) {
    workers_.reserve(static_cast<std::size_t>(count));
    // A thread that cannot start ends the loop; letting the exception escape instead would
    // destroy the condition variable the started ones wait on (a hang) and their joinable
    // std::threads (an abort).
    try {
        for (int i = 1; i <= count; ++i) workers_.emplace_back(&ThreadPool::worker_loop, this, i);
    } catch (const std::system_error& err) {
        start_error_ = err.what();
    }
    return static_cast<int>(workers_.size());
}

void ThreadPool::stop_workers() {
    stopping_.store(true, std::memory_order_relaxed);  // ends a spin at once, not after spin_us
    {
        std::lock_guard<std::mutex> lk(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = false;
    stopping_.store(false, std::memory_order_relaxed);
}

void ThreadPool::work(int index) {
#if defined(RELU_HAVE_MXCSR)
    // Compute under the caller's floating-point mode (flush-to-zero, denormals-are-zero), so a
    // result never depends on which thread took which block.
    const unsigned csr = csr_.load(std::memory_order_relaxed);
    if (index != 0 && _mm_getcsr() != csr) _mm_setcsr(csr);
#endif
    const Task task = task_.load(std::memory_order_relaxed);
    void* ctx = ctx_.load(std::memory_order_relaxed);
    const int n = size();
    for (int k = 0; k < n; ++k) {  // own share first, then help the others
        Share& s = shares_[(index + k) % n];
        for (std::size_t b; (b = s.next.fetch_add(1, std::memory_order_relaxed)) < s.end;)
            task(ctx, b);
    }
}

bool ThreadPool::try_run(Task task, void* ctx, std::size_t blocks) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    task_.store(task, std::memory_order_relaxed);
    ctx_.store(ctx, std::memory_order_relaxed);
    blocks_.store(blocks, std::memory_order_relaxed);
#if defined(RELU_HAVE_MXCSR)
    csr_.store(_mm_getcsr(), std::memory_order_relaxed);
#endif
    const std::size_t n = static_cast<std::size_t>(size());
    for (std::size_t i = 0; i < n; ++i) {
        shares_[i].next.store(blocks * i / n, std::memory_order_relaxed);
        shares_[i].end = blocks * (i + 1) / n;
    }
    const std::int64_t now = now_ns(), max_spin = settings().spin_us * 1000;
    const std::int64_t gap = now - last_start_ns_.exchange(now, std::memory_order_relaxed);
    spin_ns_.store(gap < max_spin ? max_spin : std::min(kMinSpinNs, max_spin),
                   std::memory_order_relaxed);
    joined_.store(0, std::memory_order_release);  // open: publishes the job to joining workers
    {
        std::lock_guard<std::mutex> lk(mu_);
        generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    work(0);
    // Close the job: workers that have not joined yet never will (they see kClosed), so only
    // the ones already inside, each finishing at most one block, are waited for.
    joined_.fetch_or(kClosed, std::memory_order_acq_rel);
    for (unsigned spins = 0; (joined_.load(std::memory_order_acquire) & ~kClosed) != 0; ++spins) {
        if (spins < 4096) {
            RELU_CPU_RELAX();
        } else {
            std::this_thread::yield();  // a worker was preempted mid-block: give it the core
        }
    }
    return true;
}

void ThreadPool::worker_loop(int index) {
    std::uint64_t seen = 0;
    for (;;) {
        std::uint64_t gen = generation_.load(std::memory_order_acquire);
        if (gen == seen) {
            const std::int64_t deadline = now_ns() + spin_ns_.load(std::memory_order_relaxed);
            for (unsigned k = 1; gen == seen; ++k) {
                RELU_CPU_RELAX();
                gen = generation_.load(std::memory_order_acquire);
                if ((k & 63u) != 0) continue;
                if (now_ns() > deadline || stopping_.load(std::memory_order_relaxed)) break;
                // Polite: a thread of another library waiting for this core gets it.
                if ((k & 1023u) == 0) std::this_thread::yield();
            }
        }
        if (gen == seen) {
            std::unique_lock<std::mutex> lk(mu_);
            cv_.wait(lk,
                     [&] { return stop_ || generation_.load(std::memory_order_acquire) != seen; });
            if (stop_) return;
            gen = generation_.load(std::memory_order_acquire);
        }
        seen = gen;
        // Join the current job unless the caller has already closed it.
        std::uint32_t s = joined_.load(std::memory_order_acquire);
        while ((s & kClosed) == 0 &&
               !joined_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel,
                                              std::memory_order_acquire)) {
        }
        if (s & kClosed) continue;
        work(index);
        joined_.fetch_sub(1, std::memory_order_release);
    }
}

int default_num_threads() {
    return settings().num_threads;
}

int get_num_threads() {
    int n = g_num_threads.load(std::memory_order_relaxed);
    if (n == 0) {
        n = default_num_threads();
        g_num_threads.store(n, std::memory_order_relaxed);
    }
    return n;
}

namespace {
thread_local bool t_caller_only = false;
}  // namespace

int threads_for_call() {
    return t_caller_only ? 1 : get_num_threads();
}

CallerOnly::CallerOnly() : saved_(t_caller_only) {
    t_caller_only = true;
}
CallerOnly::~CallerOnly() {
    t_caller_only = saved_;
}

void set_num_threads(int n) {
    g_num_threads.store(n < 1 ? 1 : (n > kMaxThreads ? kMaxThreads : n), std::memory_order_relaxed);
}

namespace {
std::mutex g_pool_mu;
std::mutex g_warning_mu;
std::string g_warning;  // a degraded pool's message, until take_pool_warning() collects it
std::atomic<bool> g_warning_pending{false};
std::shared_ptr<ThreadPool>* g_pool = nullptr;  // leaked at exit on purpose: joining workers
int g_pool_pid = 0;                             // during interpreter shutdown can deadlock
}  // namespace

#if defined(__linux__)
namespace {
// fork() while another thread holds g_pool_mu would leave it locked forever in the child: take it
// around fork so the child starts with it free.
void fork_prepare() {
    g_pool_mu.lock();
}
void fork_release() {
    g_pool_mu.unlock();
}
[[maybe_unused]] const bool g_atfork_registered =
    pthread_atfork(fork_prepare, fork_release, fork_release) == 0;
}  // namespace
#endif

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
        const int got = (*g_pool)->size();
        if (got < want) {
            // Run on the threads that started, and say so once; the thread count follows, so the
            // next call does not try (and fail) again.
            g_num_threads.store(got, std::memory_order_relaxed);
            std::lock_guard<std::mutex> wl(g_warning_mu);
            g_warning = "relu_module: could only start " + std::to_string(got) + " of " +
                        std::to_string(want) + " threads (" + (*g_pool)->start_error() +
                        "); running on " + std::to_string(got) +
                        ". Lower RELU_MODULE_NUM_THREADS or call set_num_threads() to silence this";
            g_warning_pending.store(true, std::memory_order_release);
        }
    }
    return *g_pool;
}

void prepare_pool(std::size_t out_bytes) {
    if (out_bytes >= policy().parallel_min_bytes && threads_for_call() > 1) global_pool();
}

std::string take_pool_warning() {
    if (!g_warning_pending.load(std::memory_order_acquire)) return {};
    std::lock_guard<std::mutex> wl(g_warning_mu);
    g_warning_pending.store(false, std::memory_order_relaxed);
    std::string w;
    w.swap(g_warning);
    return w;
}

}  // namespace relu_kernel
