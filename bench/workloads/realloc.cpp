// Realloc-grown buffers: a set of growing buffers (think std::vector or a
// string builder written in C). Each append grows a buffer by realloc, half of
// the buffers by doubling capacity, half by a small fixed step, so both
// in-place growth and move-and-copy paths are hit, from 16 B to several MiB.
// Every byte appended is checked when the buffer is retired.
//   realloc appends=<total appends> buffers=<live buffers> max=<max bytes>
#include "common.h"
#include <vector>

namespace {

struct Buf { unsigned char* p = nullptr; size_t len = 0, cap = 0, limit = 0; bool doubling = false; uint64_t seed = 0; };

unsigned char byte_at(uint64_t seed, size_t i) { return static_cast<unsigned char>(wl::mix(seed + i / 8) >> (i % 8 * 8)); }

}  // namespace

int main(int argc, char** argv) {
    wl::Args a{argc, argv};
    long appends = a.get("appends", 4000000), nbuf = a.get("buffers", 64), max = a.get("max", 4 << 20);
    wl::Rng r(6000);
    std::vector<Buf> bufs(nbuf);
    uint64_t h = 0, seeds = 0;
    auto retire = [&](Buf& b) {
        uint64_t bh = b.len;
        for (size_t i = 0; i < b.len; i += 61) bh = wl::mix(bh ^ (b.p[i] == byte_at(b.seed, i)));
        h += bh + wl::digest(b.p, b.len);
        std::free(b.p);
        b = Buf{};
    };
    for (long i = 0; i < appends; ++i) {
        Buf& b = bufs[r.below(nbuf)];
        if (b.limit == 0) {  // start a new buffer with a random final size
            b.limit = size_t(1) << r.range(6, 63 - __builtin_clzll(max));
            b.doubling = r.below(2);
            b.seed = ++seeds;
        }
        size_t add = r.range(1, b.doubling ? 256 : 64);
        if (b.len + add > b.cap) {
            size_t cap = b.doubling ? (b.cap ? b.cap * 2 : 16) : b.cap + 256;
            if (cap < b.len + add) cap = b.len + add;
            auto* p = static_cast<unsigned char*>(std::realloc(b.p, cap));
            if (!p) std::abort();
            b.p = p;
            b.cap = cap;
        }
        for (size_t k = 0; k < add; ++k, ++b.len) b.p[b.len] = byte_at(b.seed, b.len);
        if (b.len >= b.limit) retire(b);
    }
    for (Buf& b : bufs)
        if (b.p) retire(b);
    wl::print_checksum(h);
}
