// Long-running fragmentation: phases of mixed sizes. Each phase allocates a
// population, frees a random majority of it and keeps the rest alive into
// later phases, so survivors pin pages that would otherwise be empty. Between
// phases the size mix shifts (small, medium, large, back to small). Prints
// RSS after each phase to stderr; the checksum covers every freed block.
//   frag blocks=<per phase> phases=<n> keep=<percent kept per phase>
#include "common.h"
#include <algorithm>
#include <vector>

namespace {

struct Block { void* p; size_t n; uint64_t tag; };

size_t phase_size(wl::Rng& r, long phase) {
    switch (phase % 4) {
    case 0: return r.range(16, 128);
    case 1: return r.range(129, 2048);
    case 2: return r.below(20) ? r.range(2049, 16384) : r.range(16385, 300 * 1024);
    default: return wl::typical_size(r);
    }
}

}  // namespace

int main(int argc, char** argv) {
    wl::Args a{argc, argv};
    long blocks = a.get("blocks", 150000), phases = a.get("phases", 12), keep = a.get("keep", 5);
    wl::Rng r(4000);
    std::vector<Block> live;
    uint64_t h = 0, tag = 0;
    auto release = [&](Block& b) { h += wl::digest(b.p, b.n); std::free(b.p); };
    wl::report_rss("start");
    for (long ph = 0; ph < phases; ++ph) {
        std::vector<Block> fresh;
        fresh.reserve(blocks);
        long n = ph % 4 == 2 ? blocks / 8 : blocks;  // the large-block phase holds fewer blocks
        for (long i = 0; i < n; ++i) {
            Block b{nullptr, phase_size(r, ph), ++tag};
            if (!(b.p = std::malloc(b.n))) std::abort();
            wl::fill(b.p, b.n, b.tag);
            fresh.push_back(b);
        }
        // Keep a scattered few; free the rest in random order.
        std::vector<Block> doomed;
        for (Block& b : fresh) (long(r.below(100)) < keep ? live : doomed).push_back(b);
        for (size_t i = doomed.size(); i > 1; --i) std::swap(doomed[i - 1], doomed[r.below(i)]);
        for (Block& b : doomed) release(b);
        // Old survivors die off slowly too.
        std::vector<Block> still;
        for (Block& b : live) (r.below(4) ? still.push_back(b) : release(b));
        live.swap(still);
        char label[32];
        std::snprintf(label, sizeof label, "phase%ld", ph + 1);
        wl::report_rss(label);
    }
    for (Block& b : live) release(b);
    live = {};
    wl::report_rss("end");
    wl::print_checksum(h);
}
