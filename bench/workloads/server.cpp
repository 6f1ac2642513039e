// Server simulation: each thread serves "requests" by replacing a random block
// of its working set with a new one of a typical size. Slots differ in how
// often they are picked, so lifetimes range from one request to the whole run.
//   server ops=<requests per thread> threads=<n> slots=<working set per thread>
#include "common.h"
#include <thread>
#include <vector>

namespace {

struct Block { void* p; size_t n; uint64_t tag; };

uint64_t serve(unsigned id, long ops, long slots) {
    wl::Rng r(1000 + id);
    std::vector<Block> set(slots, Block{nullptr, 0, 0});
    uint64_t h = 0;
    for (long i = 0; i < ops; ++i) {
        // Squaring a uniform number favours low slots: short-lived there, long-lived high up.
        uint64_t u = r.below(slots);
        Block& b = set[(u * u) / slots];
        if (b.p) { h += wl::digest(b.p, b.n); std::free(b.p); }
        b.n = wl::typical_size(r, 64 * 1024);
        b.tag = (uint64_t(id) << 40) + i;
        b.p = std::malloc(b.n);
        if (!b.p) std::abort();
        wl::fill(b.p, b.n, b.tag);
    }
    for (Block& b : set)
        if (b.p) { h += wl::digest(b.p, b.n); std::free(b.p); }
    return h;
}

}  // namespace

int main(int argc, char** argv) {
    wl::Args a{argc, argv};
    long ops = a.get("ops", 10000000), threads = a.get("threads", 2), slots = a.get("slots", 20000);
    std::vector<uint64_t> sums(threads);
    std::vector<std::thread> pool;
    for (long t = 0; t < threads; ++t) pool.emplace_back([&, t] { sums[t] = serve(t, ops, slots); });
    uint64_t h = 0;
    for (long t = 0; t < threads; ++t) { pool[t].join(); h += sums[t]; }
    wl::print_checksum(h);
}
