#include "zero.h"

#include <algorithm>
#include <cstdint>

#include "base/bits.h"
#include "base/lock.h"
#include "base/log.h"
#include "os/os.h"
#include "pagemap.h"

namespace mapalloc::zero {

constexpr size_t kSlots = size_t(1) << 24;  // 16 Mi blocks in all
// The region is mapped a block at a time, as it fills: one reservation of
// 256 MiB (and 66 MiB of bookkeeping) ran a program that called malloc(0)
// out of address space under `ulimit -v` far sooner than glibc.
constexpr size_t kBlockSlots = size_t(1) << 16;  // 1 MiB of address space
constexpr size_t kBlocks = kSlots / kBlockSlots;
constexpr size_t kBlockBytes = kBlockSlots * 16;

// A block's bookkeeping, mapped with it and touched only as slots are used.
struct Books {
  uint64_t live_bits[kBlockSlots / 64];  // bit i: slot i handed out
  uint16_t free_stack[kBlockSlots];
};
static_assert(kBlockSlots - 1 <= UINT16_MAX);
struct Block {
  char* base;
  Books* books;
  uint32_t free_count;
  uint32_t bump;  // slots below it have been handed out
};

static SpinLock lock;
// All guarded by lock.
static Block blocks[kBlocks];  // the mapped ones, lowest base first
static size_t mapped_blocks = 0;
static size_t first_with_room = 0;  // no block below it has a free slot

// Maps another block, all or nothing: a refusal (address space or memory
// short) gives back what was mapped, and the next malloc(0) tries again;
// until then malloc(0) gets an ordinary block (heap.cpp). Called when every
// block is full: the new one becomes first_with_room.
static bool map_block() {
  if (mapped_blocks == kBlocks) return false;
  // Aligned to page-map slots, so that no other mapping shares a slot with
  // it (whose entry the block's would overwrite, or take over).
  char* base = static_cast<char*>(os::map_aligned(kBlockBytes, kSlotSize, false));
  if (!base) return false;
  Books* books = static_cast<Books*>(os::map(sizeof(Books)));
  if (books && pagemap::set(base, kBlockBytes, pagemap::kZeroEntry)) {
    size_t k = mapped_blocks++;
    for (; k && reinterpret_cast<uintptr_t>(blocks[k - 1].base) > reinterpret_cast<uintptr_t>(base); k--)
      blocks[k] = blocks[k - 1];
    blocks[k] = Block{base, books, 0, 0};
    first_with_room = k;
    return true;
  }
  pagemap::set(base, kBlockBytes, 0);  // entries set before a leaf was refused
  os::unmap(base, kBlockBytes);
  if (books) os::unmap(books, sizeof(Books));
  return false;
}

static bool has_room(const Block& b) { return b.free_count || b.bump < kBlockSlots; }

void* alloc() {
  LockGuard guard(lock);
  while (first_with_room < mapped_blocks && !has_room(blocks[first_with_room])) first_with_room++;
  if (first_with_room == mapped_blocks && !map_block()) return nullptr;
  Block& b = blocks[first_with_room];
  size_t i = b.free_count ? b.books->free_stack[--b.free_count] : b.bump++;
  b.books->live_bits[i / 64] |= uint64_t(1) << (i % 64);
  return b.base + i * 16;
}

// The block and slot of p, or false if p is not a handed-out slot's start.
// (A binary search: freeing 16 Mi blocks took 2.0 s walking the blocks,
// 0.23 s so, and 0.11 s when they were one region.)
static bool find(const void* p, Block** block, size_t* slot) {
  size_t lo = 0, hi = mapped_blocks;  // the block is below hi, if any
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (reinterpret_cast<uintptr_t>(blocks[mid].base) <= reinterpret_cast<uintptr_t>(p)) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  if (lo == 0) return false;
  Block* b = &blocks[lo - 1];
  uintptr_t off = reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(b->base);
  if (off >= kBlockBytes || off % 16 || off / 16 >= b->bump) return false;
  *block = b;
  *slot = off / 16;
  return true;
}

void free(void* p) {
  LockGuard guard(lock);
  Block* b;
  size_t i;
  if (!find(p, &b, &i)) fatal("invalid free (pointer not allocated by mapalloc):", p);
  uint64_t bit = uint64_t(1) << (i % 64);
  if (!(b->books->live_bits[i / 64] & bit)) fatal("double free of zero-size block", p);
  b->books->live_bits[i / 64] &= ~bit;
  b->books->free_stack[b->free_count++] = uint16_t(i);
  first_with_room = std::min(first_with_room, size_t(b - blocks));
}

bool live(const void* p) {
  LockGuard guard(lock);
  Block* b;
  size_t i;
  return find(p, &b, &i) && (b->books->live_bits[i / 64] >> (i % 64) & 1);
}

void lock_for_fork() { lock.lock(); }
void unlock_for_fork() { lock.unlock(); }
void reset_after_fork() { lock.reset_after_fork(); }

}  // namespace mapalloc::zero
