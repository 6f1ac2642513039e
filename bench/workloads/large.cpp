// Large-block churn around the mmap threshold: a small working set of blocks
// between 64 KiB and 1 MiB (log-uniform, so both sides of 128 KiB are well
// represented) is replaced at random; every page of each new block is written.
//   large ops=<replacements per thread> threads=<n> slots=<working set>
#include "common.h"
#include <thread>
#include <vector>

namespace {

struct Block { void* p; size_t n; uint64_t tag; };

uint64_t churn(unsigned id, long ops, long slots) {
    wl::Rng r(5000 + id);
    std::vector<Block> set(slots, Block{nullptr, 0, 0});
    uint64_t h = 0;
    for (long i = 0; i < ops; ++i) {
        Block& b = set[r.below(slots)];
        if (b.p) { h += wl::digest(b.p, b.n); std::free(b.p); }
        int shift = 16 + int(r.below(4));                     // 64 KiB .. 512 KiB ...
        b.n = (size_t(1) << shift) + r.below(size_t(1) << shift);  // ... up to 1 MiB
        b.tag = (uint64_t(id) << 40) + i;
        if (!(b.p = std::malloc(b.n))) std::abort();
        wl::fill(b.p, b.n, b.tag);
    }
    for (Block& b : set)
        if (b.p) { h += wl::digest(b.p, b.n); std::free(b.p); }
    return h;
}

}  // namespace

int main(int argc, char** argv) {
    wl::Args a{argc, argv};
    long ops = a.get("ops", 20000), threads = a.get("threads", 1), slots = a.get("slots", 16);
    std::vector<uint64_t> sums(threads);
    std::vector<std::thread> pool;
    for (long t = 0; t < threads; ++t) pool.emplace_back([&, t] { sums[t] = churn(t, ops, slots); });
    uint64_t h = 0;
    for (long t = 0; t < threads; ++t) { pool[t].join(); h += sums[t]; }
    wl::print_checksum(h);
}
