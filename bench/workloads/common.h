// Shared helpers for the whole-program workloads: key=value arguments, a
// fixed-seed RNG, content fill/verify, a checksum line, and RSS reporting.
//
// Every workload prints exactly one line "checksum <hex>" on stdout. It is
// derived only from the work done (never from addresses or timing), so it is
// identical under every correct allocator; bench/run compares it.
#pragma once

#include <cstdint>
#include <sys/resource.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unistd.h>

namespace wl {

// Arguments are key=value pairs: `server ops=2000000 threads=2`.
struct Args {
    int argc;
    char** argv;
    long get(const char* key, long def) const {
        size_t n = std::strlen(key);
        for (int i = 1; i < argc; ++i)
            if (std::strncmp(argv[i], key, n) == 0 && argv[i][n] == '=')
                return std::strtol(argv[i] + n + 1, nullptr, 0);
        return def;
    }
};

inline uint64_t mix(uint64_t x) {  // splitmix64 finaliser
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

struct Rng {  // xorshift64*, fixed seed per stream
    uint64_t s;
    explicit Rng(uint64_t seed) : s(mix(seed) | 1) {}
    uint64_t next() {
        s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
        return s * 0x2545f4914f6cdd1dull;
    }
    uint64_t below(uint64_t n) { return next() % n; }
    uint64_t range(uint64_t lo, uint64_t hi) { return lo + below(hi - lo + 1); }  // inclusive
};

// Skewed size distribution typical of programs: mostly small, a tail of
// medium and a few large blocks.
inline size_t typical_size(Rng& r, size_t max_large = 256 * 1024) {
    uint64_t p = r.below(1000);
    if (p < 800) return r.range(8, 256);
    if (p < 970) return r.range(257, 4096);
    if (p < 997) return r.range(4097, 32768);
    return r.range(32769, max_large);
}

// Write a pattern determined by `tag` into a block: a header word, the last
// word and one word per 4 KiB page in between.
inline void fill(void* p, size_t n, uint64_t tag) {
    auto* c = static_cast<unsigned char*>(p);
    uint64_t v = mix(tag);
    if (n < sizeof v) { std::memset(c, int(v & 0xff), n); return; }
    for (size_t off = 0; off + sizeof v <= n; off += 4096) std::memcpy(c + off, &v, sizeof v);
    std::memcpy(c + n - sizeof v, &v, sizeof v);
}

// Hash what fill() wrote; a block overwritten by another one hashes differently.
inline uint64_t digest(const void* p, size_t n) {
    auto* c = static_cast<const unsigned char*>(p);
    uint64_t h = n;
    if (n < 8) { for (size_t i = 0; i < n; ++i) h = mix(h ^ c[i]); return h; }
    uint64_t v;
    for (size_t off = 0; off + sizeof v <= n; off += 4096) { std::memcpy(&v, c + off, sizeof v); h = mix(h ^ v); }
    std::memcpy(&v, c + n - sizeof v, sizeof v);
    return mix(h ^ v);
}

inline void print_checksum(uint64_t h) { std::printf("checksum %016llx\n", (unsigned long long)h); }

// Resident set size now, in KiB, from /proc/self/statm (no allocation).
inline long rss_kib() {
    char buf[128];
    FILE* f = std::fopen("/proc/self/statm", "r");
    if (!f) return -1;
    long size = 0, res = 0;
    if (std::fgets(buf, sizeof buf, f)) std::sscanf(buf, "%ld %ld", &size, &res);
    std::fclose(f);
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

// RSS now, and the page faults since the last report (a purged page that is
// used again costs one).
inline void report_rss(const char* label) {
    static long last_faults = 0;
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    std::fprintf(stderr, "rss %-12s %8ld KiB %8ld faults\n", label, rss_kib(), u.ru_minflt - last_faults);
    last_faults = u.ru_minflt;
}

}  // namespace wl
