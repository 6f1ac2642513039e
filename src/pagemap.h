// Layer 3: the page map, from any address to the metadata of the 16 KiB slot
// holding it, in two dependent loads. Arena slots map to their Page, the slot
// holding a large block's start maps to its LargeBlock, everything else maps
// to nothing (0): the basis of invalid-free detection. Page entries carry bit
// 0, so free's fast path needs a single test to know it has a page.
#pragma once
#include <atomic>
#include <cstdint>

#include "base/bits.h"
#include "size_classes.h"

namespace mapalloc {

struct Page;
struct LargeBlock;

namespace pagemap {

constexpr unsigned kAddressBits = 48;
constexpr unsigned kLeafBits = 16;  // slots per leaf: 65536 (512 KiB leaf)
constexpr unsigned kRootBits = kAddressBits - kSlotShift - kLeafBits;

using Leaf = std::atomic<uintptr_t>[size_t(1) << kLeafBits];
extern std::atomic<Leaf*> root[size_t(1) << kRootBits];

// Addresses above 2^48 map to nothing: free's fast path finds a block's
// offset by masking, which would not tell an aliased address from a real one.
MAPALLOC_INLINE uintptr_t lookup(const void* p) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uintptr_t top = a >> (kSlotShift + kLeafBits);
  if (MAPALLOC_UNLIKELY(top >= (size_t(1) << kRootBits))) return 0;
  Leaf* leaf = root[top].load(std::memory_order_acquire);
  if (MAPALLOC_UNLIKELY(!leaf)) return 0;
  return (*leaf)[(a >> kSlotShift) & ((size_t(1) << kLeafBits) - 1)].load(std::memory_order_relaxed);
}

// Page entries carry a tag in their low bits: kPageTag, or kSlowPageTag when
// every free must take the slow path (quarantine=, chosen at start-up), so
// that the fast path's single test also keeps the quarantine off it.
constexpr uintptr_t kPageTag = 1;
constexpr uintptr_t kSlowPageTag = 2;
constexpr uintptr_t kZeroEntry = 2;    // the malloc(0) region (zero.h); no page is at address 0
constexpr uintptr_t kSampleEntry = 6;  // the guarded samples' region (sample.h); nor at 4
MAPALLOC_INLINE bool is_page(uintptr_t entry) { return entry & kPageTag; }
MAPALLOC_INLINE bool is_zero(uintptr_t entry) { return entry == kZeroEntry; }
MAPALLOC_INLINE bool is_sample(uintptr_t entry) { return entry == kSampleEntry; }
MAPALLOC_INLINE bool is_slow_page(uintptr_t entry) { return (entry & 3) == kSlowPageTag && entry > kSampleEntry; }
MAPALLOC_INLINE bool is_large(uintptr_t entry) { return entry > kZeroEntry && !(entry & 3); }
MAPALLOC_INLINE Page* as_page(uintptr_t entry) { return reinterpret_cast<Page*>(entry & ~uintptr_t(3)); }
MAPALLOC_INLINE LargeBlock* as_large(uintptr_t entry) { return reinterpret_cast<LargeBlock*>(entry); }

// Sets the entries of [p, p + size) (slot granularity); false if a leaf could
// not be mapped. Callers serialise writes to the same slots.
bool set(const void* p, size_t size, uintptr_t entry);
extern uintptr_t page_tag;  // kPageTag, or kSlowPageTag with a quarantine
inline bool set_page(const void* p, size_t size, Page* page) {
  return set(p, size, reinterpret_cast<uintptr_t>(page) | page_tag);
}

}  // namespace pagemap
}  // namespace mapalloc
