// The less common entry points: large, aligned, zeroed, realloc, queries.
#include "alloc.h"

#include <errno.h>
#include <stdint.h>

#include "arena.h"
#include "large.h"
#include "sample.h"
#include "thread.h"
#include "zero.h"

namespace mapalloc {

static void* out_of_memory() {
  errno = ENOMEM;
  return nullptr;
}

void* alloc_large(size_t size) noexcept {
  if (size > size_t(PTRDIFF_MAX)) return out_of_memory();
  ensure_init();
  return large::alloc(size, 16, false);
}

void free_slow(void* p, uintptr_t entry) noexcept {
  if (!p) return;
  if (!entry) report_invalid_free(p);
  if (pagemap::is_zero(entry)) return zero::free(p);
  if (pagemap::is_sample(entry)) return dealloc(sample::free(p));
  if (pagemap::is_slow_page(entry)) return quarantine_free(pagemap::as_page(entry), p);
  large::free(pagemap::as_large(entry), p);
}

void* alloc_aligned(size_t alignment, size_t size) noexcept {
  if (alignment <= 16) return alloc(size);
  if (size > size_t(PTRDIFF_MAX) || alignment > size_t(PTRDIFF_MAX) / 2) return out_of_memory();
  size_t threshold = options.mmap_threshold.load(std::memory_order_relaxed);
  size_t want = size > alignment ? size : alignment;
  if (want <= threshold) {
    // Pages start at their run size and blocks sit at multiples of the block
    // size, so a class whose size is a multiple of the alignment is aligned.
    size_t asked = size ? size : 1;  // a block as for one byte (it has a canary)
    unsigned c = size_class(want);
    while (c < kNumClasses && (kClasses[c].block_size % alignment != 0 || !class_takes(c, asked))) c++;
    if (c < kNumClasses && kClasses[c].block_size <= threshold) return heap_malloc_class(tls_heap, c, asked, alignment);
  }
  ensure_init();
  return large::alloc(size ? size : 1, alignment, false);  // as for one byte, as above
}

void* alloc_zeroed(size_t count, size_t size) noexcept {
  size_t total;
  if (mul_overflows(count, size, &total) || total > size_t(PTRDIFF_MAX)) return out_of_memory();
  if (total <= kLookupMax || total <= options.mmap_threshold.load(std::memory_order_relaxed)) {
    void* p = heap_malloc(tls_heap, total);
    if (p) __builtin_memset(p, 0, total);
    return p;
  }
  ensure_init();
  return large::alloc(total, 16, true);  // zeroes only what was dirtied
}

// The page of a live small block, or a fatal report naming what was wrong;
// *usable gets the bytes the block was asked for.
static Page* checked_page(const void* p, uintptr_t entry, const char* what, size_t* usable) {
  Page* page = pagemap::as_page(entry);
  uint32_t index = block_index(page, p);
  if (index == UINT32_MAX) fatal(what, p);
  if (block_is_free(page, p)) fatal("use of freed block", p);
  *usable = requested_bytes(page, p);
  if (*usable == SIZE_MAX) report_overflow(p);
  return page;
}

static LargeBlock* checked_large(const void* p, uintptr_t entry, const char* what) {
  LargeBlock* b = pagemap::as_large(entry);
  if (!b->live) fatal("use of freed block", p);
  if (b->user != p) fatal(what, p);
  return b;
}

void* reallocate(void* p, size_t size) noexcept {
  if (!p) return alloc(size);
  uintptr_t entry = pagemap::lookup(p);
  if (!entry) fatal("realloc of pointer not allocated by mapalloc:", p);
  size_t old_usable;
  if (pagemap::is_zero(entry)) {
    if (!zero::live(p)) fatal("realloc of freed or foreign zero-size pointer:", p);
    if (size == 0) {
      zero::free(p);
      return nullptr;
    }
    void* q = alloc(size);
    if (q) zero::free(p);
    return q;
  }
  if (pagemap::is_sample(entry)) {
    old_usable = sample::usable_size(p, "realloc of pointer not allocated by mapalloc:");
    if (size == 0) {
      dealloc(sample::free(p));
      return nullptr;
    }
    if (size > size_t(PTRDIFF_MAX)) return out_of_memory();
  } else if (pagemap::is_large(entry)) {
    LargeBlock* b = checked_large(p, entry, "realloc of pointer not allocated by mapalloc:");
    if (size == 0) {
      large::free(b, p);
      return nullptr;
    }
    if (size > size_t(PTRDIFF_MAX)) return out_of_memory();
    if (size > options.mmap_threshold.load(std::memory_order_relaxed)) {
      bool failed;
      if (void* q = large::reallocate(b, size, &failed)) return q;
      if (failed) return out_of_memory();  // the old block stays intact
    }
    old_usable = large::usable_size(b);
  } else {
    Page* page = checked_page(p, entry, "realloc of pointer not allocated by mapalloc:", &old_usable);
    if (size == 0) {
      dealloc(p);
      return nullptr;
    }
    if (size > size_t(PTRDIFF_MAX)) return out_of_memory();
    // In place when the block stays at least half used and has room for
    // the new size (and its canary's record).
    size_t block_size = page->block_size;
    if (size + kMinSlack <= block_size && size >= block_size / 2) {
      if (kCanaries) canary_set(page, p, size);
      return p;
    }
  }
  // A block grown past the threshold is likely to grow again: give it the
  // layout that grows without copying.
  void* q = size > old_usable && size > options.mmap_threshold.load(std::memory_order_relaxed)
                ? large::alloc_growable(size)
                : alloc(size);
  if (!q) return nullptr;  // the old block stays intact
  __builtin_memcpy(q, p, size < old_usable ? size : old_usable);
  dealloc(p);
  return q;
}

size_t usable_size(const void* p) noexcept {
  if (!p) return 0;
  uintptr_t entry = pagemap::lookup(p);
  if (!entry) fatal("malloc_usable_size of pointer not allocated by mapalloc:", p);
  if (pagemap::is_zero(entry)) {
    if (!zero::live(p)) fatal("malloc_usable_size of freed or foreign zero-size pointer:", p);
    return 0;
  }
  if (pagemap::is_sample(entry)) return sample::usable_size(p, "malloc_usable_size of pointer not allocated by mapalloc:");
  if (pagemap::is_large(entry)) {
    return large::usable_size(checked_large(p, entry, "malloc_usable_size of pointer not allocated by mapalloc:"));
  }
  size_t usable;
  checked_page(p, entry, "malloc_usable_size of pointer not allocated by mapalloc:", &usable);
  return usable;
}

bool owns(const void* p) {
  uintptr_t entry = pagemap::lookup(p);
  if (!entry) return false;
  if (pagemap::is_zero(entry)) return zero::live(p);
  if (pagemap::is_sample(entry)) return sample::live(p);
  if (pagemap::is_large(entry)) {
    const LargeBlock* b = pagemap::as_large(entry);
    return b->live && b->user == p;
  }
  const Page* page = pagemap::as_page(entry);
  if (block_index(page, p) == UINT32_MAX) return false;
  return !block_is_free(page, p) && !sample::holds(p);  // a sample's shadow was never handed out
}

void collect() {
  ensure_init();  // the fork handlers: this takes the arena's lock, maybe before any malloc
  Heap* heap = tls_heap;
  if (heap != &empty_heap) heap_collect(heap, true);
  thread_reclaim_all_abandoned();
  arena::purge(true);
  large::purge(true);
}

}  // namespace mapalloc
