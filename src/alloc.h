// Layer 6: the allocation entry points shared by the prefixed API (api.cpp)
// and the standard names (preload/override.cpp). The common paths are inline
// so both expand to the same few instructions.
#pragma once
#include <cstddef>
#include <cstdint>

#include "heap.h"
#include "options.h"
#include "pagemap.h"

namespace mapalloc {

void* alloc_large(size_t size) noexcept;
void free_slow(void* p, uintptr_t entry) noexcept;
void* alloc_aligned(size_t alignment, size_t size) noexcept;
void* alloc_zeroed(size_t count, size_t size) noexcept;
void* reallocate(void* p, size_t size) noexcept;
size_t usable_size(const void* p) noexcept;
bool owns(const void* p);
void collect();

MAPALLOC_INLINE void* alloc(size_t size) noexcept {
  if (MAPALLOC_LIKELY(size <= kLookupMax)) return heap_malloc_small(tls_heap, size);
  if (size <= options.mmap_threshold.load(std::memory_order_relaxed)) return heap_malloc(tls_heap, size);
  return alloc_large(size);
}

MAPALLOC_INLINE void dealloc(void* p) noexcept {
  uintptr_t entry = pagemap::lookup(p);
  if (MAPALLOC_UNLIKELY(!pagemap::is_page(entry))) return free_slow(p, entry);
  heap_free(pagemap::as_page(entry), p);
}

}  // namespace mapalloc
