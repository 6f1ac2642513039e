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

// With the pages' own counters these give every per-class number (stats.cpp).
// The first three hold what pages counted before they went back to the arena.
struct HeapStats {
  Counter allocated[kNumClasses] = {};
  Counter freed[kNumClasses] = {};
  Counter collected[kNumClasses] = {};
  Counter remote_frees[kNumClasses] = {};  // frees by this thread into other heaps' pages
};

// quarantine=<bytes>: the thread's last freed small blocks, held back (FIFO)
// before they really go free. Filled with a pattern that is checked when
// they leave, so writes after free are caught; still marked freed, so a
// second free is caught too. Owner-only.
constexpr uint32_t kQuarantineSlots = 512;
struct Quarantine {
  void* ring[kQuarantineSlots] = {};
  uint32_t head = 0;
  uint32_t count = 0;
  size_t bytes = 0;
};

struct Heap {
  // Owner-only, per class. current[c] is never null: &empty_page when the
  // heap has none.
  Page* current[kNumClasses + 1];  // + kZeroClass, always &empty_page
  PageQueue avail[kNumClasses];    // non-full pages besides current
  PageQueue full;                // pages with no free block at last look
  uint32_t full_count = 0;
  uint32_t fresh_since_sweep = 0;
  uint32_t slow_until_sample_check = 0;  // sample.h: looked at every slow path while starting, then every 16th
  HeapStats stats;
  Quarantine quarantine;
  // Under the heap pool lock (thread.cpp).
  Heap* next_all = nullptr;
  Heap* next_abandoned = nullptr;
  std::atomic<bool> owned{false};  // false while abandoned (read unlocked by remote frees)
  // In a forked child: the heap of a thread the fork did not copy, which may
  // have been halfway through a block or a list: not checked (thread.cpp).
  bool lost_in_fork = false;
  // Above 0 while a thread edits the heap's page queues, current pages or
  // quarantine ring (HeapEdit, heap.cpp). A forked child never collects a
  // lost heap left so: its lists may be half linked (thread.cpp).
  uint32_t editing = 0;

  constexpr explicit Heap(Page* empty) : current() {
    for (auto& c : current) c = empty;
  }
};

extern Page empty_page;
extern Heap empty_heap;
extern __thread Heap* tls_heap;
// Remote frees by threads without a heap (statistics only), in shards: a
// thread takes the next shard at its first such free, so that threads which
// only free (a pool that releases what others allocate) do not all add to
// one cache line. In mimalloc-bench's xmalloc-test, one shared counter's
// locked add was half of the remote frees' time.
constexpr unsigned kOrphanShards = 16;
struct alignas(64) OrphanShard {
  Counter frees[kNumClasses];
};
extern OrphanShard orphan_frees[kOrphanShards];

// alignment: 16, or an aligned request's (for a guarded sample, sample.h).
void* heap_malloc_slow(Heap* heap, unsigned size_class, size_t size, size_t alignment) noexcept;
void heap_page_wait_over(Heap* heap, Page* page) noexcept;
void heap_free_remote(Heap* heap, Page* page, Block* block) noexcept;
// These abort. They are not marked noreturn so that the fast paths can reach
// them by a tail jump and need no stack frame of their own.
void report_invalid_free(const void* p) noexcept;
void report_double_free(const void* p) noexcept;
void* report_corrupted(const Page* page, const void* block) noexcept;

// A block of class c for a request of size bytes (class_takes(c, size): the
// canary goes right after size). kSmallRequest: c is request_class(size)
// for a size of at most kLookupMax (canary_record_slack).
template <bool kSmallRequest = false>
MAPALLOC_INLINE void* heap_malloc_class(Heap* heap, unsigned c, size_t size, size_t alignment = 16) noexcept {
  Page* page = heap->current[c];
  Block* b = page->free;
  if (MAPALLOC_UNLIKELY(!b)) return heap_malloc_slow(heap, c, size, alignment);
#if MAPALLOC_SECURE
  // The block lies in this run: a program that read the keys out of freed
  // blocks (a read after free of a list's last block shows both) could
  // forge a sealed link to anywhere, and the block it leads to would be
  // taken here before it is handed out. One compare on the block rather
  // than on the link it holds, which would have to let the list's end
  // through (nine instructions, branch-free, where lists end often).
  if (MAPALLOC_UNLIKELY((reinterpret_cast<uintptr_t>(b) ^ reinterpret_cast<uintptr_t>(page->start)) > page->run_mask))
    return report_corrupted(page, b);
#endif
  Block* next = decode_link(b);
#if MAPALLOC_SECURE
  // A use-after-free write into a free block breaks the seal of its link
  // (cookie_for). (Not the mark at the block's end: loading that line,
  // which was only written before, made bench server 3-10 % slower in three
  // interleaved runs; the check at exit looks at it.)
  if (MAPALLOC_UNLIKELY(b->cookie != cookie_for(next))) return report_corrupted(page, b);
#endif
  page->free = next;
  bump_one(page->allocated);
  b->cookie = 0;
#if MAPALLOC_SECURE
  canary_set_fresh<kSmallRequest>(page, b, size);
#endif
  return b;
}

MAPALLOC_INLINE void* heap_malloc(Heap* heap, size_t size) noexcept {
  return heap_malloc_class(heap, request_class(size), size);
}
// size <= kLookupMax: its slack, below its block's size, is below the escape's.
static_assert(kClasses[request_class_computed(kLookupMax)].block_size <= kMaxRecordedSlack);
MAPALLOC_INLINE void* heap_malloc_small(Heap* heap, size_t size) noexcept {
  return heap_malloc_class<true>(heap, request_class(size), size);
}

