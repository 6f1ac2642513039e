// Layer 2: the only code that calls mmap, munmap, mprotect and madvise.
// Every call is counted so the statistics can show the syscall cost.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace mapalloc::os {

constexpr size_t kPageSize = 4096;  // checked against sysconf at start-up

// Maps size bytes (a page multiple) read-write; nullptr on failure.
void* map(size_t size);
// Maps size bytes PROT_NONE: address space only. The parts protect_rw opens
// are charged as a read-write mmap is (refused beyond what overcommit allows).
void* reserve(size_t size);
// Maps size bytes (read-write when rw) so that the byte at `offset` in them
// lies at a multiple of alignment (offset a page multiple).
void* map_aligned(size_t size, size_t alignment, bool rw, size_t offset = 0);
void unmap(void* p, size_t size);
// Gives a range of a mapping back to PROT_NONE, its memory (and any guard
// markers) released: address space kept, as reserve()'s (one call).
bool decommit(void* p, size_t size);
bool protect_none(void* p, size_t size);
bool protect_rw(void* p, size_t size);
// Guard pages inside a read-write mapping: any access to them faults. Where
// the kernel has guard markers (MADV_GUARD_INSTALL, Linux 6.13) this is a
// page-table update that leaves the mapping one VMA, about a quarter of the
// cost of the mprotect used elsewhere (which splits the VMA). The pages'
// contents are lost (markers) or kept (mprotect); unguard makes them
// read-write again with contents unspecified. guard_markers() says which.
// Where a marker is refused (a locked mapping), guard falls back to mprotect.
bool guard(void* p, size_t size);
bool unguard(void* p, size_t size);
// Whether the kernel has markers (pages may hold some from earlier calls:
// unguard and unguard_markers take them off).
bool guard_markers();
// Whether to install markers now: the kernel has them and has not refused
// one in this process (a locked mapping; not tried again).
bool markers_usable();
// Markers only, no fallback (the arena's run guards: see arena.cpp). A
// refusal makes markers_usable() false.
bool guard_marker(void* p, size_t size);
// Markers on n ranges (at most kMaxGuardRanges) in one call:
// process_madvise on the calling process (Linux 6.15, for its PIDFD_SELF).
// False if the kernel would not; then some of the ranges may have their
// markers (the caller must clear them or cover them). Once the kernel
// refused the call outright, or a marker (markers_usable), later calls
// return false at once. Range is struct iovec's layout.
struct Range {
  void* base;
  size_t size;
};
constexpr unsigned kMaxGuardRanges = 64;
bool guard_ranges(const Range* ranges, unsigned n);
// guard() on each range: in one call where guard_ranges takes them, else one
// call each (markers, or mprotect where the kernel refuses them). False if
// one failed (the others may be guard pages by then).
bool guard_each(const Range* ranges, unsigned n);
// The same for n pages, one every stride bytes from first.
bool guard_pages(char* first, size_t stride, unsigned n);
bool unguard_markers(void* p, size_t size);
// Releases the pages' contents; they read back as zero (MADV_DONTNEED) or
// may (MADV_FREE, with use_madv_free) until reused. Returns whether they
// read as zero now: false after MADV_FREE, which leaves a page's old bytes
// in place until the kernel needs the memory, and when the kernel refused
// (locked pages: mlock, mlockall).
bool purge(void* p, size_t size);
// Releases the pages as purge does and leaves guard markers on them, so that
// any access faults until unguard: false where the kernel has no markers or
// refuses them (locked pages), and then the range holds no marker at all, not
// even one it held before the call.
// *took_back (if given) says whether it tried and took its markers back.
bool purge_to_guard(void* p, size_t size, bool* took_back = nullptr);
// Releases the pages and makes them fault on any access, for memory freed
// for good (a freed sample): markers where the kernel takes them, else a
// purge and mprotect (guard).
void purge_and_close(void* p, size_t size);
// Whether mremap moves a range spanning several mappings (Linux 6.17+).
bool moves_across_mappings();
// Moves the pages of [old_p, old_p + size) to dest, replacing what was mapped
// there (MREMAP_FIXED): no copy, no fault. The old range becomes a hole.
bool move_pages(void* old_p, size_t size, void* dest);

uint64_t now_ms();            // CLOCK_MONOTONIC_COARSE milliseconds (a tick: 1-4 ms)
// Milliseconds from then to now, 0 if then is later: a thread that read the
// clock before it waited for a lock may hold an older now than the time
// another thread stored meanwhile (unsigned, the difference would wrap).
inline uint64_t ms_since(uint64_t now, uint64_t then) { return now > then ? now - then : 0; }
uint64_t resident_bytes();    // from /proc/self/statm, without allocating
uint64_t address_space_bytes();  // the same: the process's address space (what RLIMIT_AS limits)
void random_words(uint64_t* words, size_t n);  // nonzero, from one getrandom; falls back to clock mixing

struct Counters {
  std::atomic<uint64_t> mapped{0};  // bytes of address space we hold
  std::atomic<uint64_t> mmap_calls{0}, munmap_calls{0}, mprotect_calls{0}, madvise_calls{0}, mremap_calls{0};
  std::atomic<uint64_t> purges{0}, purged_bytes{0};
};
extern Counters counters;
extern bool use_madv_free;

}  // namespace mapalloc::os
