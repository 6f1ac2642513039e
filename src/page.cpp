#include "page.h"

#include "base/log.h"
#include "options.h"

namespace mapalloc {

Keys keys;

constexpr uint32_t kMinShuffled = 16;  // <= the 256 entries of page_extend's order

// A request takes the smallest class at least kMinSlack bytes bigger, so
// its slack is below the gap to the class before plus kMinSlack: records
// from that on (an aligned request's, a block shrunk in place) go to
// below_intact, out of line, as random bytes do but for 1 in 65536 per byte
// of the gap: 0.03 % for 16-byte blocks, 0.4 % for 4 KiB ones (the block
// size was the bound before, 6 % at 4 KiB). Over 4 KiB every free looks
// there, exact where the gaps (up to 8 KiB at 100 KiB) would let 3-12 %
// through. The look reads the block below's canary, a line of its own,
// often cold: bench frag ran 6 % longer with it from 1 KiB; from 4 KiB,
// frag up to 3 % and server (one thread) up to 5-6 % (README).
constexpr size_t kFullLookBelowFrom = 4097;
static uint16_t tail_limit_of(unsigned size_class) {
  size_t block = kClasses[size_class].block_size;
  if (block >= kFullLookBelowFrom) return 0;
  return uint16_t(block - (size_class ? kClasses[size_class - 1].block_size : 0) + kMinSlack);
}

void page_init(Page* page, Heap* heap, unsigned size_class) {
  const ClassInfo& info = kClasses[size_class];
  page->free = nullptr;
  page->run_mask = info.page_slots * uint32_t(kSlotSize) - 1;
  page->allocated.store(0, std::memory_order_relaxed);
  page->freed.store(0, std::memory_order_relaxed);
  page->collected.store(0, std::memory_order_relaxed);
  __atomic_store_n(&page->carved, 0, __ATOMIC_RELAXED);
  page->capacity = info.capacity;
  page->block_size = info.block_size;
  page->reciprocal = info.reciprocal;
  page->size_class = uint8_t(size_class);
  page->in_full = false;
  page->free_wait = kNoWait;
  page->tail_limit = tail_limit_of(size_class);
  page->is_current = false;
  page->next = page->prev = nullptr;
  page->thread_free.store(0, std::memory_order_relaxed);
  page->heap.store(heap, std::memory_order_release);
}

void page_corrupted(const Page*, const void* block) {
  fatal("heap corruption: free block overwritten (write after free, or overflow into it) at", block);
}

// Checks a link taken from the free lists: inside this page, on a block start.
static MAPALLOC_INLINE void check_link(const Page* page, const Block* from, const Block* next) {
  if (next && block_index(page, next) == UINT32_MAX) page_corrupted(page, from);
}

void report_overflow(const void* block) noexcept {
  fatal("heap overflow: canary after the end of block broken, block", block);
}

void report_underflow(const void* p) noexcept {
  fatal("heap underflow (or overflow of the block before it) at block", p);
}

size_t escaped_slack(const Page* page, const void* block, uint64_t word, size_t record) noexcept {
  if (record != kSlackEscape) return SIZE_MAX;
  uint32_t exact;
  __builtin_memcpy(&exact, static_cast<const char*>(block) + page->block_size - 6, 4);
  exact ^= uint32_t(word >> 16);
  return exact > kMaxRecordedSlack && exact < page->block_size ? exact : SIZE_MAX;
}

size_t canary_past_header(const Page* page, const void* block) {
  if (!kCanaries) return page->block_size;
  if (page->block_size == kMinBlock) return kMinBlock - kMinSlack;  // its record is gone, any will do
  uint64_t w = canary_word(block);
  size_t slack = recorded_slack(page, block, w);
  if (slack == SIZE_MAX) return SIZE_MAX;
  size_t used = page->block_size - slack;
  return used >= sizeof(Block) && !canary_intact(page, block, w, slack) ? SIZE_MAX : used;
}

size_t check_canary_past_header(const Page* page, const void* block) {
  size_t used = canary_past_header(page, block);
  if (used == SIZE_MAX) report_overflow(block);
  return used;
}

// The owner's frees count Page::free_wait down in the fast path, every
// page's, and the one that reaches 0 calls heap_page_wait_over, which looks
// at the page and sets the count again here:
// - the current page: kNoWait (it stays, however empty: a malloc/free
//   ping-pong must not cycle pages);
// - a page in a class queue: its blocks out, so the free that empties it is
//   the one that calls (no mallocs come to a page that is not current);
// - a full page: also at most an eighth of its capacity, the frees after
//   which it goes back to its class queue (one taken back for one or two
//   free blocks would cost a slow-path trip per malloc).
// No test of in_full or of the blocks out in the fast path: a program
// freeing at random into full and non-full pages made such a test
// mispredict on 45 % of its frees (64-byte blocks replaced at random, 5000
// and 20000 live, cachegrind).
void page_arm_wait(Page* page) {
  if (page->is_current) {
    page->free_wait = kNoWait;
    return;
  }
  uint64_t wait = page->used_count();
  if (page->in_full && wait > page->capacity / 8) wait = page->capacity / 8;
  page->free_wait = uint16_t(wait < 1 ? 1 : wait < kNoWait ? wait : kNoWait);
}

// Other threads' frees were checked by the freeing thread (heap_free_remote).
void page_collect(Page* page) {
  if (page->thread_free.load(std::memory_order_relaxed)) {
    Block* list = reinterpret_cast<Block*>(page->thread_free.exchange(0, std::memory_order_acquire));
    if (list) {
      uint32_t count = 1;
      Block* tail = list;
      for (Block* n; (n = decode_link(tail)); tail = n, count++) {
        check_link(page, tail, n);
        if (count > page->capacity) page_corrupted(page, tail);  // a cycle
      }
      set_free_link(tail, page->free);
      page->free = list;
      bump(page->collected, count);
      // Fewer blocks out: the free that empties the page must still find it.
      // A page emptied here is its caller's to release.
      page_arm_wait(page);
    }
  }
}

bool page_extend(Page* page) {
  if (page->carved >= page->capacity) return false;
  // Carve about one OS page worth at a time: fresh memory is touched only
  // when it is about to be used (first touches are expensive).
  uint32_t n = page->block_size >= 4096 ? 1 : 4096 / page->block_size;
  // With random=1 at least kMinShuffled at once (as many as the page has
  // left, if fewer): a shuffle of one or two blocks (those of 2 KiB and
  // more) leaves them in address order.
  if (options.random && n < kMinShuffled) n = kMinShuffled;
  if (n > page->capacity - page->carved) n = page->capacity - page->carved;
  char* first = page->start + size_t(page->carved) * page->block_size;
  // With random=1 the fresh blocks go on the list in a random order, so the
  // address of the next block cannot be predicted from the last one.
  uint16_t order[4096 / kMinBlock];
  for (uint32_t i = 0; i < n; i++) order[i] = uint16_t(i);
  if (options.random) {
    static __thread uint64_t rng = 0;
    if (!rng) rng = (keys.link ^ reinterpret_cast<uintptr_t>(&rng)) | 1;
    for (uint32_t i = n; i > 1; i--) {
      rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;  // xorshift64
      uint32_t j = uint32_t(rng % i);
      uint16_t t = order[i - 1];
      order[i - 1] = order[j];
      order[j] = t;
    }
  }
  Block* next = page->free;  // free is empty when we extend, but keep it general
  for (uint32_t i = n; i-- > 0;) {
    Block* b = reinterpret_cast<Block*>(first + size_t(order[i]) * page->block_size);
    if (kCanaries) mark_tail_free(page, b);
    set_free_link(b, next);
    next = b;
  }
  page->free = next;
  // Other threads read carved (owns, malloc_usable_size): a relaxed store.
  __atomic_store_n(&page->carved, page->carved + n, __ATOMIC_RELAXED);
  return true;
}

}  // namespace mapalloc