// The owner's free of b, checked: onto its page's free list.
MAPALLOC_INLINE void heap_push_owned(Heap* heap, Page* page, Block* b) noexcept {
  if (kCanaries) mark_tail_free(page, b);
  set_free_link(b, page->free);
  page->free = b;
  bump_one(page->freed);
  if (MAPALLOC_UNLIKELY(--page->free_wait == 0)) return heap_page_wait_over(heap, page);
}

// Whether a block being freed ends as free's fast path takes it (secure
// builds): a record in the fast range and an intact canary. Everything else
// (a free block's record: a double free; a slack of 2; the escape; damage)
// goes out of line, where odd_record_passes (heap.cpp) tells them apart.
MAPALLOC_INLINE bool end_fits_fast_path(const Page* page, const Block* b) {
  size_t slack = decoded_record(page, b);
  return slack_in_fast_range(page, slack) && canary_intact(page, b, canary_word(b), slack);
}
// heap_free's path for a block whose end does not fit the fast path: out of
// line, so that free's fast path needs no stack frame.
void heap_free_odd_record(Block* b, Page* page, Heap* heap) noexcept;
// The owner's free of b once the block below passed: its own end (secure
// builds), then onto its page's free list.
MAPALLOC_INLINE void heap_push_checked(Heap* heap, Page* page, Block* b) noexcept {
  if (kCanaries && MAPALLOC_UNLIKELY(!end_fits_fast_path(page, b))) return heap_free_odd_record(b, page, heap);
  heap_push_owned(heap, page, b);
}
// heap_free's path when tail_before_intact says no (every free of a block
// over 4 KiB): below_intact decides, then the free goes on.
void heap_free_look_below(Heap* heap, Page* page, Block* b) noexcept;
// Whether the block below p (p is not its run's first block) ends as a
// free, live or quarantined block does: a free block's mark, or a live
// block's record and canary (or a busy record, mark_record_busy). Looked at
// again and again (heap.cpp, intact_at_some_look) before it says no: another
// thread may be storing there between two of its loads. For a
// page of an abandoned heap, `owner`: yes once a thread adopts it (whose
// mallocs store a block's canary and record apart).
bool below_intact(const Page* page, const void* p, const Heap* owner = nullptr);

// Frees a block of an arena page (the page map said so).
MAPALLOC_INLINE void heap_free(Page* page, void* p) noexcept {
  uintptr_t offset = reinterpret_cast<uintptr_t>(p) & page->run_mask;
  uint64_t scaled = uint64_t(offset) * page->reciprocal;
  uint64_t index = scaled >> kReciprocalShift;
  if (MAPALLOC_UNLIKELY(!is_block_start(scaled, page->reciprocal))) return report_invalid_free(p);
  // Never handed out (also catches index >= capacity, as carved <= capacity,
  // and every block of a page back in the arena, whose carved is 0): checked
  // before the block is read, as a page back in the arena may be guard
  // markers by now (arena.cpp, purge_chunk). Carved only grows while the page
  // is some heap's, so other threads may read it too.
  if (MAPALLOC_UNLIKELY(index >= __atomic_load_n(&page->carved, __ATOMIC_RELAXED))) return report_invalid_free(p);
  // (A block-aligned pointer into the guard page that ends a run faults
  // here, SIGSEGV rather than a report.)
  Block* b = static_cast<Block*>(p);
  // A double free. Secure builds tell it by the block's record instead, at
  // no cost of its own: free marks a block's end, so its record decodes to
  // kFreedRecord, which the owner's check below sends out of line
  // (heap_free_odd_record, freed_tail); other threads' frees check the
  // record the same way (heap_free_remote), and a broken canary of a block
  // whose words are sealed is reported as a double free (odd_record_passes).
  if (!kCanaries && MAPALLOC_UNLIKELY(is_freed(b))) return report_double_free(p);
  Heap* heap = tls_heap;
  if (MAPALLOC_LIKELY(page->heap.load(std::memory_order_relaxed) == heap)) {
    if (kCanaries) {
      // (Two tests: written as one unlikely condition, GCC moved the common
      // case, a block that is not its run's first, out of line.)
      if (MAPALLOC_LIKELY(offset != 0)) {
        if (MAPALLOC_UNLIKELY(!tail_before_intact(page, p))) return heap_free_look_below(heap, page, b);
      }
    }
    return heap_push_checked(heap, page, b);
  }
  heap_free_remote(heap, page, b);
}

// Frees through the quarantine (options.quarantine != 0).
void quarantine_free(Page* page, void* p) noexcept;
// Whether a carved block is free (or held in a quarantine), for the slow
// paths: looks_freed, and a held block whose first word was written after
// free.
bool block_is_free(const Page* page, const void* p);

// Whole-heap operations (heap.cpp).
// In a forked child, which samples its first requests again (sample.h):
// puts every current page back in its class queue, so that the next request
// of each class takes the slow path, and makes that slow path look for a
// sample.
void heap_prepare_child_samples(Heap* heap);
// In a forked child: starts the clock of the check at exit's budget.
void exit_check_start_in_child();
// Collects every page's pending frees and gives empty pages back.
void heap_collect(Heap* heap, bool release_current);

}  // namespace mapalloc
