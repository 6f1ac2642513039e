// Layer 3: a page is a run of 16 KiB slots holding blocks of one size class.
// Its metadata lives out of line (in the chunk descriptor), so an overflow
// out of a user block can never reach it.
//
// Free blocks carry two words: an encoded link to the next free block and a
// cookie that seals it, both derived from per-process secrets, so a
// use-after-free write cannot forge a link unnoticed, and freeing a block
// whose words are sealed is a double free.
#pragma once
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>

#include "base/bits.h"
#include "size_classes.h"

namespace mapalloc {

struct Heap;
struct Chunk;

// Owner-only counter update: a plain load and store, never a locked instruction.
MAPALLOC_INLINE void bump(std::atomic<uint64_t>& c, uint64_t by = 1) {
  c.store(c.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
}

// The same, by one, as a single unlocked add to memory on x86-64 (GCC emits
// the load, add and store above as three instructions: two more per malloc).
// An aligned 8-byte add is still read whole by other threads' relaxed loads.
// Sanitizer builds keep the atomic form, which ThreadSanitizer can see.
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MAPALLOC_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__) && !defined(MAPALLOC_TSAN)
#define MAPALLOC_TSAN 1
#endif
MAPALLOC_INLINE void bump_one(std::atomic<uint64_t>& c) {
#if defined(__x86_64__) && !defined(MAPALLOC_TSAN)
  static_assert(sizeof(c) == sizeof(uint64_t));
  asm("addq $1, %0" : "+m"(*reinterpret_cast<uint64_t*>(&c)));
#else
  bump(c);
#endif
}

struct Block {
  uintptr_t link;    // encoded next free block
  uintptr_t cookie;  // cookie_for(next) while free, 0 while allocated
};

constexpr uint64_t kFreedRecord = 2;  // a free block's record (freed_mark)

// The bits every canary word sets (canary_word).
constexpr uint64_t kCanaryTopBits = 0x8080808080808080ull;

struct Keys {
  uintptr_t link = 0x5bd1e9955bd1e995ull;
  // The top 16 bits of these two are kFreedRecord ^ record (see freed_mark).
  uintptr_t seal = (uintptr_t(0x27d4 ^ kFreedRecord) << 48) | 0x79b97f4a7c15ull;
  uintptr_t mark = (uintptr_t(0x27d4 ^ kFreedRecord) << 48) | 0x3c6ef372fe94ull;
  uintptr_t cookie = link ^ seal;  // is_freed's one load
  uintptr_t canary = 0xc2b2ae3d27d4eb4full;
  uintptr_t canary_top = kCanaryTopBits;  // (an or from memory is one instruction, an immediate two)
  // The canaries' slack records are xored with it. Below 2^16, in 32 bits:
  // a record loaded into 32 bits and xored with it needs no truncation.
  uint32_t record = 0x27d4;
};
extern Keys keys;  // set once at start-up, before the first block exists

// One xor on the loaded value each way: self ^ key is known before the link
// (or the list head) is loaded, and a malloc/free pair's critical path runs
// through these links, so every extra operation here is a cycle per pair.
// A bit flipped in a link flips the same bit of the next pointer (as with
// any linear encoding); the cookie below catches it.
MAPALLOC_INLINE uintptr_t link_key(const Block* self) { return reinterpret_cast<uintptr_t>(self) ^ keys.link; }
MAPALLOC_INLINE uintptr_t encode_link(const Block* self, const Block* next) {
  return reinterpret_cast<uintptr_t>(next) ^ link_key(self);
}
MAPALLOC_INLINE Block* decode_link(const Block* self) { return reinterpret_cast<Block*>(self->link ^ link_key(self)); }

// A free block's cookie is its next pointer xored with a secret: it seals
// the link, so that malloc, which decodes the link anyway, checks both words
// with one compare and can trust the next pointer that passes (a write
// after free into either word, or a link copied from another block, breaks
// the seal; no test of where the link leads is needed). Its top 16 bits are
// the secret's (user addresses have 47 bits): a valid record, for the block
// after a 16-byte block (tail_before_intact).
MAPALLOC_INLINE uintptr_t cookie_for(const Block* next) { return reinterpret_cast<uintptr_t>(next) ^ keys.seal; }
// Whether b's words are those of a free block (link ^ b ^ link key is next).
MAPALLOC_INLINE bool is_freed(const Block* b) {
  return b->cookie == (b->link ^ reinterpret_cast<uintptr_t>(b) ^ keys.cookie);
}
// Makes b a free block whose next is next.
MAPALLOC_INLINE void set_free_link(Block* b, const Block* next) {
  b->link = encode_link(b, next);
  b->cookie = cookie_for(next);
}

// A block's last two bytes hold a record that decodes (xored with
// keys.record) to a slack in kMinSlack .. block size - 1: its canary's
// record while it is live (below), kFreedRecord while it is free, where a
// mark derived from its address, whose top 16 bits are kFreedRecord ^
// keys.record, is written at its end (a 16-byte block's cookie is there,
// with the same top bits). See tail_before_intact.
MAPALLOC_INLINE uintptr_t freed_mark(const Block* b) { return reinterpret_cast<uintptr_t>(b) ^ keys.mark; }

// Page::free_wait of the current page: it is looked at once per 65535 frees.
constexpr uint16_t kNoWait = 0xFFFF;

// The fields that malloc and free touch come first and fill one cache line
// (pages are cache-line aligned): a free from cold caches misses once on its
// page, not two or three times.
struct alignas(64) Page {
  // Owner-only: touched by the owning heap's thread (or by whoever holds an
  // abandoned heap exclusively).
  Block* free = nullptr;        // malloc pops here; the owner's frees push here
  // Blocks handed out since the page left the arena (counted by malloc), and
  // blocks the owner freed (counted by free): with collected below, the
  // blocks out now. Two counters rather than one of blocks out, so that
  // malloc and free never update the same word: a malloc/free pair that does
  // (one add, one subtract) runs 0.5 ns slower, its second update waiting on
  // the first's store. Written by the owner only (unlocked instructions),
  // read by the statistics.
  std::atomic<uint64_t> allocated{0};
  std::atomic<uint64_t> freed{0};
  uint64_t reciprocal = 0;
  std::atomic<Heap*> heap{nullptr};  // the owner, compared by every free
  uint32_t block_size = 0;
  // Run bytes - 1. Runs start at a multiple of their (power-of-two) size, so
  // p & run_mask is p's offset from start, one instruction and no load.
  uint32_t run_mask = 0;
  uint16_t carved = 0;   // blocks carved from fresh memory so far (owner writes)
  bool in_full = false;  // on the heap's full list rather than its class queue
  bool is_current = false;
  // Counted down by every free of the owner's; at 0, heap_page_wait_over
  // looks at the page. Never more than the blocks out (when it is not the
  // current page, which gets no mallocs), so that the free that empties a
  // page always finds it; on the full list, also no more than the frees
  // after which it goes back to its class queue (page_arm_wait).
  uint16_t free_wait = 0;
  // tail_before_intact's bound on the record below a block (page.cpp:
  // 0 for blocks over 4 KiB, whose frees all look further, below_intact).
  uint16_t tail_limit = 0;
  char* start = nullptr;  // first block (slot aligned); free finds blocks by run_mask

