#include "pool.h"

#include <pthread.h>

#include <chrono>

#if defined(__x86_64__)
#include <immintrin.h>
#define GPT2TUI_PAUSE() _mm_pause()
#else
#define GPT2TUI_PAUSE() std::this_thread::yield()
#endif

namespace gpt2tui::quant {
namespace {

constexpr int kGenBits = 16, kCountBits = 24;
constexpr uint64_t kCountMask = (uint64_t(1) << kCountBits) - 1;
constexpr int64_t kMaxTasks = int64_t(kCountMask);
// Long enough to bridge the host work between two layers' products in a decode step, short enough that a worker
// left without work gives its core back almost at once.
constexpr auto kSpin = std::chrono::microseconds(50);

uint64_t gen_of(uint64_t word) { return word >> (2 * kCountBits); }
uint64_t count_of(uint64_t word) { return (word >> kCountBits) & kCountMask; }
uint64_t next_of(uint64_t word) { return word & kCountMask; }
uint64_t make_word(uint64_t gen, uint64_t count, uint64_t next) {
    return (gen << (2 * kCountBits)) | (count << kCountBits) | next;
}

}  // namespace

Pool& Pool::instance() {
    // Never destroyed: workers may still be asleep at interpreter exit, and joining them then can deadlock.
    static Pool* pool = [] {
        auto* p = new Pool;
        pthread_atfork(nullptr, nullptr, [] { Pool::instance().after_fork_in_child(); });
        return p;
    }();
    return *pool;
}

bool Pool::take_and_run(uint64_t generation) {
    uint64_t word = job_.load(std::memory_order_acquire);
    bool ran = false;
    while (gen_of(word) == (generation & ((1u << kGenBits) - 1)) && next_of(word) < count_of(word)) {
        if (job_.compare_exchange_weak(word, word + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
            (*task_)(int64_t(next_of(word)));
            done_.fetch_add(1, std::memory_order_acq_rel);
            ran = true;
            word = job_.load(std::memory_order_acquire);
        }
    }
    return ran;
}

void Pool::run(int64_t n, const Task& task) {
    if (n <= 0) return;
    std::unique_lock<std::mutex> busy(*run_mu_, std::try_to_lock);
    if (workers_.empty() || n == 1 || n > kMaxTasks || !busy.owns_lock()) {
        for (int64_t i = 0; i < n; ++i) task(i);
        return;
    }
    generation_ = (generation_ + 1) & ((1u << kGenBits) - 1);
    task_ = &task;
    done_.store(0, std::memory_order_relaxed);
    job_.store(make_word(generation_, uint64_t(n), 0), std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
        { std::lock_guard<std::mutex> lock(*sleep_mu_); }
        wake_->notify_all();
    }
    take_and_run(generation_);
    // Tasks a worker has claimed may still be running: wait for them (they are short; spinning is cheaper than a
    // sleep and a wake).
    while (done_.load(std::memory_order_acquire) < n) GPT2TUI_PAUSE();
    task_ = nullptr;
}

void Pool::worker_loop(int) {
    uint64_t seen = gen_of(job_.load(std::memory_order_acquire));
    while (!stopping_.load(std::memory_order_acquire)) {
        auto spin_until = std::chrono::steady_clock::now() + kSpin;
        uint64_t gen = seen;
        int polls = 0;
        while ((gen = gen_of(job_.load(std::memory_order_acquire))) == seen) {
            if (stopping_.load(std::memory_order_acquire)) return;
            GPT2TUI_PAUSE();
            if (++polls % 64 == 0 && std::chrono::steady_clock::now() > spin_until) {
                std::unique_lock<std::mutex> lock(*sleep_mu_);
                sleepers_.fetch_add(1, std::memory_order_seq_cst);
                wake_->wait(lock, [&] {
                    return gen_of(job_.load(std::memory_order_seq_cst)) != seen ||
                           stopping_.load(std::memory_order_seq_cst);
                });
                sleepers_.fetch_sub(1, std::memory_order_seq_cst);
                spin_until = std::chrono::steady_clock::now() + kSpin;
            }
        }
        seen = gen;
        take_and_run(gen);
    }
}

void Pool::stop_workers() {
    {
        std::lock_guard<std::mutex> lock(*sleep_mu_);
        stopping_.store(true, std::memory_order_seq_cst);
    }
    wake_->notify_all();
    for (std::thread* t : workers_) {
        t->join();
        delete t;
    }
    workers_.clear();
    stopping_.store(false, std::memory_order_seq_cst);
}

void Pool::set_threads(int n) {
    std::lock_guard<std::mutex> config(config_mu_);
    std::lock_guard<std::mutex> busy(*run_mu_);
    if (n < 1) n = 1;
    if (n == threads()) return;
    stop_workers();
    for (int i = 1; i < n; ++i) workers_.push_back(new std::thread([this, i] { worker_loop(i); }));
}

void Pool::after_fork_in_child() {
    // Only the forking thread exists in the child. The workers' objects describe threads of the parent: leak them
    // (joining or destroying one would abort), and make new locks, since a worker may have held one at the fork.
    workers_.clear();
    sleep_mu_ = new std::mutex;
    wake_ = new std::condition_variable;
    run_mu_ = new std::mutex;
    sleepers_.store(0);
    stopping_.store(false);
    job_.store(0);
    generation_ = 0;
}

}  // namespace gpt2tui::quant
