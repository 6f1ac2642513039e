// Layer 3: the page map, from any address to the metadata of the 64 KiB slot
// holding it, in two dependent loads. Arena slots map to their Page, the slot
// holding a large block's start maps to its LargeBlock (tagged with bit 0),
// everything else maps to nothing: the basis of invalid-free detection.
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

MAPALLOC_INLINE uintptr_t lookup(const void* p) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (MAPALLOC_UNLIKELY(a >> kAddressBits)) return 0;
  Leaf* leaf = root[a >> (kSlotShift + kLeafBits)].load(std::memory_order_acquire);
  if (MAPALLOC_UNLIKELY(!leaf)) return 0;
  return (*leaf)[(a >> kSlotShift) & ((size_t(1) << kLeafBits) - 1)].load(std::memory_order_relaxed);
}

constexpr uintptr_t kLargeTag = 1;
MAPALLOC_INLINE bool is_large(uintptr_t entry) { return entry & kLargeTag; }
MAPALLOC_INLINE Page* as_page(uintptr_t entry) { return reinterpret_cast<Page*>(entry); }
MAPALLOC_INLINE LargeBlock* as_large(uintptr_t entry) {
  return reinterpret_cast<LargeBlock*>(entry & ~kLargeTag);
}

// Sets the entries of [p, p + size) (slot granularity); false if a leaf could
// not be mapped. Callers serialise writes to the same slots.
bool set(const void* p, size_t size, uintptr_t entry);
inline bool set_page(const void* p, size_t size, Page* page) {
  return set(p, size, reinterpret_cast<uintptr_t>(page));
}

}  // namespace pagemap
}  // namespace mapalloc
