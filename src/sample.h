// Layer 4: guarded samples. A few small blocks, picked by a time budget, get
// pages of their own in a region where every other page is a guard page: the
// block ends where a guard page begins (up to its alignment), and when it is
// freed its pages become guard pages too. So for a sampled block an overflow
// past its end, and any read or write after free, faults at the faulting
// instruction, which no check on the arena's blocks can do for reads and for
// writes into the middle of a freed block. The pages change with a syscall
// at each malloc and free (a few microseconds), so only a budget's worth of
// blocks are sampled: every small request (up to 56 KiB) of the first
// kStartAllowance, then one at most every kIntervalMs at a malloc slow path.
// Freed large blocks are sampled from the same budget (large.cpp).
//
// While the start allowance lasts, a heap installs no page (heap.cpp), so
// that every malloc reaches the slow path and is sampled: a short program,
// or a program's start, has every early block guarded.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "size_classes.h"

namespace mapalloc::sample {

constexpr bool kEnabled = MAPALLOC_SECURE;
constexpr size_t kMaxSize = 14 * 4096;  // a slot's read-write pages at most
// Budget units: a small sample costs 1 (it changes one page or a few); a
// large block's costs one per 128 KiB, as it zaps and later faults again every page.
constexpr int64_t kStartAllowance = 64;
constexpr uint64_t kIntervalMs = 10;

extern std::atomic<int64_t> allowance;

// Whether the start allowance lasts: one relaxed load, for malloc's slow path.
inline bool starting() { return kEnabled && allowance.load(std::memory_order_relaxed) > 0; }
// Takes `units` from the budget: true if the caller may sample now.
bool take(uint64_t units);

// A sampled block of `size` bytes (1 .. kMaxSize) aligned as a block of
// `block_size` bytes is (its largest power-of-two factor, up to a page);
// nullptr if every slot is live or the kernel refused.
void* alloc(size_t size, size_t block_size);
// These abort with a one-line report on misuse: double or invalid free, a
// broken fill below or after the block. `what` names the caller's misuse
// for a pointer that is not a live block's start.
void free(void* p);
size_t usable_size(const void* p, const char* what);
bool live(const void* p);
// At exit: the fills of live sampled blocks.
void check_at_exit();

struct Usage {
  uint64_t taken, live;
};
Usage usage();

void lock_for_fork();
void unlock_for_fork();
void reset_after_fork();

}  // namespace mapalloc::sample
