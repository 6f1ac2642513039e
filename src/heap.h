// Layer 5: per-thread heaps. The fast paths are here, inline; everything
// else is in heap.cpp (slow paths) and thread.cpp (heap life, start-up, fork).
//
// A thread's heap pointer starts at empty_heap, whose pages have no free
// blocks, so the very first malloc falls into the slow path, which creates
// the real heap: the fast path never tests for initialisation.
#pragma once
#include <errno.h>

#include <atomic>

#include "base/bits.h"
#include "base/log.h"
#include "page.h"
#include "pagemap.h"
#include "size_classes.h"

namespace mapalloc {

// A doubly linked list of pages, through Page::next/prev. Owner-only.
struct PageQueue {
  Page* head = nullptr;
  Page* tail = nullptr;
  void push_front(Page* p) {
    p->prev = nullptr;
    p->next = head;
    (head ? head->prev : tail) = p;
    head = p;
  }
  void remove(Page* p) {
    (p->prev ? p->prev->next : head) = p->next;
    (p->next ? p->next->prev : tail) = p->prev;
    p->next = p->prev = nullptr;
  }
  Page* pop_front() {
    Page* p = head;
    if (p) remove(p);
    return p;
  }
};

// Counters written only by the owning thread (plain load+store, no locked
// instruction) and read by anyone through relaxed atomics.
using Counter = std::atomic<uint64_t>;
MAPALLOC_INLINE void bump(Counter& c, uint64_t by = 1) {
  c.store(c.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
}

struct HeapStats {
  Counter requests[kNumClasses] = {};
  Counter frees[kNumClasses] = {};  // local and remote frees made by this thread
  Counter pages[kNumClasses] = {};  // pages this heap holds
};

struct Heap {
  // Owner-only. current[c] is never null: &empty_page when the heap has none.
  Page* current[kNumClasses];
  PageQueue avail[kNumClasses];  // non-full pages besides current
  PageQueue full;                // pages with no free block at last look
  uint32_t full_count = 0;
  uint32_t fresh_since_sweep = 0;
  HeapStats stats;
  // Under the heap pool lock (thread.cpp).
  Heap* next_all = nullptr;
  Heap* next_abandoned = nullptr;
  bool owned = false;

  constexpr explicit Heap(Page* empty) : current() {
    for (auto& c : current) c = empty;
  }
};

extern Page empty_page;
extern Heap empty_heap;
extern __thread Heap* tls_heap;
extern Counter orphan_frees[kNumClasses];  // frees by threads without a heap

void* heap_malloc_slow(Heap* heap, size_t size);
void heap_page_empty(Heap* heap, Page* page);
void heap_page_unfull(Heap* heap, Page* page);
void heap_free_remote(Heap* heap, Page* page, Block* block);
[[noreturn]] void report_invalid_free(const void* p);
[[noreturn]] void report_double_free(const void* p);

MAPALLOC_INLINE void* heap_malloc(Heap* heap, size_t size) {
  unsigned c = size_class(size);
  Page* page = heap->current[c];
  Block* b = page->free;
  if (MAPALLOC_UNLIKELY(!b)) return heap_malloc_slow(heap, size);
  Block* next = decode_link(b);
#if MAPALLOC_SECURE
  // A use-after-free write into a free block breaks its cookie or its link.
  if (MAPALLOC_UNLIKELY(b->cookie != freed_cookie(b))) page_corrupted(page, b);
  if (MAPALLOC_UNLIKELY(next && uintptr_t(reinterpret_cast<char*>(next) - page->start) >= page->span))
    page_corrupted(page, b);
#endif
  page->free = next;
  page->used++;
  b->cookie = 0;
  bump(heap->stats.requests[c]);
  return b;
}

// Frees a block of an arena page (the page map said so).
MAPALLOC_INLINE void heap_free(Page* page, void* p) {
  uint32_t index = block_index(page, p);
  if (MAPALLOC_UNLIKELY(index == UINT32_MAX)) report_invalid_free(p);
  Block* b = static_cast<Block*>(p);
  if (MAPALLOC_UNLIKELY(b->cookie == freed_cookie(b))) report_double_free(p);
  Heap* heap = tls_heap;
  if (MAPALLOC_LIKELY(page->heap.load(std::memory_order_relaxed) == heap)) {
    if (MAPALLOC_UNLIKELY(index >= page->carved)) report_invalid_free(p);
    b->link = encode_link(b, page->local_free);
    b->cookie = freed_cookie(b);
    page->local_free = b;
    bump(heap->stats.frees[page->size_class]);
    if (MAPALLOC_UNLIKELY(--page->used == 0)) {
      if (!page->is_current) heap_page_empty(heap, page);
    } else if (MAPALLOC_UNLIKELY(page->in_full)) {
      heap_page_unfull(heap, page);
    }
    return;
  }
  heap_free_remote(heap, page, b);
}

// Whole-heap operations (heap.cpp).
// Collects every page's pending frees and gives empty pages back.
void heap_collect(Heap* heap, bool release_current);

}  // namespace mapalloc
