// A small persistent thread pool for the kernels: plain C++, no Python types.
//
// Why not std::thread per call: spawning costs 30-140 us here, more than the whole kernel at
// 1e5-1e6 elements. Why not OpenMP: torch ships its own libgomp, and two OpenMP runtimes in
// one process spin against each other on a 2-core machine.
//
// Jobs are split into blocks, and the blocks into one contiguous share per thread (the caller
// is thread 0). Each thread claims blocks of its own share from an atomic counter, so in steady
// state thread i touches the same memory every call and finds it in its own L2; a thread that
// runs out then claims blocks of the other shares. On a busy machine a worker may be
// descheduled when a job arrives: the caller then claims every block itself and closes the job,
// so a late worker never delays a call (a plain static split would wait for its share). Idle
// workers spin briefly, so back-to-back calls start in well under a microsecond, and then sleep on
// a condition variable so an idle pool costs no CPU.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace relu_kernel {

class ThreadPool {
public:
    using Task = void (*)(void* ctx, std::size_t block);

    // A pool that runs jobs on up to `nthreads` threads: the caller plus nthreads - 1 workers.
    // Never throws for a thread that cannot start: the pool is then smaller (see size()) and
    // start_error() says why.
    explicit ThreadPool(int nthreads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return static_cast<int>(workers_.size()) + 1; }
    const std::string& start_error() const { return start_error_; }

    // Runs task(ctx, b) for every b in [0, blocks), on the caller and whichever workers join in
    // time. Returns false (and runs nothing) if another thread is using the pool right now, so
    // the caller can run the job itself instead of waiting.
    bool try_run(Task task, void* ctx, std::size_t blocks);

private:
    int start_workers(int count);  // returns how many run now
    void stop_workers();
    void worker_loop(int index);
    void work(int index);

    static constexpr std::uint32_t kClosed = 1u << 31;

    std::vector<std::thread> workers_;
    std::mutex busy_;  // held by the one caller that owns the pool during a job
    std::mutex mu_;
    std::condition_variable cv_;
    std::atomic<std::uint64_t> generation_{0};
    // Workers currently inside the job, plus kClosed once the caller has finished all blocks.
    std::atomic<std::uint32_t> joined_{kClosed};
    struct alignas(64) Share {  // one cache line each: threads claim without false sharing
        std::atomic<std::size_t> next{0};
        std::size_t end = 0;
    };
    std::unique_ptr<Share[]> shares_;
    std::atomic<Task> task_{nullptr};
    std::atomic<void*> ctx_{nullptr};
    std::atomic<std::size_t> blocks_{0};
    std::atomic<unsigned> csr_{0};
    std::atomic<std::int64_t> last_start_ns_{0};  // when the previous job started (steady clock)
    std::atomic<std::int64_t> spin_ns_{0};  // how long workers spin after the current job  // the
                                            // caller's MXCSR (x86), which workers adopt for the job
    bool stop_ = false;                     // guarded by mu_
    std::atomic<bool> stopping_{false};     // the same, read by spinning workers
    std::string start_error_;
};

// Number of threads used for large arrays: settings().num_threads (RELU_MODULE_NUM_THREADS if
// valid, else the CPUs this process may run on).
int default_num_threads();
int get_num_threads();
// Threads the calling thread may use for its next job: 1 inside a CallerOnly scope, else
// get_num_threads().
int threads_for_call();
// For its lifetime, every job started by this thread runs on this thread alone. Used at
// interpreter shutdown, when waiting on anything (the pool, the GIL) may never end.
class CallerOnly {
public:
    CallerOnly();
    ~CallerOnly();
    CallerOnly(const CallerOnly&) = delete;
    CallerOnly& operator=(const CallerOnly&) = delete;

private:
    bool saved_;
};
// Builds (or resizes) the pool a job of `out_bytes` would use, so that a pool that cannot start
// its threads is known, and take_pool_warning() says so, before the job writes anything.
void prepare_pool(std::size_t out_bytes);
// Changes the thread count, clamped to [1, kMaxThreads] (the bindings reject values outside);
// the pool is rebuilt lazily on the next parallel call.
void set_num_threads(int n);
// The warning of a pool that could not start all its threads (and now runs on fewer), once;
// empty if there is none. The bindings turn it into a Python RuntimeWarning.
std::string take_pool_warning();
// The process-wide pool sized get_num_threads(); rebuilt after fork() (workers do not survive it).
// Shared ownership: a resize by one Python thread cannot free a pool another is using.
std::shared_ptr<ThreadPool> global_pool();

}  // namespace relu_kernel
