#include "arena.h"

#include <bit>

#include "base/lock.h"
#include "base/log.h"
#include "options.h"
#include "os/os.h"
#include "pagemap.h"

namespace mapalloc::arena {

static SpinLock lock;
static Chunk* chunks = nullptr;        // guarded by lock
static uint64_t pages_in_use = 0;
static uint64_t last_purge_ms = 0;
static uint64_t dirty_bytes = 0;  // free but possibly resident
// Free pages are purged once their chunk has been idle for ten purge delays
// (300 ms by default), so a program that frees a phase's data and builds the
// next reuses the pages without faults. Beyond kDirtyCap of free resident
// memory the excess goes at once, so a burst of frees cannot hold RSS up for
// long; only down to half of it, so a workload cycling through more than the
// cap does not purge and re-fault everything each time. Measured on bench
// frag: a 64 MiB cap and a 10 ms delay re-faulted twice what glibc faults;
// 512 MiB instead of 256 MiB took its page faults from 338k to 303k at the
// same peak RSS. With that cap, a 300 ms delay (purge_delay_ms=30) against
// 100 ms took them from about 290k to 235k and frag's time from 1.10 to 0.94 s,
// for 1-3% more peak RSS on frag and 1% on realloc.
static constexpr uint64_t kIdleFactor = 10;
static constexpr uint64_t kDirtyCap = 512 * MiB;
static constexpr size_t kGuard = os::kPageSize;

static uint64_t run_mask(unsigned slots) {
  return slots == 64 ? ~uint64_t(0) : ((uint64_t(1) << slots) - 1);
}

// Chunks binned by their longest aligned run of free slots (2^bin slots), so
// a page is found without walking every chunk, from the bin that fits best:
// long runs are kept whole for the classes that need them. Within a bin the
// chunk freed into last comes first (its memory is the likeliest resident).
constexpr int kBins = 7;  // runs of 1..64 slots
static Chunk* bins[kBins];

static int longest_run_log(uint64_t free) {
  // Bits at multiples of 2, 4, ... 64: where aligned runs of that width start.
  static constexpr uint64_t kStarts[] = {0x5555555555555555ull, 0x1111111111111111ull, 0x0101010101010101ull,
                                         0x0001000100010001ull, 0x0000000100000001ull, 0x1ull};
  if (!free) return -1;
  int log = 0;
  for (unsigned width = 1; width < 64; width *= 2) {
    free &= (free >> width) & kStarts[log];  // bit i: the run of 2 * width from i is free
    if (!free) break;
    log++;
  }
  return log;
}

static void unbin(Chunk* c) {
  if (c->bin < 0) return;
  (c->bin_prev ? c->bin_prev->bin_next : bins[c->bin]) = c->bin_next;
  if (c->bin_next) c->bin_next->bin_prev = c->bin_prev;
  c->bin_next = c->bin_prev = nullptr;
  c->bin = -1;
}

// Puts c at the front of the bin its free slots now call for.
static void rebin(Chunk* c) {
  unbin(c);
  int b = longest_run_log(c->free_slots);
  if (b < 0) return;
  c->bin = b;
  c->bin_next = bins[b];
  if (bins[b]) bins[b]->bin_prev = c;
  bins[b] = c;
}

// Maps a chunk-aligned chunk; with guards, a guard page on each side. Where
// the kernel has guard markers, all three are one read-write mapping, the
// guard pages markers: one mapping a chunk. With PROT_NONE guard pages
// (mprotect, where markers are missing or refused: mlockall) a chunk is
// three, and a heap of 16.2 GiB (100000-byte blocks, four mappings a MiB
// with the descriptors) reached vm.max_map_count (65530 mappings by
// default): malloc returned ENOMEM with memory to spare. Reserved PROT_NONE
// first, so that only what is opened is charged (overcommit) or, in a
// locked process, faulted in.
static char* map_chunk() {
  if (!options.guard) return static_cast<char*>(os::map_aligned(kChunkSize, kChunkSize, true));
  size_t total = kChunkSize + 2 * kGuard;
  char* lo = static_cast<char*>(os::map_aligned(total, kChunkSize, false, kGuard));
  if (!lo) return nullptr;
  char* base = lo + kGuard;
  char* hi = base + kChunkSize;
  bool ok;
  if (os::markers_usable() && os::protect_rw(lo, total)) {
    os::Range ends[2] = {{lo, kGuard}, {hi, kGuard}};
    ok = os::guard_each(ends, 2);
  } else {
    ok = os::protect_rw(base, kChunkSize);
  }
  if (!ok) {
    os::unmap(lo, total);
    return nullptr;
  }
  return base;
}

static void unmap_chunk(char* base) {
  if (options.guard) {
    os::unmap(base - kGuard, kChunkSize + 2 * kGuard);
  } else {
    os::unmap(base, kChunkSize);
  }
}

constexpr size_t kDescriptorBytes = align_up(sizeof(Chunk), os::kPageSize);
// A chunk's descriptor goes with it. (Only a free racing with the unmapping
// of its wholly free chunk, a double free, could still be reading it.)
static void unmap_descriptor(Chunk* c) { os::unmap(c, kDescriptorBytes); }

constexpr unsigned kFreshRunSlots = kSmallPageBytes / kSlotSize;
// Bit i set when slot i ends a group, but for the chunk's last slot.
constexpr uint64_t fresh_guard_ends() {
  uint64_t ends = 0;
  for (unsigned i = kFreshRunSlots - 1; i + 1 < kSlotsPerChunk; i += kFreshRunSlots) ends |= uint64_t(1) << i;
  return ends;
}
constexpr uint64_t kFreshGuardEnds = fresh_guard_ends();
static_assert(kFreshGuardEnds == 0x0888888888888888ull);

static Chunk* new_chunk() {
  char* base = map_chunk();
  if (!base) return nullptr;
  // The descriptor in a mapping of its own, away from user data.
  void* mem = os::map(kDescriptorBytes);
  if (!mem) {
    unmap_chunk(base);
    return nullptr;
  }
  Chunk* c = new (mem) Chunk();
  c->base = base;
  c->free_slots = ~uint64_t(0);
  for (unsigned i = 0; i < kSlotsPerChunk; i++) {
    Page& p = c->pages[i];
    p.chunk = c;
    p.slot_index = uint8_t(i);
    p.start = base + i * kSlotSize;
    p.capacity = 0;  // free slots reject every free
    if (!pagemap::set_page(p.start, kSlotSize, &p)) {
      pagemap::set(base, i * kSlotSize, 0);
      unmap_chunk(base);
      unmap_descriptor(c);
      return nullptr;
    }
  }
  // A fresh chunk gets a guard page at the end of every group of
  // kFreshRunSlots slots (but the last, which the chunk's own guard page
  // follows), all in one call: a run of that many slots, the most common
  // (blocks up to 1 KiB), carved at a group has its end guard in place, and
  // one below it (an underflow below its first block faults), with no call
  // of its own; other runs install their end guard or remove the markers
  // inside them (one call). Where the kernel cannot set them in one call,
  // the whole chunk becomes markers instead, as purged slots are, and each
  // run carved there removes them (one call).
  if (options.guard && os::markers_usable()) {
    if (os::guard_pages(base + kSmallPageBytes - kRunGuard, kSmallPageBytes, kSlotsPerChunk / kFreshRunSlots - 1)) {
      c->guard_ends = kFreshGuardEnds;
    } else if (os::guard_marker(base, kChunkSize)) {
      c->purge_marked = ~uint64_t(0);
    } else {
      // Neither (a locked chunk refuses markers): what a short count of the
      // first call left would be unrecorded guard pages inside runs.
      os::unguard_markers(base, kChunkSize);
    }
  }
  c->next = chunks;
  chunks = c;
  rebin(c);
  return c;
}

// Lowest run of `slots` free slots aligned to `slots`, preferring runs that
// are still resident (no page faults), then runs whose guard markers are
// already in place (no call; see arrange_guards). Returns 64 if none.
static unsigned find_run(const Chunk* c, unsigned slots) {
  uint64_t m = run_mask(slots);
  uint64_t ready = uint64_t(1) << (slots - 1);  // the end marker and no other
  unsigned best = 64;
  int best_score = -1;
  for (unsigned i = 0; i < 64; i += slots) {
    if (((c->free_slots >> i) & m) != m) continue;
    uint64_t markers = (c->guard_ends >> i) & m;
    bool in_place = (i + slots < kSlotsPerChunk ? markers == ready : markers == 0) &&  // the chunk's guard ends the last
                    !((c->purge_marked >> i) & m);
    int score = 2 * (((c->dirty_slots >> i) & m) == m) + in_place;
    if (score > best_score) best = i, best_score = score;
    if (score == 3) break;
  }
  return best;
}

static void maybe_purge_locked(uint64_t now);

// Runs end with a guard page (a guard marker in the run's last OS page), so
// that a linear overflow out of a run's last block faults before it reaches
// the next run. Markers stay through purges, so a run reused at the same
// place costs no call; markers left inside a new run by earlier, shorter
// runs are removed (one call), a missing end guard is installed (one call).
// Only with markers: with mprotect every run would be VMAs of its own. Not
// for a run that ends the chunk (the chunk's own guard page follows it), nor
// where the guard would cost more than a quarter of the run's blocks (the
// 512 KiB and 1 MiB classes, used only with a raised mmap_threshold). Not
// again once the kernel refused a marker (a locked mapping, say:
// os::markers_usable).

static_assert(kRunGuard == os::kPageSize);

static bool run_gets_guard(unsigned index, const ClassInfo& info) {
  return info.guarded_capacity && options.guard && os::markers_usable() &&
         index + info.page_slots < kSlotsPerChunk;
}

// A guard page below a run: free's underflow check cannot look below a
// run's first block (the bytes there may be a guard page), so a write
// there must fault. Below the chunk's first slot is the chunk's guard page,
// below a live run its end guard (but for the classes without one); a
// free slot below gets a marker in its last page, which a run taking that
// slot later treats as any other run's end guard (stale unless it ends
// there). Best effort: a refusal (that page locked, say) leaves this guard
// out only, as a purge's does (os::purge_to_guard), where a refused end
// guard turns run guards off for the process (os::guard_marker).
static void guard_below(Chunk* c, unsigned index) {
  if (index == 0 || !options.guard) return;  // (purge_to_guard declines where markers are not usable)
  uint64_t below = uint64_t(1) << (index - 1);
  if (!(c->free_slots & below) || ((c->guard_ends | c->purge_marked) & below)) return;
  if (os::purge_to_guard(c->base + index * kSlotSize - kRunGuard, kRunGuard)) c->guard_ends |= below;
}

// Puts the markers of [index, index + slots) in order for a run with or
// without an end guard. Returns whether the run has its end guard; -1 when
// the kernel refused to remove markers inside the run (which would leave
// part of it inaccessible). Lock held.
static int arrange_guards(Chunk* c, unsigned index, unsigned slots, bool want_guard) {
  uint64_t run = run_mask(slots) << index;
  uint64_t last = uint64_t(1) << (index + slots - 1);
  uint64_t purged = c->purge_marked & run;  // whole slots of markers (purge_chunk)
  uint64_t stale = (c->guard_ends & run & (want_guard ? ~last : ~uint64_t(0))) | purged;
  if (stale) {
    unsigned hi = 63 - unsigned(__builtin_clzll(stale));
    char* from = c->base + index * kSlotSize;
    char* to = c->base + (hi + 1) * kSlotSize;
    // A run ending in a purged slot keeps that slot's last page, a marker
    // already, as its end guard: one call fewer, and no page zapped.
    bool keep_end = want_guard && (purged & last);
    if (keep_end) to -= kRunGuard;
    if (!os::unguard_markers(from, size_t(to - from))) return -1;
    c->guard_ends &= ~stale;
    c->purge_marked &= ~purged;
    if (keep_end) c->guard_ends |= last;
  }
  if (want_guard && !(c->guard_ends & last)) {
    // Refused: the run goes without, as on kernels without markers.
    if (!os::guard_marker(c->base + (index + slots) * kSlotSize - kRunGuard, kRunGuard)) return 0;
    c->guard_ends |= last;
  }
  guard_below(c, index);
  return want_guard;
}

Page* alloc_page(Heap* heap, unsigned size_class) {
  unsigned slots = kClasses[size_class].page_slots;
  Chunk* chosen = nullptr;
  unsigned index = 64;
  {
    LockGuard guard(lock);
    // The best-fitting bin first; in it, the chunk freed into last.
    for (int b = std::countr_zero(slots); b < kBins && !chosen; b++) {
      if ((chosen = bins[b])) index = find_run(chosen, slots);
    }
    const ClassInfo& info = kClasses[size_class];
    int guarded = -1;
    if (chosen) guarded = arrange_guards(chosen, index, slots, run_gets_guard(index, info));
    if (guarded < 0) {
      // No free run, or the kernel would not clear the run's old markers
      // (its bits stay set: they may still be there): a fresh chunk has none.
      chosen = new_chunk();
      if (!chosen) return nullptr;
      index = 0;
      guarded = arrange_guards(chosen, index, slots, run_gets_guard(index, info));
    }
    uint64_t m = run_mask(slots) << index;
    chosen->free_slots &= ~m;
    rebin(chosen);
    dirty_bytes -= uint64_t(count_ones(chosen->dirty_slots & m)) * kSlotSize;
    chosen->dirty_slots &= ~m;
    pages_in_use++;
    // Under the lock, so that the statistics read a consistent page.
    Page* head = &chosen->pages[index];
    head->slot_count = uint8_t(slots);
    head->start = chosen->base + index * kSlotSize;
    page_init(head, heap, size_class);
    if (guarded) head->capacity = info.guarded_capacity;
    maybe_purge_locked(os::now_ms());
  }
  Page* page = &chosen->pages[index];
  // The run's slots are ours alone now: point them at the head descriptor.
  if (slots > 1) pagemap::set_page(page->start, slots * kSlotSize, page);
  return page;
}

// Purges the runs of units set in mask, unit bytes each, from base; with
// to_guard, into guard markers where the kernel takes them (os::purge_to_guard).
// Returns the units so marked; *taken_back gets those whose install was
// refused and took their earlier markers back.
static uint64_t purge_runs(char* base, size_t unit, uint64_t mask, bool to_guard, uint64_t* taken_back) {
  uint64_t marked = 0;
  while (mask) {
    unsigned first = unsigned(__builtin_ctzll(mask));
    uint64_t rest = ~(mask >> first);  // 0 when the run reaches bit 63
    unsigned len = rest ? unsigned(__builtin_ctzll(rest)) : 64 - first;
    bool took_back = false;
    if (to_guard && os::purge_to_guard(base + first * unit, len * unit, &took_back)) {
      marked |= run_mask(len) << first;
    } else {
      if (took_back) *taken_back |= run_mask(len) << first;
      os::purge(base + first * unit, len * unit);
    }
    mask &= ~(run_mask(len) << first);
  }
  return marked;
}

// Free slots are purged into guard markers (with guard=1, where the kernel
// has them): a read or write through a dangling pointer into a block of a
// page that went back to the arena and was purged then faults instead of
// reading zeros or writing unseen. The run that takes such slots again
// removes the markers (arrange_guards: one call, on a run that faults every
// page in anyway).
static void purge_chunk(Chunk* c, uint64_t which) {
  bool to_guard = options.guard;  // (os::purge_to_guard declines where markers are not usable)
  uint64_t taken_back = 0;
  uint64_t marked = purge_runs(c->base, kSlotSize, which, to_guard, &taken_back);
  // A refused install (locked pages) took back every marker of its range
  // (os::purge_to_guard), the end guards of earlier runs too: so that the
  // next run there installs its own, none is counted there.
  c->guard_ends &= ~taken_back;
  c->purge_marked = (c->purge_marked & ~taken_back) | marked;
  dirty_bytes -= uint64_t(count_ones(c->dirty_slots)) * kSlotSize;
  c->dirty_slots = 0;
}

// Purges chunks idle past the delay, then more while over the cap; with
// force, every chunk, and wholly free chunks are unmapped.
static void purge_locked(bool force, uint64_t now) {
  last_purge_ms = now;
  Chunk** link = &chunks;
  while (Chunk* c = *link) {
    bool idle = force || os::ms_since(now, c->last_free_ms) >= kIdleFactor * options.purge_delay_ms;
    if (idle && c->free_slots == ~uint64_t(0)) {
      // A wholly free idle chunk: the address space and the descriptor go
      // back too (the descriptors are near 1 % of the chunk).
      dirty_bytes -= uint64_t(count_ones(c->dirty_slots)) * kSlotSize;
      pagemap::set(c->base, kChunkSize, 0);
      unmap_chunk(c->base);
      unbin(c);
      *link = c->next;
      unmap_descriptor(c);
      continue;
    }
    if (idle && c->dirty_slots) purge_chunk(c, c->dirty_slots);
    link = &c->next;
  }
  for (Chunk* c = chunks; c && dirty_bytes > kDirtyCap / 2; c = c->next) {
    if (c->dirty_slots) purge_chunk(c, c->dirty_slots);
  }
}

static void maybe_purge_locked(uint64_t now) {
  if (os::ms_since(now, last_purge_ms) >= options.purge_delay_ms || dirty_bytes > kDirtyCap) purge_locked(false, now);
}

void free_page(Page* page) {
  Chunk* c = page->chunk;
  unsigned slots = page->slot_count;
  unsigned index = page->slot_index;
  if (slots > 1) {
    for (unsigned i = 1; i < slots; i++) pagemap::set_page(c->pages[index + i].start, kSlotSize, &c->pages[index + i]);
  }
  uint64_t now = os::now_ms();
  LockGuard guard(lock);
  page->capacity = 0;  // from now on every free of a block here is invalid
  __atomic_store_n(&page->carved, 0, __ATOMIC_RELAXED);  // and no block here is live
  page->heap.store(nullptr, std::memory_order_relaxed);
  uint64_t m = run_mask(slots) << index;
  c->free_slots |= m;
  c->dirty_slots |= m;
  rebin(c);
  dirty_bytes += uint64_t(slots) * kSlotSize;
  c->last_free_ms = now;
  pages_in_use--;
  // Purge idle pages now and then; never on the fast path.
  maybe_purge_locked(now);
}

void purge(bool force) {
  uint64_t now = os::now_ms();
  LockGuard guard(lock);
  purge_locked(force, now);
}

Usage usage() {
  LockGuard guard(lock);
  Usage u{};
  u.pages_in_use = pages_in_use;
  for (Chunk* c = chunks; c; c = c->next) {
    u.chunks++;
    unsigned free_count = unsigned(count_ones(c->free_slots));
    unsigned dirty_count = unsigned(count_ones(c->dirty_slots));
    u.slots_in_use += 64 - free_count;
    u.dirty_free_bytes += dirty_count * kSlotSize;
    u.clean_free_bytes += (free_count - dirty_count) * kSlotSize;
  }
  u.mapped_bytes = u.chunks * (kChunkSize + (options.guard ? 2 * kGuard : 0));
  return u;
}

void visit_pages(void (*visit)(const Page*, void*), void* ctx) {
  LockGuard guard(lock);
  for (Chunk* c = chunks; c; c = c->next) {
    for (unsigned i = 0; i < kSlotsPerChunk; i++) {
      const Page& p = c->pages[i];
      if (p.capacity && !((c->free_slots >> i) & 1)) visit(&p, ctx);
    }
  }
}

void lock_for_fork() { lock.lock(); }
void unlock_for_fork() { lock.unlock(); }
void reset_after_fork() { lock.reset_after_fork(); }

}  // namespace mapalloc::arena
