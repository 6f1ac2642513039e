// Layer 1: bit tricks and compiler hints. No allocator knowledge.
#pragma once
#include <cstddef>
#include <cstdint>

#define MAPALLOC_LIKELY(x) __builtin_expect(!!(x), 1)
#define MAPALLOC_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define MAPALLOC_INLINE inline __attribute__((always_inline))
#define MAPALLOC_NOINLINE __attribute__((noinline))
#define MAPALLOC_COLD __attribute__((noinline, cold))
#define MAPALLOC_EXPORT __attribute__((visibility("default")))

namespace mapalloc {

constexpr size_t KiB = 1024;
constexpr size_t MiB = 1024 * KiB;
constexpr size_t GiB = 1024 * MiB;

constexpr bool is_pow2(size_t x) { return x != 0 && (x & (x - 1)) == 0; }
constexpr size_t align_up(size_t x, size_t a) { return (x + a - 1) & ~(a - 1); }
constexpr size_t align_down(size_t x, size_t a) { return x & ~(a - 1); }
constexpr unsigned log2_floor(size_t x) { return 63u - unsigned(__builtin_clzll(x)); }
// Set bits. Not __builtin_popcountll: without -mpopcnt that is a call into
// libgcc_s, a library the shim would load into every process for it.
constexpr unsigned count_ones(uint64_t x) {
  x -= (x >> 1) & 0x5555555555555555;
  x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0f;
  return unsigned((x * 0x0101010101010101) >> 56);
}

// Adds without wrapping; false if a + b overflows.
inline bool add_overflows(size_t a, size_t b, size_t* out) { return __builtin_add_overflow(a, b, out); }
inline bool mul_overflows(size_t a, size_t b, size_t* out) { return __builtin_mul_overflow(a, b, out); }

// Whether every byte of [from, to) is `value` (a fill around a block).
// Byte by byte, as a fill starts at any byte, and with no early exit, so
// that the compiler vectorises it (16 bytes a step, release builds).
inline bool holds_byte(const void* from, const void* to, unsigned char value) {
  unsigned char diff = 0;
  for (auto c = static_cast<const unsigned char*>(from); c < to; c++) diff |= *c ^ value;
  return diff == 0;
}

}  // namespace mapalloc
