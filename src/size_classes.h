// Layer 3: size classes, computed at compile time.
//
// Classes 0..7 are 16..128 bytes in 16-byte steps. Above 128 bytes every
// power of two [2^k, 2^(k+1)) is split into 8 classes of step 2^(k-3), so a
// request wastes at most 2^(k-3) / (2^k + 1) < 12.5% of its size (secure
// builds send a request one byte short of a class to the next one, queues
// below: at most (2^(k-2) + 1) / (2^(k+1) - 1) < 13%). The last class is
// 1 MiB; the mmap threshold can be set anywhere up to it.
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
constexpr size_t kMaxClassSize = size_t(1) << (kLastPow2Log + 1);  // 1 MiB

// Arena geometry: 16 KiB slots (the page map's granule), chunks of 64 slots (1 MiB).
constexpr unsigned kSlotShift = 14;
constexpr size_t kSlotSize = size_t(1) << kSlotShift;
constexpr unsigned kSlotsPerChunk = 64;
constexpr size_t kChunkSize = kSlotSize * kSlotsPerChunk;

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
constexpr size_t kRunGuard = 4096;  // the last OS page of a run, when it is a guard
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
  // Blocks per page when its last OS page is a guard; 0 when the guard would
  // cost more than a quarter of them (the 512 KiB and 1 MiB classes).
  uint32_t guarded_capacity;
  uint64_t reciprocal;  // ceil(2^44 / block_size): offset / size as a multiply
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
    t[c].guarded_capacity = guarded * 4 >= t[c].capacity * 3 ? uint32_t(guarded) : 0;
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

// Queues: a heap keeps its pages of a class in two queues. Queue 2c holds
// exact pages, whose blocks were all asked for exactly the class size, and
// queue 2c + 1 slack pages, whose blocks were all asked for at least
// kMinSlack bytes less: such a block's last two bytes are never the caller's,
// and record the slack for its canary (page.h). A request one byte short of
// its class size goes to the next class's slack page (a record of one byte
// would be forged past by 1 overflow in 256). Unprotected builds have no
// canaries and use exact pages only.
#ifndef MAPALLOC_SECURE
#define MAPALLOC_SECURE 1
#endif
constexpr bool kSlackPages = MAPALLOC_SECURE;
constexpr size_t kMinSlack = 2;
constexpr unsigned kNumQueues = 2 * kNumClasses;
// malloc(0) maps to this queue, whose heap entry never holds a page, so the
// fast path needs no test for zero: it falls into the slow path (zero.h).
constexpr unsigned kZeroQueue = kNumQueues;
static_assert(kZeroQueue < 256);

// Whether a request of size bytes may take a block of class c as it is: an
// exact fit, or one with room for the slack record.
constexpr bool class_takes(unsigned c, size_t size) {
  size_t block = kClasses[c].block_size;
  return block == size || !kSlackPages || block - size >= kMinSlack;
}
// The queue for a request of size bytes, size_class(size) == c. (The last
// class has no next one: a request a byte short of it takes an exact page,
// its usable size the class size.)
constexpr unsigned queue_of(unsigned c, size_t size) {
  if (!class_takes(c, size) && c + 1 < kNumClasses) c++;
  return 2 * c + (kSlackPages && size < kClasses[c].block_size && class_takes(c, size));
}
constexpr unsigned queue_class(unsigned q) { return q >> 1; }

// Indexed by the size itself (one load, where the class and its size would be two).
constexpr std::array<uint8_t, kLookupMax + 1> make_queue_lookup() {
  std::array<uint8_t, kLookupMax + 1> t{};
  for (size_t s = 1; s <= kLookupMax; s++) t[s] = uint8_t(queue_of(class_of_computed(s), s));
  t[0] = kZeroQueue;
  return t;
}
inline constexpr std::array<uint8_t, kLookupMax + 1> kQueueLookup = make_queue_lookup();

MAPALLOC_INLINE unsigned size_queue(size_t size) {
  if (MAPALLOC_LIKELY(size <= kLookupMax)) return kQueueLookup[size];
  return queue_of(class_of_large(size), size);
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
    // The queue's class holds the request, exactly or with room for the record.
    unsigned q = kQueueLookup[s], qc = queue_class(q);
    size_t qb = kClasses[qc].block_size;
    if (qb < s || (qc != class_of_computed(s) && qc != class_of_computed(s) + 1)) return false;
    if ((q & 1) ? qb - s < kMinSlack : qb != s && kSlackPages) return false;
  }
  if (kQueueLookup[0] != kZeroQueue) return false;
  // The waste bound with the queues' one-byte-short rule, at every class's edge.
  for (unsigned c = 0; c < kNumClasses; c++) {
    size_t b = class_block_size(c);
    for (size_t s : {b - 1, b - 2, b}) {
      size_t qb = kClasses[queue_class(queue_of(class_of_computed(s), s))].block_size;
      if (qb < s || (s <= 128 ? qb - s > 17 : (qb - s) * 100 >= 13 * s)) return false;
    }
  }
  return class_block_size(kNumClasses - 1) == kMaxClassSize;
}
static_assert(check_classes(), "size class table broken");
static_assert(kNumClasses <= 128, "MAPALLOC_MAX_CLASSES too small");

}  // namespace mapalloc
