// Allocator microbenchmarks (Google Benchmark). They call the standard
// malloc/free, so one binary measures any allocator through LD_PRELOAD.
// Built with -fno-builtin so that malloc/free pairs are real calls.
//
// Every benchmark reports items_per_second, one item being one allocation
// (with its free); bench/run turns that into ns per allocation.
// Extra flag: --max_threads=N (default: hardware threads) for the scaling runs.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr long KiB = 1024;

// One malloc+free pair per iteration; the first byte is written so the memory
// must really be there.
void BM_MallocFree(benchmark::State& st) {
    size_t n = st.range(0);
    for (auto _ : st) {
        auto* p = static_cast<char*>(std::malloc(n));
        benchmark::DoNotOptimize(p);
        p[0] = 1;
        std::free(p);
    }
    st.SetItemsProcessed(st.iterations());
}
BENCHMARK(BM_MallocFree)->Arg(8)->Arg(16)->Arg(32)->Arg(64)->Arg(128)->Arg(256)->Arg(512)->Arg(KiB)
    ->Arg(4 * KiB)->Arg(16 * KiB)->Arg(64 * KiB)->Arg(120 * KiB)->Arg(128 * KiB)->Arg(136 * KiB)
    ->Arg(256 * KiB)->Arg(512 * KiB)->Arg(1024 * KiB);

// Allocate N blocks, then free them in allocation order (0), reverse order (1)
// or shuffled (2).
void BM_Batch(benchmark::State& st) {
    size_t count = st.range(0), size = st.range(1);
    std::vector<void*> ptrs(count);
    std::vector<size_t> order(count);
    std::iota(order.begin(), order.end(), 0);
    if (st.range(2) == 1) std::reverse(order.begin(), order.end());
    if (st.range(2) == 2) std::shuffle(order.begin(), order.end(), std::mt19937_64(42));
    for (auto _ : st) {
        for (auto& p : ptrs) { p = std::malloc(size); benchmark::DoNotOptimize(p); }
        for (size_t i : order) std::free(ptrs[i]);
    }
    st.SetItemsProcessed(st.iterations() * count);
}
BENCHMARK(BM_Batch)->ArgNames({"n", "size", "order"})
    ->Args({1000, 64, 0})->Args({1000, 64, 2})->Args({100000, 64, 0})->Args({100000, 64, 1})
    ->Args({100000, 64, 2})->Args({10000, 1000, 2});

void BM_Calloc(benchmark::State& st) {
    size_t n = st.range(0);
    for (auto _ : st) {
        auto* p = static_cast<char*>(std::calloc(1, n));
        benchmark::DoNotOptimize(p);
        std::free(p);
    }
    st.SetItemsProcessed(st.iterations());
}
BENCHMARK(BM_Calloc)->Arg(64)->Arg(4 * KiB)->Arg(64 * KiB)->Arg(1024 * KiB);

// Grow one buffer from 16 B to range(0) bytes, by range(1) bytes per realloc
// (0 = doubling). One item = one realloc.
void BM_ReallocGrow(benchmark::State& st) {
    size_t max = st.range(0), step = st.range(1);
    long reallocs = 0;
    for (auto _ : st) {
        void* p = nullptr;
        for (size_t n = 16; n <= max; n = step ? n + step : n * 2, ++reallocs) {
            p = std::realloc(p, n);
            benchmark::DoNotOptimize(p);
            static_cast<char*>(p)[n - 1] = 1;
        }
        std::free(p);
    }
    st.SetItemsProcessed(reallocs);
}
BENCHMARK(BM_ReallocGrow)->ArgNames({"max", "step"})
    ->Args({64 * KiB, 64})->Args({4096 * KiB, 0});

void BM_Aligned(benchmark::State& st) {
    size_t align = st.range(0), size = st.range(1);
    for (auto _ : st) {
        void* p = nullptr;
        if (posix_memalign(&p, align, size) != 0) st.SkipWithError("posix_memalign failed");
        benchmark::DoNotOptimize(p);
        std::free(p);
    }
    st.SetItemsProcessed(st.iterations());
}
BENCHMARK(BM_Aligned)->ArgNames({"align", "size"})
    ->Args({64, 100})->Args({4 * KiB, 100})->Args({64 * KiB, 64 * KiB})->Args({2048 * KiB, 100});

// Blocks allocated here are freed by a helper thread, in batches through a
// bounded queue: cross-thread free throughput (both threads' work counted).
void BM_CrossThreadFree(benchmark::State& st) {
    size_t size = st.range(0);
    constexpr size_t kBatch = 256;
    std::mutex m;
    std::condition_variable cv;
    std::deque<std::vector<void*>> q;
    bool done = false;
    std::thread freer([&] {
        for (;;) {
            std::unique_lock l(m);
            cv.wait(l, [&] { return !q.empty() || done; });
            if (q.empty()) return;
            auto batch = std::move(q.front());
            q.pop_front();
            l.unlock();
            cv.notify_all();
            for (void* p : batch) std::free(p);
        }
    });
    for (auto _ : st) {
        std::vector<void*> batch(kBatch);
        for (auto& p : batch) { p = std::malloc(size); benchmark::DoNotOptimize(p); }
        std::unique_lock l(m);
        cv.wait(l, [&] { return q.size() < 4; });
        q.push_back(std::move(batch));
        cv.notify_all();
    }
    { std::lock_guard l(m); done = true; }
    cv.notify_all();
    freer.join();
    st.SetItemsProcessed(st.iterations() * kBatch);
}
BENCHMARK(BM_CrossThreadFree)->Arg(64)->Arg(1024)->UseRealTime();

// Thread scaling: every thread replaces random blocks (16 B .. 1 KiB) of its
// own working set of 256. Total throughput over wall time.
void BM_ThreadScaling(benchmark::State& st) {
    std::mt19937 rng(st.thread_index() + 1);
    std::vector<void*> set(256, nullptr);
    for (auto _ : st) {
        unsigned r = rng();
        void*& p = set[r & 255];
        std::free(p);
        p = std::malloc(16 + (r >> 8) % 1009);
        benchmark::DoNotOptimize(p);
    }
    for (void* p : set) std::free(p);
    st.SetItemsProcessed(st.iterations());
}

}  // namespace

int main(int argc, char** argv) {
    int max_threads = std::max(1u, std::thread::hardware_concurrency());
    // Take out our own flag before Google Benchmark sees the rest.
    int out = 1;
    for (int i = 1; i < argc; ++i) {
        if (std::strncmp(argv[i], "--max_threads=", 14) == 0) max_threads = std::max(1, std::atoi(argv[i] + 14));
        else argv[out++] = argv[i];
    }
    argc = out;
    auto* b = benchmark::RegisterBenchmark("BM_ThreadScaling", BM_ThreadScaling)->UseRealTime();
    for (int t = 1; t < max_threads; t *= 2) b->Threads(t);
    b->Threads(max_threads);

    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
}
