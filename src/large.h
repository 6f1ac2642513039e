// Layer 4: blocks above the mmap threshold. Each gets its own mapping
// [guard | ... block | guard]; the block ends at the trailing guard (up to its
// alignment), so running off either end faults at once. Freed mappings wait
// in a bounded cache, guards intact and pages resident, so that a program that
// mallocs and frees the same large size pays no syscall or fault per round.
#pragma once
#include <cstddef>
#include <cstdint>

namespace mapalloc {

struct LargeBlock {
  char* map_base;     // whole mapping, guards included
  size_t map_size;
  char* user;         // the block handed out (nullptr while cached)
  size_t size;        // requested bytes
  char* dirty_from;   // [dirty_from, inner_end) may hold old data
  uint64_t cached_at_ms;
  LargeBlock* next;   // cache list (most recent first) or spare list
  LargeBlock* prev;
  bool live;
  bool guarded;

  char* inner_begin() const { return map_base + (guarded ? 4096 : 0); }
  char* inner_end() const { return map_base + map_size - (guarded ? 4096 : 0); }
};

namespace large {

void* alloc(size_t size, size_t alignment, bool zero);
void free(LargeBlock* block, void* p);
size_t usable_size(const LargeBlock* block);
// realloc of a large block: in place when it fits, else nullptr (caller copies).
void* try_resize_in_place(LargeBlock* block, size_t new_size);
void purge(bool force);

struct Usage {
  uint64_t live_count, live_bytes, requests, cache_hits, cache_count, cache_bytes, mapped_bytes;
};
Usage usage();

void lock_for_fork();
void unlock_for_fork();
void reset_after_fork();

}  // namespace large
}  // namespace mapalloc
