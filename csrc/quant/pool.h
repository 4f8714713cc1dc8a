// A small thread pool for the packed linear: the calling thread and n-1 workers take tasks one at a time from one
// atomic counter. Why not OpenMP: torch brings its own libgomp, and a second OpenMP runtime in the process would
// keep a second set of threads; and why dynamic tasks: on a machine whose cores are busy with other work, a worker
// that the OS has not scheduled simply takes no task, and the caller does its share, so a product never waits for
// a thread that is not running (static splits wait for the slowest thread). Workers spin a few tens of
// microseconds after a job, which covers the gap to the next layer's product, then sleep: an idle pool costs nothing.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace gpt2tui::quant {

class Pool {
public:
    using Task = std::function<void(int64_t)>;

    static Pool& instance();

    // Run task(i) for i in [0, n), on the caller and the workers; returns when all have run. A second caller while
    // a job runs (another Python thread) runs its tasks on its own thread instead of waiting.
    void run(int64_t n, const Task& task);

    void set_threads(int n);  // total threads including the caller; 1 means no workers
    int threads() const { return int(workers_.size()) + 1; }

    void after_fork_in_child();

private:
    Pool() = default;
    void worker_loop(int index);
    void stop_workers();
    bool take_and_run(uint64_t generation);

    // The job word: generation (16 bits) | task count (24 bits) | next task (24 bits), claimed by compare-exchange,
    // so a worker can never take a task of a job that has ended or not yet begun.
    std::atomic<uint64_t> job_{0};
    std::atomic<int64_t> done_{0};
    const Task* task_ = nullptr;
    uint64_t generation_ = 0;

    std::vector<std::thread*> workers_;
    std::mutex* sleep_mu_ = new std::mutex;
    std::condition_variable* wake_ = new std::condition_variable;
    std::atomic<int> sleepers_{0};
    std::atomic<bool> stopping_{false};
    std::mutex* run_mu_ = new std::mutex;  // one job at a time
    std::mutex config_mu_;
};

}  // namespace gpt2tui::quant
