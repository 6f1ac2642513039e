// Layer 4: blocks above the mmap threshold. Each gets its own mapping
// [guard | ... block | guard]; the block ends at the trailing guard (up to its
// alignment), so running off its end faults at once, and so does running off
// its start when it starts at a page. One that starts inside its first page
// has a canary in the 256 bytes below it (a reused mapping may leave a gap
// below it: large.cpp, gap_fits), checked on free. Freed
// mappings wait in a bounded cache, guards intact and pages resident, so
// that a program that mallocs and frees the same large size pays no syscall
// or fault per round.
//
// A block that realloc grows is likely to grow again, so it moves to the
// growable layout [guard | block ... | PROT_NONE headroom]: it starts at a
// page and its read-write part ends at or a little past its end. Growth opens
// a quarter more headroom at a time with one mprotect, and past the headroom
// the pages move to a bigger reservation with mremap: no copy and no page
// fault, as glibc's realloc.
//
// Up to 256 bytes after every block's requested end (fewer where its
// read-write part ends sooner) hold a canary checked on free, realloc and
// malloc_usable_size: a block ends at its guard only up to its rounding to
// 16, its alignment, or a shrink in place, so its usable size is its
// requested size.
#pragma once
#include <cstddef>
#include <cstdint>

namespace mapalloc {

struct LargeBlock {
  char* map_base;     // whole mapping, guards and headroom included
  size_t map_size;
  char* begin;        // [begin, end): the read-write part
  char* end;
  char* user;         // the block handed out (nullptr while cached)
  size_t size;        // requested bytes
  char* dirty_from;   // [dirty_from, end) may hold old data
  // Guarded blocks: [open_from, end) has no guard page and the page below it
  // is one; [begin, open_from) may hold guard pages of earlier uses.
  char* open_from;
  uint64_t cached_at_ms;
  LargeBlock* next;   // live list, cache list (most recent first) or spare list
  LargeBlock* prev;
  LargeBlock* bin_next;  // cache bin of its size (cache_bin)
  LargeBlock* bin_prev;
  unsigned bin;
  bool live;
  bool guarded;
  bool growable;
  bool freed_marked;  // cached with its first 16 bytes marked (mark_freed)
  // Purged since it was mapped without its pages reading as zero after
  // (MADV_FREE with madv_free=1, or locked pages the kernel would not
  // purge): pages below dirty_from may still hold old data, so calloc
  // zeroes all of its block.
  bool lazily_purged;
  // Growable blocks: its pages were moved by mremap (and not copied since),
  // so its read-write part is two mappings or more: the moved pages do not
  // merge with the part opened next to them at the destination, before the
  // move or after it.
  bool spans_mappings;
  // Growable blocks, under the lock: a realloc is moving its pages or its
  // end (without the lock), so the check at exit leaves it out.
  bool resizing;
  // A small request's guarded sample (heap.cpp): its pages become guard
  // pages when it is freed, outside the large samples' budget.
  bool sampled;

  char* map_end() const { return map_base + map_size; }
};

namespace large {

void* alloc(size_t size, size_t alignment, bool zero, bool sampled = false);
// A block in the growable layout, for realloc growing a block past the
// threshold.
void* alloc_growable(size_t size);
void free(LargeBlock* block, void* p);
size_t usable_size(const LargeBlock* block);
// realloc of a large block to a size above the threshold: in place, by
// moving pages, or nullptr when the caller must allocate and copy (errno
// untouched) or when memory ran out (errno ENOMEM, block intact).
void* reallocate(LargeBlock* block, size_t new_size, bool* out_of_memory);
void purge(bool force);
// At exit: checks the front and tail canaries of the live blocks (but one
// another thread is resizing) and the write-after-free marks of the cached
// ones.
void check_at_exit();
// For a request the kernel refused: unmaps every cached mapping and the
// arena's wholly free chunks, and purges its free pages. No lock held.
void give_back_caches();

struct Usage {
  uint64_t live_count, live_bytes, requests, cache_hits, cache_count, cache_bytes, mapped_bytes, coalesced;
};
Usage usage();

void lock_for_fork();
void unlock_for_fork();
void reset_after_fork();

}  // namespace large
}  // namespace mapalloc
