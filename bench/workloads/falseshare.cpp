// False sharing: small blocks are written hard by different threads. In the
// first half each thread allocates its own block; in the second, one thread
// allocates all blocks back to back and hands one to each worker, the classic
// case where neighbouring small blocks share a cache line. The time shows
// whether the allocator keeps different threads' blocks apart.
//   falseshare rounds=<n> writes=<per block per round> threads=<n> size=<bytes>
#include "common.h"
#include <barrier>
#include <thread>
#include <vector>

namespace {

uint64_t hammer(void* p, long writes, uint64_t seed) {
    auto* v = static_cast<volatile uint64_t*>(p);
    *v = seed;
    for (long i = 0; i < writes; ++i) *v = *v * 6364136223846793005ull + 1442695040888963407ull;
    return *v;
}

}  // namespace

int main(int argc, char** argv) {
    wl::Args a{argc, argv};
    long rounds = a.get("rounds", 2000), writes = a.get("writes", 200000), threads = a.get("threads", 2),
         size = a.get("size", 16);
    std::vector<void*> handed(threads);
    std::vector<uint64_t> sums(threads);
    std::barrier sync(threads + 1);
    std::vector<std::thread> pool;
    for (long t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            for (long rd = 0; rd < rounds; ++rd) {
                uint64_t seed = wl::mix(uint64_t(rd) * 1000 + t);
                if (rd % 2 == 0) {  // own block
                    void* p = std::malloc(size);
                    if (!p) std::abort();
                    sums[t] += hammer(p, writes, seed);
                    std::free(p);
                    sync.arrive_and_wait();
                } else {  // block handed over by the main thread
                    sync.arrive_and_wait();
                    sums[t] += hammer(handed[t], writes, seed);
                    sync.arrive_and_wait();
                }
            }
        });
    for (long rd = 0; rd < rounds; ++rd) {
        if (rd % 2 == 0) { sync.arrive_and_wait(); continue; }
        for (auto& p : handed) if (!(p = std::malloc(size))) std::abort();
        sync.arrive_and_wait();
        sync.arrive_and_wait();
        for (auto& p : handed) std::free(p);
    }
    uint64_t h = 0;
    for (long t = 0; t < threads; ++t) { pool[t].join(); h += sums[t]; }
    wl::print_checksum(h);
}
