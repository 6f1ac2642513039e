// Layer 4: the arena hands out pages (runs of 1 to 64 slots) carved from
// 1 MiB chunks, opened side by side in reserved regions of up to 64 chunks:
// with guards, each chunk's last page is a guard page for good, and a
// region's first chunk has one below it.
// Free pages stay resident for purge_delay_ms so that a steady workload reuses
// them without faults; after that their memory is purged (and whole idle
// chunks are unmapped by a forced collect). All of it under one lock: these
// are slow paths.
#pragma once
#include <cstdint>

#include "page.h"

namespace mapalloc {


namespace arena {
struct Region;
}

struct Chunk {
  char* base = nullptr;        // kChunkSize bytes, kChunkSize aligned
  arena::Region* region = nullptr;  // where it was opened (arena.cpp)
  uint64_t free_slots = 0;     // bit i: slot i belongs to no page
  uint64_t dirty_slots = 0;    // free slots whose memory may still be resident
  uint64_t last_free_ms = 0;   // when a slot was last freed (purge decay)
  Chunk* next = nullptr;       // all live chunks
  Chunk* bin_next = nullptr;   // the chunks of one free-run bin (arena.cpp)
  Chunk* bin_prev = nullptr;
  int bin = -1;                // log2 of its longest aligned free run; -1: full
  uint64_t guard_ends = 0;     // bit i: slot i's last OS page holds a guard marker
  uint64_t purge_marked = 0;   // bit i: free slot i was purged into guard markers, all of it
  Page pages[kSlotsPerChunk];  // slot i's descriptor; a run uses its first slot's
};

namespace arena {

// A page of a size class owned by heap, its page map entries set; nullptr
// when the OS refuses memory.
Page* alloc_page(Heap* heap, unsigned size_class);
// Gives an empty page back to the arena.
void free_page(Page* page);
// Purges free pages idle longer than the purge delay; all of them and idle
// chunks too when force is set.
void purge(bool force);

struct Usage {
  uint64_t pages_in_use, slots_in_use, dirty_free_bytes;
};
Usage usage();

// Calls visit for every page held by a heap, under the arena lock.
void visit_pages(void (*visit)(const Page*, void*), void* ctx);

void lock_for_fork();
void unlock_for_fork();
void reset_after_fork();

}  // namespace arena
}  // namespace mapalloc