  std::atomic<uint64_t> collected{0};  // remote frees collected so far (part of freed_count())
  Page* next = nullptr;  // heap queue links, or arena links while free
  Page* prev = nullptr;

  // Shared: other threads push their frees here.
  std::atomic<uintptr_t> thread_free{0};

  // Arena-only, under the arena lock.
  Chunk* chunk = nullptr;

  uint32_t capacity = 0;  // 0 while the page belongs to the arena
  uint8_t size_class = 0;
  uint8_t slot_index = 0;  // arena-only
  uint8_t slot_count = 0;

  char* end() const { return start + size_t(capacity) * block_size; }
  // Blocks back since the page left the arena, freed here or collected
  // (other threads reading it with allocated read it first: a block is
  // counted out before it is counted back).
  uint64_t freed_count() const {
    return freed.load(std::memory_order_relaxed) + collected.load(std::memory_order_relaxed);
  }
  // Blocks out now (the owner's view).
  uint64_t used_count() const {
    uint64_t back = freed_count();
    return allocated.load(std::memory_order_relaxed) - back;
  }
};
static_assert(sizeof(Page) == 128 && offsetof(Page, collected) == 64);

// offset * reciprocal (the page map put p in this page's run, so offset <
// 2^22) has a fraction below the reciprocal exactly when offset is a multiple
// of the block size: a divisibility test without a second multiply.
MAPALLOC_INLINE bool is_block_start(uint64_t scaled, uint64_t reciprocal) {
  return (scaled & ((uint64_t(1) << kReciprocalShift) - 1)) < reciprocal;
}

// The block index of p in page, or UINT32_MAX if p is not the start of a
// block ever handed out (blocks past `carved` never were).
MAPALLOC_INLINE uint32_t block_index(const Page* page, const void* p) {
  uintptr_t offset = reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(page->start);
  uint64_t index = (uint64_t(offset) * page->reciprocal) >> kReciprocalShift;
  if (MAPALLOC_UNLIKELY(index * page->block_size != offset ||
                        index >= __atomic_load_n(&page->carved, __ATOMIC_RELAXED)))
    return UINT32_MAX;
  return uint32_t(index);
}

// Canaries (secure builds). Every block was asked for at least kMinSlack
// bytes less than its block size (size_classes.h), and the bytes in between
// are its canary:
// - the up to 8 bytes right after the requested size hold a word derived
//   from the secret and the block's address, so that a write past the end
//   is caught when the block is freed or reallocated;
// - the block's last two bytes (the word's top two when the slack is 8 or
//   less) record the slack, xored with keys.record (so that a free block's
//   record, freed_mark, decodes the same way). A slack above 0xFFFF (a
//   block of more than 64 KiB asked for much less: aligned, or shrunk in
//   place) records kSlackEscape, 1, which is no slack: "exact value, xored
//   with 32 bits of the word, in the 4 bytes before it". Being out of the
//   slacks' range, it costs free's fast path no test of its own.
// The record is in the block rather than out of line, so that it costs no
// cache line of its own: with one byte per block in the chunk descriptor's
// mapping (the earlier layout), free missed L1 on that byte on 74 % of bench
// server's requests. It is two bytes because an overflow that reaches it
// points the check somewhere else: with one, 1 such overflow in 256 decoded
// as a slack of one byte, which leaves nothing else to check.
constexpr size_t kSlackEscape = 1;
constexpr size_t kMaxRecordedSlack = 0xFFFF;
static_assert(kSlackEscape < kMinSlack || !kCanaries);

// The canary's word sits at block_size - max(slack, 8): right after the
// request, or at the block's end when there are 8 bytes of slack or fewer.
MAPALLOC_INLINE constexpr size_t canary_offset(size_t block_size, size_t slack) {
  size_t requested = block_size - slack;  // when the caller knows it, one instruction less
  return requested < block_size - 8 ? requested : block_size - 8;
}

// Every byte of a canary has its top bit set: an overflow that writes a NUL
// or an ASCII byte (a string's terminator one past the end, the commonest
// overflow of all) breaks it whatever the key; another byte breaks it but
// one time in 128. With the key alone, one write in 256 of any byte went
// unseen (the byte already there).
MAPALLOC_INLINE uint64_t canary_word(const void* block) {
  return (reinterpret_cast<uintptr_t>(block) ^ keys.canary) | keys.canary_top;
}

// Per slack (from 10 on, the last entry), the bytes of the canary's word
// that are canary and not record (the record is checked by decoding it, and
// written after the word): up to 8, the word's top bytes but its top two; at
// 9, all but its top byte (the record's first); from 10 on, all of it. A
// table and conditional moves, no branches: slack varies from block to
// block, and a mispredicted branch costs more than these few instructions.
constexpr uint64_t canary_bytes(size_t slack) {
  if (slack >= 10) return ~uint64_t(0);
  if (slack == 9) return ~uint64_t(0) >> 8;
  uint64_t top = slack ? ~uint64_t(0) << (64 - 8 * slack) : 0;
  return top & (~uint64_t(0) >> 16);
}
// With the word's offset below the request, block_size - slack - back (8 -
// slack up to 8, else 0): free's check indexes both with one clamp, in one
// table (malloc, which needs no mask, computes the offset as canary_offset).
struct CanaryShape {
  uint64_t bytes[11];
  uint64_t back[11];
};
constexpr CanaryShape make_canary_shape() {
  CanaryShape t{};
  for (size_t slack = 0; slack <= 10; slack++) {
    t.bytes[slack] = canary_bytes(slack);
    t.back[slack] = slack < 8 ? 8 - slack : 0;
  }
  return t;
}
inline constexpr CanaryShape kCanaryShape = make_canary_shape();
MAPALLOC_INLINE constexpr size_t canary_shape_index(size_t slack) { return slack < 10 ? slack : 10; }
// The table's offset is canary_offset's.
constexpr bool canary_shape_matches_offset() {
  for (size_t block_size : {size_t(16), size_t(48), size_t(4096)})
    for (size_t slack = kMinSlack; slack < block_size; slack++)
      if (block_size - slack - kCanaryShape.back[canary_shape_index(slack)] != canary_offset(block_size, slack))
        return false;
  return true;
}
static_assert(canary_shape_matches_offset());
MAPALLOC_INLINE uint64_t canary_mask(size_t slack) { return kCanaryShape.bytes[canary_shape_index(slack)]; }

// The last two bytes (and with a large slack the 4 bytes before them),
// written after the word: when the slack is 9 or less they replace the
// word's top one or two bytes.
// kSmallRequest: the block is of the class of a request of at most
// kLookupMax bytes, so its slack is below the escape's (no test).
template <bool kSmallRequest = false>
MAPALLOC_INLINE void canary_record_slack(char* block, size_t block_size, size_t slack, uint64_t word) {
  if (!kSmallRequest && MAPALLOC_UNLIKELY(slack > kMaxRecordedSlack)) {
    uint32_t exact = uint32_t(slack) ^ uint32_t(word >> 16);
    __builtin_memcpy(block + block_size - 6, &exact, 4);
    slack = kSlackEscape;
  }
  uint16_t record = uint16_t(slack ^ keys.record);
  __builtin_memcpy(block + block_size - 2, &record, 2);
}

// For a block being handed out: its bytes are not the caller's yet, so the
// whole word is written, one store and no load.
template <bool kSmallRequest = false>
MAPALLOC_INLINE void canary_set_fresh(const Page* page, void* block, size_t size) {
  if (!kCanaries) return;
  size_t block_size = page->block_size;
  size_t slack = block_size - size;
  uint64_t w = canary_word(block);
  __builtin_memcpy(static_cast<char*>(block) + canary_offset(block_size, slack), &w, 8);
  canary_record_slack<kSmallRequest>(static_cast<char*>(block), block_size, slack, w);
}

// A record that decodes to 0, which no slack is: the block's end is being
// rewritten (canary_set). Other threads may look at a block's end while its
// own thread rewrites it (below_intact, the check at exit); whatever moment
// they see, it is the old record and canary, this, or the new ones, however
// long that thread is held between its stores (a signal handler, say).
MAPALLOC_INLINE void mark_record_busy(const Page* page, void* block) {
  uint16_t busy = uint16_t(keys.record);
  __builtin_memcpy(static_cast<char*>(block) + page->block_size - 2, &busy, 2);
  __atomic_thread_fence(__ATOMIC_RELEASE);
}
MAPALLOC_INLINE bool record_busy(const Page* page, const void* block) {
  uint16_t record;
  __builtin_memcpy(&record, static_cast<const char*>(block) + page->block_size - 2, 2);
  return record == uint16_t(keys.record);
}

// For a live block (realloc in place, size + kMinSlack <= block size): only
// the canary's bytes change, the record busy meanwhile.
MAPALLOC_INLINE void canary_set(const Page* page, void* block, size_t size) {
  size_t block_size = page->block_size;
  size_t slack = block_size - size;
  mark_record_busy(page, block);
  char* at = static_cast<char*>(block) + canary_offset(block_size, slack);
  uint64_t w = canary_word(block), word;
  __builtin_memcpy(&word, at, 8);
  word ^= (word ^ w) & canary_mask(slack);  // (the record's bytes stay busy)
  __builtin_memcpy(at, &word, 8);
  __atomic_thread_fence(__ATOMIC_RELEASE);
  canary_record_slack(static_cast<char*>(block), block_size, slack, w);
  // Grown to 2 bytes of slack, its last word may be the mark of an earlier
  // free (bytes the program never wrote: indeterminate), which would make
  // its next free look like a double free (freed_tail): break it.
  if (slack == kFreedRecord && block_size > sizeof(Block)) {
    uintptr_t last;
    __builtin_memcpy(&last, static_cast<char*>(block) + block_size - 8, 8);
    if (last == freed_mark(static_cast<const Block*>(block))) static_cast<char*>(block)[block_size - 8] ^= 1;
  }
}

// For a record out of the slacks' range: the exact slack if it is the
// escape (page.cpp), else SIZE_MAX.
size_t escaped_slack(const Page* page, const void* block, uint64_t word, size_t record) noexcept;

// A block's record, decoded: its slack if in slack_in_range.
MAPALLOC_INLINE size_t decoded_record(const Page* page, const void* block) {
  uint16_t record;
  __builtin_memcpy(&record, static_cast<const char*>(block) + page->block_size - 2, 2);
  return uint32_t(record) ^ keys.record;
}
MAPALLOC_INLINE bool slack_in_range(const Page* page, size_t slack) {
  return slack - kMinSlack < page->block_size - kMinSlack;
}

// Free's fast path takes the slacks above kFreedRecord; the rest (a slack
// of 2, which a free block's record also decodes to; the escape; a broken
// record) go out of line, at no cost to the test: a slack of exactly 2 is
// the request of a class's size less 2.
MAPALLOC_INLINE bool slack_in_fast_range(const Page* page, size_t slack) {
  return slack - (kFreedRecord + 1) < page->block_size - (kFreedRecord + 1);
}
static_assert(kFreedRecord == kMinSlack || !kCanaries);

// Whether a block whose words are not sealed (is_freed: a write after free
// changed its first word, say) still shows that it is free (secure builds):
// its record decodes to kFreedRecord and its last word is its mark; a
// 16-byte block's cookie, its last word, still decodes to a next pointer in
// its run or the list's end. A live block shows neither: malloc writes its
// canary's word over its end, and canary_set (a realloc in place) breaks a
// stale mark. So a double free after such a write is still reported.
MAPALLOC_INLINE bool freed_tail(const Page* page, const Block* b) {
  if (!kCanaries || decoded_record(page, b) != kFreedRecord) return false;
  uintptr_t last;
  __builtin_memcpy(&last, reinterpret_cast<const char*>(b) + page->block_size - 8, 8);
  if (page->block_size > sizeof(Block)) return last == freed_mark(b);
  uintptr_t next = last ^ keys.seal;
  return next == 0 || (((next ^ reinterpret_cast<uintptr_t>(b)) & ~uintptr_t(page->run_mask)) == 0 && next % 16 == 0);
}
MAPALLOC_INLINE bool looks_freed(const Page* page, const Block* b) { return is_freed(b) || freed_tail(page, b); }

// The slack a block records (SIZE_MAX if the record is
// broken: it must lie in kMinSlack .. block size - 1).
MAPALLOC_INLINE size_t recorded_slack(const Page* page, const void* block, uint64_t word) {
  size_t slack = decoded_record(page, block);
  if (MAPALLOC_LIKELY(slack_in_range(page, slack))) return slack;
  return escaped_slack(page, block, word, slack);
}

// Whether the canary bytes of a block with this (recorded) slack hold its word w.
MAPALLOC_INLINE bool canary_intact(const Page* page, const void* block, uint64_t w, size_t slack) {
  size_t i = canary_shape_index(slack);
  size_t offset = page->block_size - slack - kCanaryShape.back[i];  // canary_offset
  uint64_t word;
  __builtin_memcpy(&word, static_cast<const char*>(block) + offset, 8);
  return ((word ^ w) & kCanaryShape.bytes[i]) == 0;
}

// The slack of a block, or SIZE_MAX when its canary is broken.
MAPALLOC_INLINE size_t canary_check(const Page* page, const void* block) {
  uint64_t w = canary_word(block);
  size_t slack = recorded_slack(page, block, w);
  if (MAPALLOC_UNLIKELY(slack == SIZE_MAX)) return slack;
  return canary_intact(page, block, w, slack) ? slack : SIZE_MAX;
}

// Underflows (secure builds). The owner's free of a block checks the record
// in the last two bytes of the block before it (freed_mark), which
// catches a write below a block that reaches the byte right below it, when
// that block is freed: the block before may be live and never freed again,
// or free and not handed out for a long time. One load, three ALU
// operations and a branch; no address-derived word, so that it decodes the
// same whether that block is live or free. The range is the slacks its
// class's requests leave (page.cpp, tail_limit_of); a record out of it
// (random bytes but for 0.03 % to 0.4 %, by class) goes to below_intact,
// which looks at the block below as a whole: its mark, or its record and
// canary. Blocks over 4 KiB take that look at every free: with the block
// size as the range, as before, random bytes passed a third of the time at
// 20 KiB and always from 64 KiB. Other threads' frees skip both, the owner
// may be rewriting that block's end meanwhile, unless the page's heap was
// abandoned (its thread exited).
//
// mark_tail_free is written before the free list's words, which in a
// 16-byte block take its place. The mark is in the block's last two words
// (one store more than one word): a write after free into either is
// reported at exit, if the block is still free then, and the last 16 bytes
// cover the last byte of a request that left up to 15 bytes of slack (the
// last field of a struct, a string's last character), where the last 8 did
// up to 7.
//
// The last word first, its top two bytes being the record: from then on
// the block's record reads kFreedRecord, whose canary is no byte, so another
// thread that looks at the block meanwhile (below_intact, the check at exit,
// or a fork's child, where the freeing thread is gone for good) sees an end
// that passes. The other order broke the canary word of a request that left
// 9 to 23 bytes of slack (a 16-byte block's of 1 to 7 bytes) while the
// record still read as live: an overflow report for a correct program.
MAPALLOC_INLINE void mark_tail_free(const Page* page, Block* b) {
  uintptr_t mark = freed_mark(b);
  char* end = reinterpret_cast<char*>(b) + page->block_size;
  __builtin_memcpy(end - 8, &mark, 8);
  // In this order for other threads too (no instruction on x86-64; it also
  // keeps GCC from pairing the two stores through a vector register, two
  // instructions more).
  __atomic_thread_fence(__ATOMIC_RELEASE);
  __builtin_memcpy(end - 16, &mark, 8);
}
// Whether a free block's mark (both words) is intact; a 16-byte block has none.
MAPALLOC_INLINE bool tail_mark_intact(const Page* page, const Block* b) {
  if (page->block_size <= sizeof(Block)) return true;
  uintptr_t words[2];
  __builtin_memcpy(words, reinterpret_cast<const char*>(b) + page->block_size - 16, 16);
  return words[0] == freed_mark(b) && words[1] == freed_mark(b);
}

// p is not its run's first block. The load races, by design, with other
// threads' stores to those bytes (a remote free's mark or cookie, a
// realloc in place, a release from a quarantine): each of them is one
// aligned store of a valid record, or rewrites the record's bytes with
// their own values, so the two bytes read are an old valid record or a new
// one. ThreadSanitizer builds leave the check out, as it would report them.
MAPALLOC_INLINE bool tail_before_intact(const Page* page, const void* p) {
#ifdef MAPALLOC_TSAN
  (void)page, (void)p;
  return true;
#else
  uint16_t record;
  __builtin_memcpy(&record, static_cast<const char*>(p) - 2, 2);
  // A slack, the escape, or 0, which no record holds (one value in 65536
  // more passes, for one compare less).
  return (uint32_t(record) ^ keys.record) < page->tail_limit;
#endif
}

// The bytes a live block was asked for, or SIZE_MAX when its canary is
// broken. Blocks of unprotected builds were asked for their block size.
MAPALLOC_INLINE size_t requested_bytes(const Page* page, const void* block) {
  if (!kCanaries) return page->block_size;
  size_t slack = canary_check(page, block);
  return slack == SIZE_MAX ? SIZE_MAX : page->block_size - slack;
}

// Slow paths of page.cpp.
void page_init(Page* page, Heap* heap, unsigned size_class);
// Folds thread_free (other threads' frees) into free.
void page_collect(Page* page);
// Sets free_wait for the page's state (current, in a class queue, full).
void page_arm_wait(Page* page);
// Carves fresh blocks onto free; false when the page has none left.
bool page_extend(Page* page);
[[noreturn]] void page_corrupted(const Page* page, const void* block);
// Aborts; not noreturn so that the free fast path reaches it by a tail jump.
void report_overflow(const void* block) noexcept;
// Aborts: tail_before_intact, then below_intact (heap.h), said no.
void report_underflow(const void* p) noexcept;
// For a quarantined block, whose first 16 bytes hold the free list's words:
// checks its canary unless that began inside those 16 bytes. Returns the
// bytes the block was asked for (for a 16-byte block, whose record those
// words overwrote, 14: a valid record to write back).
size_t check_canary_past_header(const Page* page, const void* block);
// The same, SIZE_MAX rather than a report when the canary is broken.
size_t canary_past_header(const Page* page, const void* block);

}  // namespace mapalloc
