// Slow paths of the per-thread heap: finding a page with free blocks,
// moving pages between the class queues and the full list, remote frees.
#include "heap.h"

#include <time.h>

#include <algorithm>
#include <bit>

#include "arena.h"
#include "large.h"
#include "options.h"
#include "os/os.h"
#include "sample.h"
#include "zero.h"
#include "thread.h"

namespace mapalloc {

constinit Page empty_page;
constinit Heap empty_heap{&empty_page};
__thread Heap* tls_heap = &empty_heap;
OrphanShard orphan_frees[kOrphanShards];
static std::atomic<unsigned> orphan_shards_taken{0};
static __thread uint8_t orphan_shard = 0;  // 1 + this thread's shard; 0: none yet

static Counter& orphan_counter(unsigned c) {
  unsigned shard = orphan_shard;
  if (MAPALLOC_UNLIKELY(!shard)) {
    shard = 1 + orphan_shards_taken.fetch_add(1, std::memory_order_relaxed) % kOrphanShards;
    orphan_shard = uint8_t(shard);
  }
  return orphan_frees[shard - 1].frees[c];
}

void report_invalid_free(const void* p) noexcept { fatal("invalid free (pointer not allocated by mapalloc):", p); }
void report_double_free(const void* p) noexcept { fatal("double free of", p); }
void* report_corrupted(const Page* page, const void* block) noexcept { page_corrupted(page, block); }

// Brackets an edit of a heap's page queues, current pages or quarantine
// ring: several plain stores each (a page unlinked and pushed, a ring slot
// and its count), which a fork cuts wherever the heap's thread is, for good
// in the child if that thread is not the forking one (after_fork_child,
// thread.cpp). Only around the stores: a heap caught inside one is lost to
// the child whole, so no lock, system call or other heap's work is inside.
// The fences order the count with the edit's stores (no instruction on
// x86-64).
struct HeapEdit {
  Heap* heap;
  explicit HeapEdit(Heap* h) : heap(h) {
    heap->editing++;
    __atomic_thread_fence(__ATOMIC_RELEASE);
  }
  ~HeapEdit() {
    __atomic_thread_fence(__ATOMIC_RELEASE);
    heap->editing--;
  }
  HeapEdit(const HeapEdit&) = delete;
  HeapEdit& operator=(const HeapEdit&) = delete;
};

static void move_to_full(Heap* heap, Page* page) {
  HeapEdit edit(heap);
  page->in_full = true;
  page_arm_wait(page);
  heap->full.push_front(page);
  heap->full_count++;
}

static void release_page(Heap* heap, Page* page) {
  unsigned c = page->size_class;
  bump(heap->stats.allocated[c], page->allocated.load(std::memory_order_relaxed));
  bump(heap->stats.freed[c], page->freed_count());
  bump(heap->stats.collected[c], page->collected.load(std::memory_order_relaxed));
  arena::free_page(page);
}

// Unlinks page from whichever list holds it.
static void unlink_page(Heap* heap, Page* page) {
  HeapEdit edit(heap);
  if (page->is_current) {
    heap->current[page->size_class] = &empty_page;
    page->is_current = false;
  } else if (page->in_full) {
    heap->full.remove(page);
    heap->full_count--;
    page->in_full = false;
  } else {
    heap->avail[page->size_class].remove(page);
  }
}

void heap_page_wait_over(Heap* heap, Page* page) noexcept {
  if (!page->is_current && page->used_count() == 0) {
    unlink_page(heap, page);
    release_page(heap, page);
    return;
  }
  if (page->in_full) {
    HeapEdit edit(heap);
    heap->full.remove(page);
    heap->full_count--;
    page->in_full = false;
    heap->avail[page->size_class].push_front(page);
  }
  page_arm_wait(page);
}

// A block being freed whose end does not fit free's fast path
// (end_fits_fast_path). Reports misuse (the reports abort); true if the
// block may go free. A broken canary of a block whose words are sealed (its
// end written after a first free) is a double free too.
static bool odd_record_passes(const Page* page, const Block* b) {
  if (freed_tail(page, b)) return report_double_free(b), false;
  if (canary_check(page, b) != SIZE_MAX) return true;
  if (is_freed(b)) return report_double_free(b), false;
  return report_overflow(b), false;
}

void heap_free_odd_record(Block* b, Page* page, Heap* heap) noexcept {
  if (odd_record_passes(page, b)) heap_push_owned(heap, page, b);
}

void heap_free_look_below(Heap* heap, Page* page, Block* b) noexcept {
  if (!below_intact(page, b)) return report_underflow(b);
  heap_push_checked(heap, page, b);
}

// Other threads' frees, once checked: b's end marked (aligned stores: the
// owner may read the record in the top two bytes of the block's last word
// meanwhile, tail_before_intact, and sees the old one or the new one, the
// mark's or a 16-byte block's cookie's: the same), then onto its page's
// list of other threads' frees.
static MAPALLOC_INLINE void push_thread_free(Page* page, Block* b) {
  if (kCanaries) mark_tail_free(page, b);
  uintptr_t old = page->thread_free.load(std::memory_order_relaxed);
  do {
    set_free_link(b, reinterpret_cast<Block*>(old));
  } while (!page->thread_free.compare_exchange_weak(old, reinterpret_cast<uintptr_t>(b), std::memory_order_release,
                                                    std::memory_order_relaxed));
  // The page may be collected and reused by its owner from here on: no more
  // touching it.
}

// b, not its run's first block, in the page of an exited thread's heap:
// the block below it is checked too, as nobody else would ever look (the
// owner's frees do; others' may race with the owner while it lives).
static MAPALLOC_COLD void push_thread_free_abandoned(Page* page, Block* b, const Heap* owner) {
  if (!owner->lost_in_fork && !tail_before_intact(page, b) && !below_intact(page, b, owner))
    return report_underflow(b);
  push_thread_free(page, b);
}

// After b's own end passed. Its out-of-line paths are tail calls, so that
// heap_free_remote needs no stack frame (three register saves were 6 of
// its 69 instructions a call in bench prodcons).
static MAPALLOC_INLINE void push_checked_remote(Page* page, Block* b) {
  if (kCanaries && (reinterpret_cast<uintptr_t>(b) & page->run_mask) != 0) {
    const Heap* owner = page->heap.load(std::memory_order_relaxed);
    if (MAPALLOC_UNLIKELY(!owner->owned.load(std::memory_order_acquire)))
      return push_thread_free_abandoned(page, b, owner);
  }
  push_thread_free(page, b);
}

static MAPALLOC_NOINLINE void heap_free_remote_odd_record(Page* page, Block* b) {
  if (odd_record_passes(page, b)) push_checked_remote(page, b);
}

void heap_free_remote(Heap* heap, Page* page, Block* b) noexcept {
  unsigned c = page->size_class;
  if (heap != &empty_heap) {
    bump(heap->stats.remote_frees[c]);
  } else {
    orphan_counter(c).fetch_add(1, std::memory_order_relaxed);
  }
  // Checked here, where the block is still this thread's alone (its canary
  // is in the block, and the free list's words are about to overwrite a
  // 16-byte block's), as the owner's free checks it (heap_push_checked): a
  // double free shows in the record.
  if (kCanaries && MAPALLOC_UNLIKELY(!end_fits_fast_path(page, b))) return heap_free_remote_odd_record(page, b);
  push_checked_remote(page, b);
}

// Looks at full pages for frees other threads pushed; pages with free
// blocks go back to their class queues, empty ones back to the arena.
static void sweep_full(Heap* heap) {
  for (Page* page = heap->full.head; page;) {
    Page* next = page->next;
    if (page->thread_free.load(std::memory_order_relaxed)) {
      page_collect(page);
      bool empty = page->used_count() == 0;
      {
        HeapEdit edit(heap);
        heap->full.remove(page);
        heap->full_count--;
        page->in_full = false;
        if (!empty) heap->avail[page->size_class].push_front(page);
      }
      if (empty) {
        release_page(heap, page);
      } else {
        page_arm_wait(page);
      }
    }
    page = next;
  }
}

static void make_current(Heap* heap, Page* page) {
  HeapEdit edit(heap);
  page->is_current = true;
  page_arm_wait(page);
  heap->current[page->size_class] = page;
}

// Undoes make_current: the page goes first in its class queue.
static void put_back_current(Heap* heap, unsigned c) {
  HeapEdit edit(heap);
  Page* page = heap->current[c];
  page->is_current = false;
  heap->current[c] = &empty_page;
  heap->avail[c].push_front(page);
  page_arm_wait(page);
}

void heap_prepare_child_samples(Heap* heap) {
  for (unsigned c = 0; c < kNumClasses; c++)
    if (heap->current[c] != &empty_page) put_back_current(heap, c);
  heap->slow_until_sample_check = 0;
}

static bool has_free_block(Page* page) {
  page_collect(page);
  return page->free || page_extend(page);
}

// Finds a page of class c with a free block and makes it current. Inline:
// one call site each on the slow path and in its sampled branch.
MAPALLOC_INLINE static Page* find_page(Heap* heap, unsigned c) {
  Page* page = heap->current[c];
  if (page != &empty_page) {
    if (has_free_block(page)) return page;
    HeapEdit edit(heap);
    unlink_page(heap, page);
    move_to_full(heap, page);
  }
  for (int attempt = 0; attempt < 2; attempt++) {
    for (;;) {
      HeapEdit edit(heap);  // the page popped is in no list until it is current or full
      if (!(page = heap->avail[c].pop_front())) break;
      if (has_free_block(page)) {
        make_current(heap, page);
        return page;
      }
      move_to_full(heap, page);
    }
    // Amortised: sweep the full list once per full_count/8 fresh pages, so
    // remotely freed memory is found again with bounded waste.
    if (attempt == 0 && heap->fresh_since_sweep >= heap->full_count / 8) {
      heap->fresh_since_sweep = 0;
      sweep_full(heap);
    } else {
      break;
    }
  }
  thread_maybe_reclaim_abandoned();
  page = arena::alloc_page(heap, c);
  if (!page) {
    large::give_back_caches();  // the memory the kernel refused may be what they hold
    page = arena::alloc_page(heap, c);
    if (!page) return nullptr;
  }
  heap->fresh_since_sweep++;
  page_extend(page);
  make_current(heap, page);
  return page;
}

// The slow path's guarded sample (sample.h), when one is due: null if none
// was taken, and the request goes on unsampled. Out of line, so that
// heap_malloc_slow has one find_page to inline (a call and its register
// saves were 15 instructions of each slow path's 209 in bench server).
MAPALLOC_COLD static void* malloc_sampled(Heap* heap, unsigned c, size_t size, size_t alignment) {
  bool take = sample::take_small();
  // While the start allowance lasts every slow path looks (and every
  // malloc is one, below); then every 16th.
  heap->slow_until_sample_check = sample::starting() ? 0 : 15;
  if (!take) return nullptr;
  if (!sample::fits(size, alignment)) {
    // Too big for a sample's slot (over 56 KiB), or too aligned: a
    // mapping of its own between guard pages, as a large block's, whose
    // pages become guard pages when it is freed. Reads and writes after
    // free of a program's first 100000-byte blocks went unseen.
    int saved = errno;  // the arena may still serve it
    void* p = large::alloc(size, alignment, false, true);
    if (!p) errno = saved;
    return p;
  }
  // A guarded sample (sample.h). The block the request would have had is
  // taken all the same and held while the sample lives, so that the
  // heap's layout stays as it would be without samples (bench
  // falseshare ran 0.85 s against 0.49 s when it changed: two blocks
  // handed to two threads came to share a cache line).
  void* shadow = find_page(heap, c) ? heap_malloc_class(heap, c, size) : nullptr;
  void* p = sample::alloc(size, alignment, shadow);
  if (!p) return shadow;  // no sample: the page stays current
  // While the start allowance lasts current[c] stays &empty_page, so
  // that every malloc comes here.
  if (shadow && sample::starting()) put_back_current(heap, c);
  return p;
}

void* heap_malloc_slow(Heap* heap, unsigned c, size_t size, size_t alignment) noexcept {
  if (c == kZeroClass) {
    if (void* p = zero::alloc()) return p;
    c = request_class(1);  // the zero-size region is used up: a real block will do
    size = 1;
  }
  Heap* lent = nullptr;
  if (heap == &empty_heap) {
    heap = thread_heap_init();
    if (!heap) {
      errno = ENOMEM;
      return nullptr;
    }
    if (heap != tls_heap) lent = heap;  // the thread has exited (thread.cpp)
  }
  void* p = nullptr;
  if (sample::kEnabled && heap->slow_until_sample_check-- == 0) p = malloc_sampled(heap, c, size, alignment);
  if (!p) p = find_page(heap, c) ? heap_malloc_class(heap, c, size) : nullptr;
  if (lent) thread_heap_give_back(lent);
  if (!p) errno = ENOMEM;
  return p;
}

// ---------------------------------------------------------------- quarantine

constexpr unsigned char kQuarantineFill = 0xDF;

// A held block's words are those of a free block (so that a second free is
// caught) linked to this, an address derived from its own that no list
// holds (below 2^47, so that its cookie's top bits are those of a free
// block's: a 16-byte block's record): writes there show too.
static const Block* quarantine_next(const void* p) {
  return reinterpret_cast<const Block*>((reinterpret_cast<uintptr_t>(p) ^ keys.mark) & 0x7FFFFFFFFFF0ull);
}

static void quarantine_release_oldest(Heap* heap) {
  Quarantine& q = heap->quarantine;
  void* p;
  Page* page;
  {
    HeapEdit edit(heap);
    p = q.ring[q.head];
    q.head = (q.head + 1) % kQuarantineSlots;
    q.count--;
    page = pagemap::as_page(pagemap::lookup(p));
    q.bytes -= page->block_size;
  }
  size_t used = check_canary_past_header(page, p);
  const Block* b = static_cast<const Block*>(p);
  if (decode_link(b) != quarantine_next(p) || !is_freed(b)) fatal("write after free (into a quarantined block) at", p);
  const char* c = static_cast<const char*>(p);
  if (!holds_byte(c + sizeof(Block), c + used, kQuarantineFill))  // (empty when used <= 16)
    fatal("write after free (into a quarantined block) at", p);
  // Whole again for heap_free's check. The page may be another thread's,
  // whose free of the block above reads this block's record meanwhile
  // (tail_before_intact): every store here leaves it valid. The cookie's
  // low 48 bits are flipped (so that heap_free sees no double free; its top
  // 16 bits are a 16-byte block's record): all of them, as a canary that
  // begins in the block's first 16 bytes rewrites some of them below. With
  // the low bit alone flipped, the options run of
  // Stress.RandomSizesPerThreadWithReallocKeepContents reported a double
  // free here in 1 run of 10 to 12 (0 of 36 with this). canary_set
  // rewrites the canary's bytes around the record, then the record
  // (canary_set_fresh would store the word, with bytes of no record where
  // the record is, first).
  mark_record_busy(page, p);  // (the cookie's flip breaks a canary begun in it)
  static_cast<Block*>(p)->cookie = b->cookie ^ ((uintptr_t(1) << 48) - 1);
  canary_set(page, p, used);
  heap_free(page, p);
}

// Whether either of p's words is still that of a block held in a
// quarantine (a write after free into the other broke its seal).
static bool quarantine_words(const void* p) {
  const Block* b = static_cast<const Block*>(p);
  return b->cookie == cookie_for(quarantine_next(p)) || decode_link(b) == quarantine_next(p);
}

bool block_is_free(const Page* page, const void* p) {
  return looks_freed(page, static_cast<const Block*>(p)) || (options.quarantine && quarantine_words(p));
}

// A block's end as a free block's (its mark), a live one's (its record and
// canary, or a busy record), or a quarantined one's (sealed words, and its
// canary past its first 16 bytes). Sealed words without the mark are
// otherwise damage: a free block's sealing comes after its mark.
static bool end_intact(const Page* page, const void* block) {
  const Block* b = static_cast<const Block*>(block);
  if (record_busy(page, block)) return true;
  __atomic_thread_fence(__ATOMIC_ACQUIRE);
  if (freed_tail(page, b)) return true;
  if (!is_freed(b)) return canary_check(page, block) != SIZE_MAX;
  return options.quarantine && quarantine_words(block) && canary_past_header(page, block) != SIZE_MAX;
}

// Whether intact() holds at some look: 64 looks in a row, three times, a
// millisecond apart. Another thread's stores between two loads of a look (a
// resize in place in a loop: its new canary word overlaps the old one; a
// remote free's mark) fail that look, and a thread held between two of its
// stores fails a round; damage fails them all.
template <typename Intact>
__attribute__((noinline)) static bool intact_at_some_look(Intact intact) {
  for (int round = 0; round < 3; round++) {
    if (round) {
      struct timespec ms = {0, 1000000};
      nanosleep(&ms, nullptr);
    }
    for (int look = 0; look < 64; look++)
      if (intact()) return true;
  }
  return false;
}

bool below_intact(const Page* page, const void* p, const Heap* owner) {
#ifdef MAPALLOC_TSAN
  // Its loads race, by design, with other threads' stores (tail_before_intact).
  (void)page, (void)p, (void)owner;
  return true;
#endif
  const char* below = static_cast<const char*>(p) - page->block_size;
  if (MAPALLOC_LIKELY(end_intact(page, below))) return true;  // the first look, inline
  return intact_at_some_look([page, below, owner] {
    return end_intact(page, below) || (owner && owner->owned.load(std::memory_order_acquire));
  });
}

void quarantine_free(Page* page, void* p) noexcept {
  Heap* heap = tls_heap;
  if (heap == &empty_heap) return heap_free(page, p);  // no heap, nowhere to hold it
  uint32_t index = block_index(page, p);
  if (index == UINT32_MAX) return report_invalid_free(p);
  Block* b = static_cast<Block*>(p);
  if (block_is_free(page, p)) return report_double_free(p);
  size_t used = requested_bytes(page, p);
  if (used == SIZE_MAX) return report_overflow(p);
  // The owner's frees only, as in heap_free: the owner may be writing the
  // record below meanwhile (malloc writes a block's canary word, then its
  // record).
  if (kCanaries && index != 0 && page->heap.load(std::memory_order_relaxed) == heap && !tail_before_intact(page, p) &&
      !below_intact(page, p))
    return report_underflow(p);
  if (used > sizeof(Block)) __builtin_memset(reinterpret_cast<char*>(b) + sizeof(Block), kQuarantineFill, used - sizeof(Block));
  // Sealed with the record busy: the link and the cookie are two stores,
  // and in between a canary that began in the first 8 bytes is broken while
  // the record and the cookie still read as live, which another thread that
  // looks meanwhile (the check at exit, the look below) would report. The
  // record comes back after, but in a 16-byte block, where the cookie's top
  // bytes are its record now (a free block's).
  char* record_at = reinterpret_cast<char*>(b) + page->block_size - 2;
  uint16_t record;
  __builtin_memcpy(&record, record_at, 2);
  mark_record_busy(page, b);
  set_free_link(b, quarantine_next(p));
  __atomic_thread_fence(__ATOMIC_RELEASE);
  if (page->block_size > sizeof(Block)) __builtin_memcpy(record_at, &record, 2);
  Quarantine& q = heap->quarantine;
  {
    HeapEdit edit(heap);
    q.ring[(q.head + q.count) % kQuarantineSlots] = p;
    q.count++;
    q.bytes += page->block_size;
  }
  while (q.count == kQuarantineSlots || q.bytes > options.quarantine) quarantine_release_oldest(heap);
}

static void quarantine_flush(Heap* heap) {
  while (heap->quarantine.count) quarantine_release_oldest(heap);
}

void heap_collect(Heap* heap, bool release_current) {
  quarantine_flush(heap);
  for (unsigned c = 0; c < kNumClasses; c++) {
    Page* page = heap->current[c];
    if (page != &empty_page) {
      page_collect(page);
      if (page->used_count() == 0 && release_current) {
        unlink_page(heap, page);
        release_page(heap, page);
      }
    }
    for (page = heap->avail[c].head; page;) {
      Page* next = page->next;
      page_collect(page);
      if (page->used_count() == 0) {
        unlink_page(heap, page);
        release_page(heap, page);
      }
      page = next;
    }
  }
  sweep_full(heap);
}

// ---------------------------------------------------------------- check at exit

// Secure builds: at exit (a destructor: after the program's own destructors
// and atexit handlers) the exiting thread's pages are checked as free and
// malloc check each block: a free block's cookie, its copy at the block's
// end and its link, a live block's canary. So misuse that no later free or
// malloc reached is still reported: an overflow past a block that is never
// freed, a write after free into a block never handed out again. The current
// page of each class first (where the latest frees went), then the class
// queues, then the full pages, as long as a budget lasts: 16 MiB of the
// blocks carved in the pages checked, each charged its size up to a page
// (check_page_within; a page's uncarved rest costs nothing).
//
// A forked child runs the check on the heap it got from its parent, most
// of which it never touched: at 16 MiB (full pages of small blocks check at
// 2-3 MiB a millisecond), a subshell of a bash holding 200000 strings cost
// 3.5-5 ms of CPU against 0.7 ms under glibc (now about 1). So in a child
// the budget grows with the time since the fork, 64 KiB a millisecond
// (about 3 % of it), from 512 KiB. Its current pages, first, are those of
// the classes it used, where its own latest blocks are: the fork put every
// heap's back in their queues (thread.cpp).
//
// Other threads may still run. They only push their frees onto a page's
// remote list, walked from a snapshot of its head (a pushed block's words
// never change until the owner collects it). A live block freed by one of
// them meanwhile reads as live with a record of kFreedRecord, which passes.
// A realloc in place by one of them rewrites the canary in two stores, the
// record busy in between (mark_record_busy), so a broken canary is looked
// at again and again (intact_at_some_look) before it is reported: real
// damage stays.
constexpr size_t kExitCheckBytes = 16 * MiB;
constexpr size_t kExitCheckChildMinBytes = 512 * KiB;
constexpr size_t kExitCheckChildBytesPerMs = 64 * KiB;
static bool exit_check_in_child = false;
static uint64_t exit_check_forked_ms = 0;

void exit_check_start_in_child() {
  exit_check_forked_ms = os::now_ms();
  exit_check_in_child = true;
}

static size_t exit_check_budget() {
  if (!exit_check_in_child) return kExitCheckBytes;
  // (The fork's time was stored as now | 1 until stop 35: a child that exited
  // within the clock's tick (1-4 ms) after an even reading got a negative
  // time, read as the whole 16 MiB: bench forkexit ran 2.3x as long when the
  // tick's readings were even, as it did in one of this stop's runs.)
  uint64_t ran_ms = os::ms_since(os::now_ms(), exit_check_forked_ms);
  if (ran_ms >= kExitCheckBytes / kExitCheckChildBytesPerMs) return kExitCheckBytes;
  return std::max(kExitCheckChildMinBytes, size_t(ran_ms) * kExitCheckChildBytesPerMs);
}

// Marks the blocks of a free list in seen; aborts on a link out of the page
// or off the block grid, a cycle, or a free block whose words changed.
static void check_free_list_at_exit(const Page* page, const Block* b, uint64_t* seen) {
  uint32_t count = 0;
  for (const Block* from = nullptr; b; from = b, b = decode_link(b)) {
    uint32_t i = block_index(page, b);
    if (i == UINT32_MAX || (seen[i / 64] >> (i % 64)) & 1 || ++count > page->carved) page_corrupted(page, from);
    if (!is_freed(b) || !tail_mark_intact(page, b)) page_corrupted(page, b);
    seen[i / 64] |= uint64_t(1) << (i % 64);
  }
}

// Whether a carved block on neither free list has a broken canary. A block
// whose words are sealed (is_freed) was freed but is on no list: held
// in another thread's quarantine (quarantine_free), mid-way through a
// remote free (heap_free_remote), or left so in a fork child by a thread
// the fork did not copy. The free list's words in its first 16 bytes then
// cover whatever of its canary began there, which is not looked at (as
// check_canary_past_header does when the block leaves the quarantine).
static bool canary_broken_at_exit(const Page* page, const void* p) {
  const Block* b = static_cast<const Block*>(p);
  if (record_busy(page, p)) return false;  // another thread is rewriting it
  __atomic_thread_fence(__ATOMIC_ACQUIRE);
  if (!is_freed(b)) return canary_check(page, p) == SIZE_MAX;
  return canary_past_header(page, p) == SIZE_MAX;
}

static void check_page_at_exit(const Page* page) {
  uint64_t seen[kSmallPageBytes / kMinBlock / 64] = {};
  uint32_t carved = __atomic_load_n(&page->carved, __ATOMIC_RELAXED);
  check_free_list_at_exit(page, page->free, seen);
  check_free_list_at_exit(page, reinterpret_cast<const Block*>(page->thread_free.load(std::memory_order_acquire)), seen);
  for (uint32_t i = 0; i < carved; i++) {
    if ((seen[i / 64] >> (i % 64)) & 1) continue;
    const char* p = page->start + size_t(i) * page->block_size;
    if (!canary_broken_at_exit(page, p)) continue;
    if (!intact_at_some_look([page, p] { return !canary_broken_at_exit(page, p); })) report_overflow(p);
  }
}

// What the check may still spend: bytes, and pages of the heap being walked
// passed over because they did not fit (kExitCheckMisfits of them end the
// walk of that heap).
struct ExitBudget {
  size_t bytes;
  unsigned misfits = 0;
};
// Past the budget the walk only reads each page's descriptor, a cache miss
// each: in the forked children of bench forkexit (512 KiB, about 400 pages
// of their parent's) that was 1.2 % of the workload's CPU samples, for pages
// none of which fitted. A few more looks still find small pages (a class's
// few carved blocks) that fit what is left.
constexpr unsigned kExitCheckMisfits = 8;

// Checks the page if what it has carved fits in the budget (a page that
// does not is left out; until kExitCheckMisfits of them, the pages after it
// are still looked at). False once the budget is spent or the misfits are
// reached. A block is charged its size up to a page: the work goes by the
// block (a word or two read), and a big block's touches one page of it (a
// program's exit with 15 MiB of 32-byte blocks took about 1.5-2 ms longer
// with the check, with 15 MiB of 120000-byte blocks within noise).
static bool check_page_within(const Page* page, ExitBudget* budget) {
  size_t charge = std::min<size_t>(page->block_size, os::kPageSize);
  size_t bytes = size_t(__atomic_load_n(&page->carved, __ATOMIC_RELAXED)) * charge;
  if (bytes > budget->bytes) return ++budget->misfits < kExitCheckMisfits;
  budget->bytes -= bytes;
  check_page_at_exit(page);
  return budget->bytes > 0;
}

static bool check_list_within(const Page* page, ExitBudget* budget) {
  for (; page; page = page->next)
    if (!check_page_within(page, budget)) return false;
  return true;
}

// The current pages, then the class queues, then the full pages. False once
// the budget is spent.
static bool check_heap_within(const Heap* heap, void* budget_ptr) {
  ExitBudget* budget = static_cast<ExitBudget*>(budget_ptr);
  if (heap->lost_in_fork) return true;
  budget->misfits = 0;
  bool more = true;
  for (unsigned c = 0; c < kNumClasses && more; c++)
    if (heap->current[c] != &empty_page) more = check_page_within(heap->current[c], budget);
  for (unsigned c = 0; c < kNumClasses && more; c++) more = check_list_within(heap->avail[c].head, budget);
  if (more) check_list_within(heap->full.head, budget);
  return budget->bytes > 0;
}

__attribute__((destructor(101))) static void check_heap_at_exit() {
  if (!kCanaries) return;
  ExitBudget budget{exit_check_budget()};
  Heap* heap = tls_heap;
  bool more = true;
  if (heap != &empty_heap) {  // (never lost in a fork: not adopted)
    quarantine_flush(heap);
    more = check_heap_within(heap, &budget);
  }
  // Then, with what is left, the heaps of threads that have exited: the
  // blocks they left live (an overflow past one that nobody frees), and
  // what other threads freed into their pages since.
  if (more) abandoned_heaps_visit(check_heap_within, &budget);
  large::check_at_exit();
  sample::check_at_exit();
}

}  // namespace mapalloc
