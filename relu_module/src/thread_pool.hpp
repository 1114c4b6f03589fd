// A small persistent thread pool for the kernels: plain C++, no Python types.
//
// Why not std::thread per call: spawning costs 30-140 us here, more than the whole kernel at
// 1e5-1e6 elements. Why not OpenMP: torch ships its own libgomp, and two OpenMP runtimes in
// one process spin against each other on a 2-core machine. Workers spin briefly after a job
// (back-to-back calls then start in well under a microsecond) and then sleep on a condition
// variable so an idle pool costs no CPU.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace relu_kernel {

class ThreadPool {
public:
    using Task = void (*)(void* ctx, int part, int parts);

    // A pool that runs jobs on `nthreads` threads: the caller plus nthreads - 1 workers.
    explicit ThreadPool(int nthreads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return static_cast<int>(workers_.size()) + 1; }

    // Runs task(ctx, i, parts) for i in [0, parts), parts <= size(); the caller runs part 0.
    // Returns false (and runs nothing) if another thread is using the pool right now, so the
    // caller can fall back to running the whole job itself instead of waiting.
    bool try_run(Task task, void* ctx, int parts);

private:
    void worker_loop(int index);

    std::vector<std::thread> workers_;
    std::mutex busy_;  // held by the one caller that owns the pool during a job
    std::mutex mu_;
    std::condition_variable cv_;
    std::atomic<std::uint64_t> generation_{0};
    std::atomic<int> pending_{0};
    Task task_ = nullptr;
    void* ctx_ = nullptr;
    int parts_ = 0;
    bool stop_ = false;
};

// Number of threads used for large arrays: RELU_MODULE_NUM_THREADS if set, else the CPUs this
// process may run on (sched_getaffinity), at least 1.
int default_num_threads();
int get_num_threads();
// Changes the thread count (n >= 1); the pool is rebuilt lazily on the next parallel call.
void set_num_threads(int n);
// The process-wide pool sized get_num_threads(); rebuilt after fork() (workers do not survive it).
// Shared ownership: a resize by one Python thread cannot free a pool another is using.
std::shared_ptr<ThreadPool> global_pool();

}  // namespace relu_kernel
