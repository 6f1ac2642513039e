#include "zero.h"

#include <cstdint>

#include "base/bits.h"
#include "base/lock.h"
#include "base/log.h"
#include "os/os.h"
#include "pagemap.h"

namespace mapalloc::zero {

constexpr size_t kSlots = size_t(1) << 24;  // 16 Mi blocks
constexpr size_t kRegion = kSlots * 16;      // 256 MiB of address space

static SpinLock lock;
// All guarded by lock. The bookkeeping is mapped lazily: pages are touched
// only as blocks are used.
static char* region = nullptr;
static uint64_t* live_bits = nullptr;  // bit i: slot i handed out
static uint32_t* free_stack = nullptr;
static size_t free_count = 0;
static size_t bump = 0;

// The region and its bookkeeping, all or nothing: a refusal (address space
// or memory short) gives back what was mapped, and the next malloc(0) tries
// again; until then malloc(0) gets an ordinary block (heap.cpp).
static bool setup() {
  // Aligned to page-map slots, so that no other mapping shares a slot with
  // it (whose entry the region's would overwrite, or take over).
  char* r = static_cast<char*>(os::map_aligned(kRegion, kSlotSize, false));
  live_bits = static_cast<uint64_t*>(os::map(kSlots / 8));
  free_stack = static_cast<uint32_t*>(os::map(kSlots * sizeof(uint32_t)));
  if (r && live_bits && free_stack && pagemap::set(r, kRegion, pagemap::kZeroEntry)) {
    region = r;
    return true;
  }
  if (r) {
    pagemap::set(r, kRegion, 0);  // entries set before a leaf was refused
    os::unmap(r, kRegion);
  }
  if (live_bits) os::unmap(live_bits, kSlots / 8);
  if (free_stack) os::unmap(free_stack, kSlots * sizeof(uint32_t));
  live_bits = nullptr;
  free_stack = nullptr;
  return false;
}

void* alloc() {
  LockGuard guard(lock);
  if (!region && !setup()) return nullptr;
  size_t i;
  if (free_count) {
    i = free_stack[--free_count];
  } else if (bump < kSlots) {
    i = bump++;
  } else {
    return nullptr;
  }
  live_bits[i / 64] |= uint64_t(1) << (i % 64);
  return region + i * 16;
}

// The slot index of p, or kSlots if p is not a slot start.
static size_t slot_of(const void* p) {
  uintptr_t off = reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(region);
  if (!region || off >= kRegion || off % 16) return kSlots;
  return off / 16;
}

void free(void* p) {
  LockGuard guard(lock);
  size_t i = slot_of(p);
  if (i == kSlots || i >= bump) fatal("invalid free (pointer not allocated by mapalloc):", p);
  uint64_t bit = uint64_t(1) << (i % 64);
  if (!(live_bits[i / 64] & bit)) fatal("double free of zero-size block", p);
  live_bits[i / 64] &= ~bit;
  free_stack[free_count++] = uint32_t(i);
}

bool live(const void* p) {
  LockGuard guard(lock);
  size_t i = slot_of(p);
  return i < bump && (live_bits[i / 64] >> (i % 64) & 1);
}

void lock_for_fork() { lock.lock(); }
void unlock_for_fork() { lock.unlock(); }
void reset_after_fork() { lock.reset_after_fork(); }

}  // namespace mapalloc::zero
