// Layer 4: guarded samples. A few small blocks, picked by a time budget, get
// pages of their own in a region where every other page is a guard page: the
// block ends where a guard page begins (up to its alignment), and when it is
// freed its pages become guard pages too. So for a sampled block an overflow
// past its end, and any read or write after free, faults at the faulting
// instruction, which no check on the arena's blocks can do for reads and for
// writes into the middle of a freed block. The pages change with a syscall
// at each malloc and free (a few microseconds), so only a budget's worth of
// blocks are sampled: every small request of the first kStartAllowance,
// then one at most every kIntervalMs at a malloc slow path.
// A sampled request too big for a slot (over 56 KiB), or too aligned, gets a
// mapping of its own instead, as a large block's (heap.cpp): guard pages
// around it, which its pages become when it is freed, until 16 later ones
// are freed (large.cpp, retire_sample). It counts as a large block in the
// statistics, and takes no shadow block (below): at that size the layout of
// the program's other blocks hardly depends on it. Freed large blocks
// are sampled from a budget of their own (below; large.cpp).
//
// While the start allowance lasts, a heap keeps no current page (heap.cpp:
// the page a sample's request would have used is put back), so that every
// malloc reaches the slow path and is sampled: a short program, or a
// program's start, has every early block guarded.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "base/bits.h"
#include "size_classes.h"

namespace mapalloc::sample {

constexpr bool kEnabled = MAPALLOC_SECURE;
// A slot's data lies between its first and its last page (guard pages), at
// these offsets in the slot (sample.cpp; slots are aligned to 64 KiB).
constexpr size_t kSlotDataBegin = 4096, kSlotDataEnd = 15 * 4096;
constexpr size_t kMaxSize = kSlotDataEnd - kSlotDataBegin;  // 14 pages
// The option's default: every small request of a process's first this
// many is a sample. Each costs a page fault and a system call or two, and a
// process starting under the shim pays them all. Interleaved here (stop 35):
// `cat` under the shim 1.14 ms with sample=0, 1.16 ms with 8, 1.21 ms with
// 16 (1000 runs each); bench spawn 0.654 / 0.696 / 0.721 s of CPU (9
// rounds). An outside misuse suite's 620 cases, each misusing one of a
// program's first few blocks, were caught alike with 4, 8 and 16.
constexpr int64_t kStartAllowance = 8;
constexpr int64_t kChildAllowance = 4;  // a forked child's, at most
constexpr uint64_t kIntervalMs = 10;
// Large blocks have a budget of their own, in units of 128 KiB (a sample
// zaps its pages, and their next use faults them in again): an eighth of
// the allowance in units, at least kLargeStartUnits (1 MiB of blocks; a
// bigger block never comes from it), then one every 10 ms per unit, at most
// 100 units. With 8 MiB at start, bench large (50 ms) ran 12 % longer than
// without samples.
constexpr size_t kLargeUnit = 128 * 1024;
constexpr int64_t kMaxLargeUnits = 100;
constexpr int64_t kLargeStartUnits = 8;
constexpr int64_t large_start_units(size_t sample) {
  return !sample ? 0 : int64_t(sample / 8) > kLargeStartUnits ? int64_t(sample / 8) : kLargeStartUnits;
}

extern std::atomic<int64_t> allowance, large_allowance;
// Sets the start allowances: `small` requests, and the large blocks' units
// for the option's value (none with guard=0). At start-up, and in a forked
// child (fewer).
void start_allowances(size_t small);

// Whether the start allowance lasts: one relaxed load, for malloc's slow path.
inline bool starting() { return kEnabled && allowance.load(std::memory_order_relaxed) > 0; }
// Whether a request of size bytes with this alignment (16, or an aligned
// request's) can be a sample: its block, ending as near the last guard page
// as its alignment allows, starts above the first (up to 32 KiB alignments).
// A sample is aligned as its request asks, not as its class's blocks are:
// with the class's alignment (its block size's largest power-of-two
// factor), a 40000-byte block ended 5056 bytes short of the guard page, and
// a read past its end went unseen.
inline bool fits(size_t size, size_t alignment) {
  return size <= kMaxSize && align_down(kSlotDataEnd - size, alignment) >= kSlotDataBegin;
}
// Whether the caller may sample now, a small request or a freed large block
// of `bytes`: from the start allowance, else at most once per interval.
bool take_small();
bool take_large(size_t bytes);

// A sampled block of `size` bytes (1 .. kMaxSize) with that alignment
// (fits); nullptr if every slot is live or the kernel refused. `shadow`, the
// block the request would have had otherwise (or nullptr), is held while
// the sample lives: the heap's layout, and its statistics, stay as they
// would be without samples.
void* alloc(size_t size, size_t alignment, void* shadow);
// These abort with a one-line report on misuse: double or invalid free, a
// broken fill below or after the block. `what` names the caller's misuse
// for a pointer that is not a live block's start. free returns the
// sample's shadow, for the caller to free.
void* free(void* p);
size_t usable_size(const void* p, const char* what);
bool live(const void* p);
// Whether p is a live sample's shadow (a scan of the slots: for owns()).
bool holds(const void* p);
// At exit: the fills of live sampled blocks.
void check_at_exit();

void lock_for_fork();
void unlock_for_fork();
void reset_after_fork();

}  // namespace mapalloc::sample
