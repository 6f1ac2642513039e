// Helpers shared by the tests: a seeded generator, and byte patterns that
// depend on (block, size, seed) so that a block written through an
// overlapping neighbour, or handed out twice, reads back wrong.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/mman.h>

namespace mapalloc_test {

// A write the compiler cannot drop or move, and that changes the byte at p
// whatever it held: a canary, or a freed block's mark, is derived from a
// random secret and may hold any value, so a fixed value would leave it
// unchanged 1 time in 256. (The read faults as the write would on a guard
// page.)
inline void poke(void* p) {
  volatile unsigned char* v = static_cast<unsigned char*>(p);
  *v = static_cast<unsigned char>(~*v);
}

// Whether this kernel takes guard markers (MADV_GUARD_INSTALL, Linux 6.13):
// where it does not (or under tests/old_kernel), runs have no end guards and
// chunks' guard pages are mprotect'ed.
inline bool kernel_has_guard_markers() {
  void* m = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return false;
  bool ok = madvise(m, 4096, 102 /* MADV_GUARD_INSTALL */) == 0;
  munmap(m, 4096);
  return ok;
}

// What mapalloc_mmap_threshold() reads after setting t: secure builds serve
// at most 1 MiB less the 2 bytes of the canary's record from the classes.
inline size_t threshold_in_effect(size_t t) {
  const size_t cap = (size_t(1) << 20) - 4096 - (MAPALLOC_TEST_SECURE ? 2 : 0);  // a chunk less its guard page
  return t < cap ? t : cap;
}

// A request that takes a block of exactly block_size bytes (a class's size):
// secure builds keep the block's last 2 bytes for the canary's record.
inline size_t request_for_block(size_t block_size) { return block_size - (MAPALLOC_TEST_SECURE ? 2 : 0); }

// The seed every randomised test starts from; MAPALLOC_TEST_SEED overrides it
// so a failure printed with its seed can be replayed.
inline uint64_t test_seed() {
  static const uint64_t seed = [] {
    const char* s = std::getenv("MAPALLOC_TEST_SEED");
    return s && *s ? std::strtoull(s, nullptr, 0) : uint64_t(0x5eed0f3a11c0ffee);
  }();
  return seed;
}

// Stress iterations are divided by this; meson sets it for sanitizer builds
// (ThreadSanitizer runs 5-15x slower) so each test stays inside its limit.
#ifdef MAPALLOC_TEST_SLOWDOWN
constexpr unsigned kSlowdown = MAPALLOC_TEST_SLOWDOWN;
#else
constexpr unsigned kSlowdown = 1;
#endif

inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// xorshift64*: fast, deterministic per seed, good enough to pick sizes.
struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(mix64(seed) | 1) {}
  uint64_t next() {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545f4914f6cdd1dull;
  }
  // Uniform in [lo, hi].
  uint64_t range(uint64_t lo, uint64_t hi) { return lo + next() % (hi - lo + 1); }
  bool chance(unsigned percent) { return next() % 100 < percent; }
};

inline uint64_t block_key(const void* p, size_t size, uint64_t seed) {
  return mix64(reinterpret_cast<uintptr_t>(p) ^ mix64(size ^ mix64(seed)));
}

// Byte i of the pattern is byte (i % 8) of the word key ^ (i / 8) * K.
inline uint64_t pattern_word(uint64_t key, size_t word) { return key ^ (word * 0xd6e8feb86659fd93ull); }

inline void fill_pattern(void* p, size_t n, uint64_t key) {
  auto* b = static_cast<unsigned char*>(p);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w = pattern_word(key, i / 8);
    std::memcpy(b + i, &w, 8);
  }
  if (i < n) {
    uint64_t w = pattern_word(key, i / 8);
    std::memcpy(b + i, &w, n - i);
  }
}

// Offset of the first byte that differs from the pattern, or SIZE_MAX.
inline size_t check_pattern(const void* p, size_t n, uint64_t key) {
  const auto* b = static_cast<const unsigned char*>(p);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w = pattern_word(key, i / 8);
    if (std::memcmp(b + i, &w, 8) != 0) break;
  }
  for (; i < n; i++) {
    uint64_t w = pattern_word(key, i / 8);
    if (b[i] != static_cast<unsigned char>(w >> (8 * (i % 8)))) return i;
  }
  return SIZE_MAX;
}

// Offset of the first non-zero byte, or SIZE_MAX.
inline size_t first_nonzero(const void* p, size_t n) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; i++)
    if (b[i]) return i;
  return SIZE_MAX;
}

inline bool is_aligned(const void* p, size_t alignment) { return reinterpret_cast<uintptr_t>(p) % alignment == 0; }

}  // namespace mapalloc_test
