// Layer 3: a page is a run of 64 KiB slots holding blocks of one size class.
// Its metadata lives out of line (in the chunk descriptor), so an overflow
// out of a user block can never reach it.
//
// Free blocks carry two words: an encoded link to the next free block and a
// "freed" cookie. Both are derived from a per-process secret and the block's
// own address, so a use-after-free write cannot forge a link unnoticed, and
// freeing a block that already carries its cookie is a double free.
#pragma once
#include <atomic>
#include <bit>
#include <cstdint>

#include "base/bits.h"
#include "size_classes.h"

#ifndef MAPALLOC_SECURE
#define MAPALLOC_SECURE 1
#endif

namespace mapalloc {

struct Heap;
struct Chunk;

// Owner-only counter update: a plain load and store, never a locked instruction.
MAPALLOC_INLINE void bump(std::atomic<uint64_t>& c, uint64_t by = 1) {
  c.store(c.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
}

struct Block {
  uintptr_t link;    // encoded next free block
  uintptr_t cookie;  // freed_cookie(this) while free, 0 while allocated
};

struct Keys {
  uintptr_t link = 0x5bd1e9955bd1e995ull;
  uintptr_t cookie = 0x9e3779b97f4a7c15ull;
};
extern Keys keys;  // set once at start-up, before the first block exists

MAPALLOC_INLINE uintptr_t encode_link(const Block*, const Block* next) {
  return std::rotl(reinterpret_cast<uintptr_t>(next) ^ keys.link, 17);
}
MAPALLOC_INLINE Block* decode_link(const Block* self) {
  return reinterpret_cast<Block*>(std::rotr(self->link, 17) ^ keys.link);
}
MAPALLOC_INLINE uintptr_t freed_cookie(const Block* b) {
  return reinterpret_cast<uintptr_t>(b) ^ keys.cookie;
}

struct Page {
  // Owner-only: touched by the owning heap's thread (or by whoever holds an
  // abandoned heap exclusively).
  Block* free = nullptr;        // malloc pops here
  Block* local_free = nullptr;  // the owner's frees; folded into free when it runs dry
  char* start = nullptr;        // first block (slot aligned)
  // Blocks handed out, and blocks back (local frees plus collected remote
  // ones), since the page left the arena. Separate counters keep malloc and
  // free off each other's store-to-load chains; the page is empty when they
  // meet. Written by the owner only (plain load and store), read by the
  // statistics.
  std::atomic<uint64_t> allocated{0};
  std::atomic<uint64_t> freed{0};
  std::atomic<uint64_t> collected{0};  // the remote part of freed
  uint32_t carved = 0;          // blocks carved from fresh memory so far
  uint32_t capacity = 0;        // 0 while the page belongs to the arena
  uint32_t block_size = 0;
  uint32_t span = 0;  // capacity * block_size
  uint64_t reciprocal = 0;
  uint8_t size_class = 0;
  bool in_full = false;  // on the heap's full list rather than its class queue
  bool is_current = false;
  Page* next = nullptr;  // heap queue links, or arena links while free
  Page* prev = nullptr;

  // Shared: other threads push their frees here.
  std::atomic<uintptr_t> thread_free{0};
  std::atomic<Heap*> heap{nullptr};

  // Arena-only, under the arena lock.
  Chunk* chunk = nullptr;
  uint8_t slot_index = 0;
  uint8_t slot_count = 0;

  char* end() const { return start + size_t(capacity) * block_size; }
  uint64_t used_count() const {
    return allocated.load(std::memory_order_relaxed) - freed.load(std::memory_order_relaxed);
  }
};

// The block index of p in page, or UINT32_MAX if p is not a block start.
MAPALLOC_INLINE uint32_t block_index(const Page* page, const void* p) {
  uintptr_t offset = reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(page->start);
  uint64_t index = (uint64_t(offset) * page->reciprocal) >> kReciprocalShift;
  if (MAPALLOC_UNLIKELY(index * page->block_size != offset || index >= page->capacity)) return UINT32_MAX;
  return uint32_t(index);
}

// Slow paths of page.cpp.
void page_init(Page* page, Heap* heap, unsigned size_class);
// Folds local_free and thread_free into free; returns how many blocks came
// from thread_free (other threads' frees).
uint32_t page_collect(Page* page);
// Carves fresh blocks onto free; false when the page has none left.
bool page_extend(Page* page);
[[noreturn]] void page_corrupted(const Page* page, const void* block);

}  // namespace mapalloc
