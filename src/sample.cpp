#include "sample.h"

#include <algorithm>

#include "base/bits.h"
#include "base/lock.h"
#include "base/log.h"
#include "options.h"
#include "os/os.h"
#include "page.h"
#include "pagemap.h"

namespace mapalloc::sample {

constexpr size_t kPage = os::kPageSize;
// A slot is four page-map slots: up to 14 read-write pages that end where
// its last page begins; its first and last pages are always guard pages.
constexpr size_t kSlotBytes = 4 * kSlotSize;
constexpr unsigned kSlots = 256;
// The region is mapped a block of slots at a time, as slots are first used:
// all 16 MiB at once was most of what a short process maps beyond glibc, and
// ran it out of address space sooner under `ulimit -v`.
constexpr unsigned kBlockSlots = 16;  // 1 MiB
constexpr unsigned kBlocks = kSlots / kBlockSlots;
constexpr size_t kBlockBytes = kBlockSlots * kSlotBytes;
// The region's pages become guard pages a chunk of slots at a time, as slots
// are first used: all at once (4096 markers) took 96 us, as long as 30
// samples, a cost every short process that samples would pay. A chunk is as
// many slots as the start allowance has samples left, within these bounds:
// the kernel's time goes by the range (about 0.45 us each, one per slot) more
// than by the page, and a forked child, with 4 samples, would otherwise pay
// for 16 slots (12 to 16 us) before it execs (a shell's pipeline does).
constexpr unsigned kMinChunkSlots = 4, kMaxChunkSlots = 16;
constexpr unsigned char kFill = 0xCB;  // around the block, checked on free and at exit

std::atomic<int64_t> allowance{kStartAllowance};
std::atomic<int64_t> large_allowance{large_start_units(kStartAllowance)};
static std::atomic<uint64_t> next_small_due_ms{0}, next_large_due_ms{0};

enum class State : uint8_t { kUnused, kLive, kFreed };
struct Slot {
  uint32_t offset;  // of the block in its slot
  uint32_t size;    // requested bytes
  uint8_t pages;    // read-write pages while live
  State state;
  void* shadow;     // see alloc
};

static SpinLock lock;
// All guarded by lock.
static char* blocks[kBlocks];
static unsigned mapped_blocks = 0;
static Slot slots[kSlots];
static unsigned fresh = 0;    // slots below this have been used
static unsigned guarded = 0;  // slots below this are guard pages but where live
static bool preopened = false;  // slots in [fresh, guarded) have their last data page open
// Freed slots, oldest first: reused oldest first, so that a freed block's
// pages stay guard pages as long as the ring allows.
static uint32_t freed_ring[kSlots];
static unsigned freed_head = 0, freed_count = 0;

void start_allowances(size_t small) {
  allowance.store(options.guard ? int64_t(small) : 0, std::memory_order_relaxed);
  large_allowance.store(options.guard ? large_start_units(options.sample) : 0, std::memory_order_relaxed);
}

// Takes `units` from a start allowance (never below 0), else waits for its
// next due time, which a sample moves `units` intervals on.
static bool take(std::atomic<int64_t>& start, std::atomic<uint64_t>& next_due, int64_t units) {
  // (start_allowances sets the start allowances to 0 in these cases.)
  if (!kEnabled || !options.sample || !options.guard) return false;
  int64_t left = start.load(std::memory_order_relaxed);
  while (left >= units)
    if (start.compare_exchange_weak(left, left - units, std::memory_order_relaxed)) return true;
  uint64_t now = os::now_ms();
  uint64_t due = next_due.load(std::memory_order_relaxed);
  return now >= due && next_due.compare_exchange_strong(due, now + uint64_t(units) * kIntervalMs, std::memory_order_relaxed);
}

bool take_small() { return take(allowance, next_small_due_ms, 1); }

bool take_large(size_t bytes) {
  size_t units = bytes / kLargeUnit;
  return take(large_allowance, next_large_due_ms, units < 1 ? 1 : units < kMaxLargeUnits ? int64_t(units) : kMaxLargeUnits);
}

// Maps the block of slot first (the first of a block) if it is not yet.
static bool map_block(unsigned first) {
  unsigned b = first / kBlockSlots;
  if (b < mapped_blocks) return true;
  // Aligned to its slots, so that no other mapping shares a page-map slot
  // with it (whose entry the block's would overwrite, or take over). Its
  // page-map entries are set a chunk of slots at a time (guard_chunk). A
  // refusal only skips this sample: sampling is best effort.
  blocks[b] = static_cast<char*>(os::map_aligned(kBlockBytes, kSlotBytes, true));
  if (!blocks[b]) return false;
  mapped_blocks = b + 1;
  return true;
}

static char* slot_base(unsigned i) { return blocks[i / kBlockSlots] + size_t(i % kBlockSlots) * kSlotBytes; }
static_assert(kSlotDataBegin == kPage && kSlotDataEnd == kSlotBytes - kPage);
static char* data_end(unsigned i) { return slot_base(i) + kSlotDataEnd; }
static char* block_of(unsigned i) { return slot_base(i) + slots[i].offset; }
static char* data_begin(unsigned i) { return data_end(i) - size_t(slots[i].pages) * kPage; }

static bool holds_fill(const char* from, const char* to) { return holds_byte(from, to, kFill); }

// Reports a broken fill below or after slot i's live block.
static void check_fills(unsigned i) {
  char* p = block_of(i);
  if (!holds_fill(p + slots[i].size, data_end(i))) fatal("heap overflow: canary after the end of block broken, block", p);
  if (!holds_fill(data_begin(i), p)) fatal("heap underflow (or overflow of the block before it) at block", p);
}

static_assert(kMaxChunkSlots <= kBlockSlots);

// Makes n slots from first guard pages. Where the kernel takes it in one
// call (os::guard_ranges), each slot's last data page stays open: a sample
// of up to a page there (most are) costs no call at malloc: a call fewer
// per slot. True if so.
static bool guard_chunk(unsigned first, unsigned n, bool* open) {
  size_t bytes = n * kSlotBytes;
  // (Entries set for slots that then fail stay: a pointer into an unused
  // slot is reported as an invalid free, as outside the chunk.)
  if (!pagemap::set(slot_base(first), bytes, pagemap::kSampleEntry)) return false;
  os::Range ranges[kMaxChunkSlots + 1];
  ranges[0] = {slot_base(first), kSlotBytes - 2 * kPage};
  for (unsigned k = 0; k < n; k++) {
    // A slot's trailing guard page and, but for the last, the next slot's
    // pages up to its last data page.
    bool last = k + 1 == n;
    ranges[k + 1] = {data_end(first + k), last ? kPage : kSlotBytes - kPage};
  }
  *open = os::guard_markers() && os::guard_ranges(ranges, n + 1);
  if (*open || os::guard(slot_base(first), bytes)) return true;
  // Neither: markers a short count left on the pages a later call would
  // leave open must go.
  if (os::guard_markers()) os::unguard_markers(slot_base(first), bytes);
  return false;
}

// Guards the next chunk of slots, from `guarded`: `wanted` of them, within
// kMinChunkSlots..kMaxChunkSlots and never past their block. Slots guarded
// before and still fresh keep their last data page as it was, so preopened
// stays true only if both sets have it open: where one has it and the other
// not, alloc's unguard of that page is a call that changes nothing, never a
// page left closed.
static bool guard_next_chunk(int64_t wanted) {
  unsigned first = guarded;
  unsigned n = unsigned(std::clamp<int64_t>(wanted, kMinChunkSlots, kMaxChunkSlots));
  n = std::min(n, kBlockSlots - first % kBlockSlots);
  bool open = false;
  if (!map_block(first) || !guard_chunk(first, n, &open)) return false;
  preopened = guarded == fresh ? open : preopened && open;
  guarded += n;
  return true;
}

void* alloc(size_t size, size_t alignment, void* shadow) {
  if (size == 0 || !fits(size, alignment)) return nullptr;
  LockGuard guard(lock);
  unsigned i;
  bool page_open = false;  // the slot's last data page
  if (fresh < kSlots) {
    i = fresh;
    // As many as the start allowance has samples left (this one's is taken).
    if (i == guarded && !guard_next_chunk(allowance.load(std::memory_order_relaxed) + 1)) return nullptr;
    page_open = preopened;
  } else if (freed_count) {
    i = freed_ring[freed_head];
  } else {
    return nullptr;  // every slot is live
  }
  char* end = data_end(i);
  char* p = reinterpret_cast<char*>(align_down(reinterpret_cast<uintptr_t>(end - size), alignment));
  char* begin = reinterpret_cast<char*>(align_down(reinterpret_cast<uintptr_t>(p), kPage));
  char* closed_end = page_open ? end - kPage : end;
  if (begin < closed_end && !os::unguard(begin, size_t(closed_end - begin))) {
    os::guard(begin, size_t(closed_end - begin));  // whatever part it opened
    return nullptr;
  }
  if (i == fresh) {
    fresh++;
  } else {
    freed_head = (freed_head + 1) % kSlots;
    freed_count--;
  }
  slots[i] = Slot{uint32_t(p - slot_base(i)), uint32_t(size), uint8_t((end - begin) / kPage), State::kLive, shadow};
  __builtin_memset(begin, kFill, size_t(p - begin));
  __builtin_memset(p + size, kFill, size_t(end - (p + size)));
  return p;
}

// The slot whose block (live or freed) starts at p, or kSlots. Lock held.
static unsigned slot_of(const void* p) {
  for (unsigned b = 0; b < mapped_blocks; b++) {
    uintptr_t off = reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(blocks[b]);
    if (off >= kBlockBytes) continue;
    unsigned i = b * kBlockSlots + unsigned(off / kSlotBytes);
    if (slots[i].state == State::kUnused || off % kSlotBytes != slots[i].offset) return kSlots;
    return i;
  }
  return kSlots;
}

// The slot of the live block at p, or a report: `what` for a pointer that is
// no block's start, `freed_what` for a freed block's.
static unsigned checked_slot(const void* p, const char* what, const char* freed_what) {
  unsigned i = slot_of(p);
  if (i == kSlots) fatal(what, p);
  if (slots[i].state == State::kFreed) fatal(freed_what, p);
  return i;
}

void* free(void* p) {
  LockGuard guard(lock);
  unsigned i = checked_slot(p, "invalid free (pointer not allocated by mapalloc):", "double free of");
  check_fills(i);
  char* begin = data_begin(i);
  size_t bytes = size_t(data_end(i) - begin);
  os::purge_and_close(begin, bytes);  // guard pages from now on
  slots[i].state = State::kFreed;
  freed_ring[(freed_head + freed_count) % kSlots] = i;
  freed_count++;
  return slots[i].shadow;
}

size_t usable_size(const void* p, const char* what) {
  LockGuard guard(lock);
  unsigned i = checked_slot(p, what, "use of freed block");
  check_fills(i);
  return slots[i].size;
}

bool live(const void* p) {
  LockGuard guard(lock);
  unsigned i = slot_of(p);
  return i < kSlots && slots[i].state == State::kLive;
}

bool holds(const void* p) {
  if (!kEnabled) return false;
  LockGuard guard(lock);
  for (unsigned i = 0; i < fresh; i++)
    if (slots[i].state == State::kLive && slots[i].shadow == p) return true;
  return false;
}

void check_at_exit() {
  if (!lock.try_lock_for_ms(1000)) return;
  for (unsigned i = 0; i < fresh; i++)
    if (slots[i].state == State::kLive) check_fills(i);
  lock.unlock();
}

// Before a fork, in the parent: slots guarded ahead for a child's samples
// (its allowance, and one for the interval), so that the child, which
// starts its sampling over (reset_after_fork), finds them guarded in the
// copy of the address space it gets. Else each child whose parent had used
// up its guarded slots made the same guard_chunk call, one or two per child
// of bench forkexit (about 60 markers each). The parent pays a call when its
// own samples have used up what it guarded ahead.
static void guard_ahead_for_child() {
  unsigned want = unsigned(kChildAllowance) + 1;
  if (!kEnabled || !options.sample || !options.guard || guarded >= kSlots || guarded - fresh >= want) return;
  guard_next_chunk(want - (guarded - fresh));
}

void lock_for_fork() {
  lock.lock();
  guard_ahead_for_child();
}
void unlock_for_fork() { lock.unlock(); }
void reset_after_fork() {
  lock.reset_after_fork();
  // A forked child starts its sampling over, with fewer: a test harness that
  // runs each case in a forked child gets each case's first blocks guarded,
  // whatever the parent used up, and a shell's subshells pay little (bash,
  // 300 `$(echo)`: 0.174 s without a refill, 0.215 s with 16 samples per
  // child, within noise with 4).
  start_allowances(options.sample < size_t(kChildAllowance) ? options.sample : size_t(kChildAllowance));
}

}  // namespace mapalloc::sample
