#include "pagemap.h"

#include "os/os.h"

namespace mapalloc::pagemap {

// 256 KiB of zeroed .bss: untouched entries cost no memory.
std::atomic<Leaf*> root[size_t(1) << kRootBits];
uintptr_t page_tag = kPageTag;

static Leaf* leaf_for(uintptr_t slot) {
  auto& r = root[slot >> kLeafBits];
  Leaf* leaf = r.load(std::memory_order_acquire);
  if (MAPALLOC_LIKELY(leaf)) return leaf;
  void* fresh = os::map(sizeof(Leaf));
  if (!fresh) return nullptr;
  Leaf* expected = nullptr;
  if (r.compare_exchange_strong(expected, static_cast<Leaf*>(fresh), std::memory_order_acq_rel)) {
    return static_cast<Leaf*>(fresh);
  }
  os::unmap(fresh, sizeof(Leaf));  // another thread won the race
  return expected;
}

bool set(const void* p, size_t size, uintptr_t entry) {
  uintptr_t first = reinterpret_cast<uintptr_t>(p) >> kSlotShift;
  uintptr_t last = (reinterpret_cast<uintptr_t>(p) + (size ? size - 1 : 0)) >> kSlotShift;
  for (uintptr_t slot = first; slot <= last; slot++) {
    Leaf* leaf = leaf_for(slot);
    if (!leaf) return false;
    (*leaf)[slot & ((uintptr_t(1) << kLeafBits) - 1)].store(entry, std::memory_order_release);
  }
  return true;
}

}  // namespace mapalloc::pagemap
