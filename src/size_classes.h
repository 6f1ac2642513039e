// Layer 3: size classes, computed at compile time.
//
// Classes 0..7 are 16..128 bytes in 16-byte steps. Above 128 bytes every
// power of two [2^k, 2^(k+1)) is split into 8 classes of step 2^(k-3), so a
// request wastes at most 2^(k-3) / (2^k + 1) < 12.5% of its size (secure
// builds keep two bytes of every block for the canary's record, below, so
// a request of a class's size, or one byte short of it, takes the next
// class: at most (2^(k-3) + 1) / (2^k - 1), under 13%, above 128 bytes, and
// at most 17 bytes up to 128). The last class is 1 MiB less a page (a
// chunk less its top guard page, arena.cpp); the mmap threshold can be set
// anywhere up to it (less the two bytes in secure builds).
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>

#include "base/bits.h"

namespace mapalloc {

constexpr size_t kMinBlock = 16;
constexpr unsigned kSmallClasses = 8;  // 16..128
constexpr unsigned kFirstPow2Log = 7;  // classes split powers of two from 128
constexpr unsigned kLastPow2Log = 19;  // up to 2^20
constexpr unsigned kNumClasses = kSmallClasses + (kLastPow2Log - kFirstPow2Log + 1) * 8;

// Arena geometry: 16 KiB slots (the page map's granule), chunks of 64 slots (1 MiB).
constexpr unsigned kSlotShift = 14;
constexpr size_t kSlotSize = size_t(1) << kSlotShift;
constexpr unsigned kSlotsPerChunk = 64;
constexpr size_t kChunkSize = kSlotSize * kSlotsPerChunk;
constexpr size_t kRunGuard = 4096;  // the last OS page of a run, when it is a guard
// With guards, a chunk's last page is one for good (arena.cpp), so the
// last class, whose blocks take a whole chunk, is a chunk less that page.
constexpr size_t kMaxClassSize = kChunkSize - kRunGuard;

constexpr unsigned class_of_large(size_t size) {
  unsigned k = log2_floor(size - 1);  // size in (2^k, 2^(k+1)]
  size_t step = size_t(1) << (k - 3);
  size_t j = (size - (size_t(1) << k) + step - 1) / step;  // 1..8
  return kSmallClasses + (k - kFirstPow2Log) * 8 + unsigned(j) - 1;
}

constexpr unsigned class_of_computed(size_t size) {
  if (size <= 128) return size <= 16 ? 0 : unsigned((size + 15) / 16) - 1;
  return class_of_large(size);
}

constexpr size_t class_block_size(unsigned c) {
  if (c < kSmallClasses) return (c + 1) * 16;
  if (c == kNumClasses - 1) return kMaxClassSize;
  unsigned k = (c - kSmallClasses) / 8 + kFirstPow2Log;
  unsigned j = (c - kSmallClasses) % 8 + 1;
  return (size_t(1) << k) + j * (size_t(1) << (k - 3));
}

// A page is the smallest power-of-two run of slots holding at least 4 blocks
// and a guard page (arena.cpp) (a whole chunk, at least one block, above 256
// KiB), and at least 64 KiB for blocks up to 1 KiB, 32 KiB above (with
// one-slot runs, bench frag moved guard markers twice as often: 35k calls
// against 20k, and 14% more time against 2%). Few blocks per page for
// medium sizes, so that one survivor pins little memory: with 64 KiB slots and 512 KiB pages for
// 8..128 KiB, bench frag's survivors pinned most pages. Big pages for small
// sizes, where most allocations are: with 16 KiB pages a heap cycled through
// many more pages, and bench server missed the cache (as simulated by
// callgrind) 15% more often than with 64 KiB, for 3% less RSS on frag.
constexpr size_t kSmallPageBytes = 64 * 1024;
constexpr size_t kSmallPageMaxBlock = 1024;
constexpr size_t kMediumPageBytes = 32 * 1024;
constexpr unsigned class_page_slots(unsigned c) {
  size_t b = class_block_size(c);
  size_t least = b <= kSmallPageMaxBlock ? kSmallPageBytes : 4 * b + kRunGuard;
  if (least < kMediumPageBytes) least = kMediumPageBytes;
  unsigned slots = 1;
  while (slots * kSlotSize < least && slots < kSlotsPerChunk) slots *= 2;
  return slots;
}

struct ClassInfo {
  uint32_t block_size;
  uint32_t page_slots;
  uint32_t capacity;    // blocks per page without a guard page (arena.cpp)
  // Blocks per page when its last OS page is a guard. Classes whose guard
  // would cost more than a quarter of them (512 KiB: one of two) have one
  // only at a chunk's end, where every run has its chunk's guard: their
  // runs, whole chunks, always end there.
  uint32_t guarded_capacity;
  uint64_t reciprocal;  // ceil(2^44 / block_size): offset / size as a multiply
  constexpr bool guard_always_worth() const { return guarded_capacity * 4 >= capacity * 3; }
};
constexpr unsigned kReciprocalShift = 44;

constexpr std::array<ClassInfo, kNumClasses> make_class_table() {
  std::array<ClassInfo, kNumClasses> t{};
  for (unsigned c = 0; c < kNumClasses; c++) {
    size_t b = class_block_size(c);
    t[c].block_size = uint32_t(b);
    t[c].page_slots = class_page_slots(c);
    t[c].capacity = uint32_t(t[c].page_slots * kSlotSize / b);
    size_t guarded = (t[c].page_slots * kSlotSize - kRunGuard) / b;
    t[c].guarded_capacity = uint32_t(guarded);
    t[c].reciprocal = ((uint64_t(1) << kReciprocalShift) + b - 1) / b;
  }
  return t;
}
inline constexpr std::array<ClassInfo, kNumClasses> kClasses = make_class_table();

// Byte lookup for requests up to 1 KiB, indexed by (size + 15) / 16.
constexpr size_t kLookupMax = 1024;
constexpr std::array<uint8_t, kLookupMax / 16 + 1> make_lookup() {
  std::array<uint8_t, kLookupMax / 16 + 1> t{};
  for (size_t i = 0; i < t.size(); i++) t[i] = uint8_t(class_of_computed(i * 16));
  return t;
}
inline constexpr std::array<uint8_t, kLookupMax / 16 + 1> kClassLookup = make_lookup();

MAPALLOC_INLINE unsigned size_class(size_t size) {
  if (MAPALLOC_LIKELY(size <= kLookupMax)) return kClassLookup[(size + 15) >> 4];
  return class_of_large(size);
}

// Canaries (secure builds): every small block carries one in its slack
// (page.h), so a request takes the smallest class at least kMinSlack bytes
// bigger than itself, and a request of exactly a class's size the next
// class. That is what catches a write one past the end of a malloc(16) or a
// malloc(64), the round sizes where an overflow is likeliest: with exact
// fits on pages of their own (the layout before), none of those was caught.
// Unprotected builds have no canaries: a request takes the smallest class
// that holds it.
#ifndef MAPALLOC_SECURE
#define MAPALLOC_SECURE 1
#endif
constexpr bool kCanaries = MAPALLOC_SECURE;
constexpr size_t kMinSlack = kCanaries ? 2 : 0;
// The biggest request the classes serve; the mmap threshold is capped at it.
constexpr size_t kMaxSmallRequest = kMaxClassSize - kMinSlack;
// malloc(0) maps to this class, whose heap entry never holds a page, so the
// fast path needs no test for zero: it falls into the slow path (zero.h).
constexpr unsigned kZeroClass = kNumClasses;
static_assert(kZeroClass < 256);

// Whether a request of size bytes may take a block of class c.
constexpr bool class_takes(unsigned c, size_t size) { return kClasses[c].block_size >= size + kMinSlack; }
// The class of a request of 1 .. kMaxSmallRequest bytes.
constexpr unsigned request_class_computed(size_t size) { return class_of_computed(size + kMinSlack); }

// Indexed by the size itself (one load, where the class and its size would be two).
constexpr std::array<uint8_t, kLookupMax + 1> make_request_lookup() {
  std::array<uint8_t, kLookupMax + 1> t{};
  for (size_t s = 1; s <= kLookupMax; s++) t[s] = uint8_t(request_class_computed(s));
  t[0] = kZeroClass;
  return t;
}
inline constexpr std::array<uint8_t, kLookupMax + 1> kRequestLookup = make_request_lookup();

MAPALLOC_INLINE unsigned request_class(size_t size) {
  if (MAPALLOC_LIKELY(size <= kLookupMax)) return kRequestLookup[size];
  return class_of_large(size + kMinSlack);
}

// Compile-time proof of the table's promises.
constexpr bool check_classes() {
  for (unsigned c = 0; c < kNumClasses; c++) {
    size_t b = class_block_size(c);
    if (b % 16 != 0) return false;
    if (c > 0 && b <= class_block_size(c - 1)) return false;
    if (class_of_computed(b) != c) return false;
    size_t smallest = c == 0 ? 1 : class_block_size(c - 1) + 1;
    if (class_of_computed(smallest) != c) return false;
    // Waste bound above 128 bytes: (b - smallest) / smallest <= 12.5%.
    if (smallest > 128 && (b - smallest) * 8 > smallest) return false;
    if (kClasses[c].capacity < (b <= kMaxClassSize / 4 ? 4 : 1)) return false;
    // With the guard page, still 4 blocks where a chunk has room for them.
    if (4 * b + kRunGuard <= kChunkSize && kClasses[c].guarded_capacity < 4) return false;
    // Every class has a block in a chunk less its guard page; those whose
    // guard is not always worth it take whole chunks (they end at its end).
    if (kClasses[c].guarded_capacity < 1) return false;
    if (!kClasses[c].guard_always_worth() && kClasses[c].page_slots != kSlotsPerChunk) return false;
    if (kClasses[c].capacity > 65535) return false;  // Page::carved is 16 bits
    // The divisibility test of page.h (is_block_start) at the edges of blocks.
    uint64_t rec = kClasses[c].reciprocal, mask = (uint64_t(1) << kReciprocalShift) - 1;
    uint64_t run = uint64_t(kClasses[c].page_slots) * kSlotSize;
    for (uint64_t q : {uint64_t(0), uint64_t(1), uint64_t(kClasses[c].capacity) - 1, run / b}) {
      for (uint64_t r : {uint64_t(0), uint64_t(1), uint64_t(8), uint64_t(16), b / 2, b - 16, b - 1}) {
        uint64_t off = q * b + r;
        if (off >= run) continue;
        if ((((off * rec) & mask) < rec) != (off % b == 0)) return false;
        if (((off * rec) >> kReciprocalShift) != off / b) return false;
      }
    }
  }
  for (size_t s = 1; s <= kLookupMax; s++) {
    if (kClassLookup[(s + 15) >> 4] != class_of_computed(s)) return false;
    // The request's class is the smallest with room for it and its record.
    unsigned c = kRequestLookup[s];
    if (c != request_class_computed(s) || !class_takes(c, s) || (c > 0 && class_takes(c - 1, s))) return false;
  }
  if (kRequestLookup[0] != kZeroClass) return false;
  // The waste bound with canaries, at every class's edge: a request of a
  // class's size, or one byte short of it, takes the next class.
  for (unsigned c = 0; c < kNumClasses; c++) {
    size_t b = class_block_size(c);
    for (size_t s : {b - 1, b - 2, b}) {
      if (s > kMaxSmallRequest) continue;
      size_t qb = kClasses[request_class_computed(s)].block_size;
      if (qb < s + kMinSlack || (s <= 128 ? qb - s > 17 : (qb - s) * 100 >= 13 * s)) return false;
    }
  }
  // The biggest small request still has a class (the threshold is capped at it).
  if (request_class_computed(kMaxSmallRequest) != kNumClasses - 1) return false;
  return class_block_size(kNumClasses - 1) == kMaxClassSize;
}
static_assert(check_classes(), "size class table broken");
static_assert(kNumClasses <= 128, "MAPALLOC_MAX_CLASSES too small");

}  // namespace mapalloc
