#include "arena.h"

#include <sys/resource.h>

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

// Chunks are opened side by side in regions: one PROT_NONE reservation of
// up to kRegionChunks chunks above a PROT_NONE floor page, a chunk opened by
// making it read-write (one call) and closed by making it PROT_NONE again.
// With guards, a chunk's last page is a guard page for as long as it is
// open (a marker, or PROT_NONE where markers are missing or refused), so the
// chunk above, or the rest of the reservation, is out of reach of an
// overflow; below a region's first chunk is its floor page, below any other
// chunk the last page of the one below, open or closed. Open chunks next to
// each other are one mapping: a chunk between guard pages of its own (the
// layout before) was one, and could not sit next to another as chunks are
// aligned to their size. So a heap of N MiB was N mappings; a program with
// 60 GiB of arena reached vm.max_map_count, and a fork copied the page
// tables of each chunk's own 2 MiB of address space (bench forkexit: 4-6 %
// of its time). A region also saves the calls that aligned each chunk's
// mapping, and holds its chunks' descriptors in one mapping of their own,
// away from user data.
constexpr unsigned kRegionChunks = 64;
constexpr size_t kDescriptorBytes = align_up(sizeof(Chunk), os::kPageSize);

struct Region {
  char* base = nullptr;  // chunk i at base + i * kChunkSize, the floor page below
  unsigned count = 0;    // chunks it has room for
  uint64_t open = 0;     // bit i: chunk i is open
  // Links of the list of regions with a closed place (roomy), which a full
  // region leaves: a new chunk takes the first, without a walk past full
  // ones (one cache miss each: a heap of 40 GiB has 640 regions).
  Region* next = nullptr;
  Region* prev = nullptr;
  bool full() const { return open == run_mask(count); }
  Chunk* descriptor(unsigned i) {
    return reinterpret_cast<Chunk*>(reinterpret_cast<char*>(this) + kHeaderBytes + i * kDescriptorBytes);
  }
  // The two mappings of a region of `chunks` chunks: its reservation (floor
  // page included) and its header with the descriptors.
  static constexpr size_t reserved_bytes(unsigned chunks) { return chunks * kChunkSize + kGuard; }
  static constexpr size_t meta_bytes(unsigned chunks) { return kHeaderBytes + chunks * kDescriptorBytes; }
  static constexpr size_t kHeaderBytes = os::kPageSize;
};
static_assert(sizeof(Region) <= Region::kHeaderBytes);
static Region* roomy = nullptr;   // guarded by lock
static unsigned open_chunks = 0;  // guarded by lock

static void list_roomy(Region* r) {
  r->prev = nullptr;
  r->next = roomy;
  if (roomy) roomy->prev = r;
  roomy = r;
}

static void unlist_roomy(Region* r) {
  (r->prev ? r->prev->next : roomy) = r->next;
  if (r->next) r->next->prev = r->prev;
  r->next = r->prev = nullptr;
}

// A new region for as many chunks as are open now (at least one, at most
// kRegionChunks), so that the address space held ahead of the heap grows
// with it: a small program reserves one chunk, as before regions, and a
// big one 64 MiB at a time. Under a finite RLIMIT_AS, no more than a 16th
// of the room left below it, as the closed places of a region that a few
// live blocks keep count against the limit (with 64-chunk regions, a 300
// MiB request failed under a 400 MiB limit with four small blocks live).
// Smaller when the kernel refuses (RLIMIT_MEMLOCK counts PROT_NONE
// reservations after mlockall(MCL_FUTURE)).
static unsigned region_chunks_wanted() {
  unsigned count = open_chunks ? std::bit_ceil(open_chunks) : 1;
  if (count > kRegionChunks) count = kRegionChunks;
  rlimit as;
  if (getrlimit(RLIMIT_AS, &as) != 0 || as.rlim_cur == RLIM_INFINITY) return count;
  uint64_t used = os::address_space_bytes();
  uint64_t share = as.rlim_cur > used ? (as.rlim_cur - used) / 16 / kChunkSize : 0;
  while (count > 1 && count > share) count /= 2;
  return count;
}

static Region* new_region() {
  for (unsigned count = region_chunks_wanted(); count; count /= 2) {
    size_t reserved = Region::reserved_bytes(count);
    char* floor = static_cast<char*>(os::map_aligned(reserved, kChunkSize, false, kGuard));
    if (!floor) continue;
    void* meta = os::map(Region::meta_bytes(count));
    if (!meta) {
      os::unmap(floor, reserved);
      continue;
    }
    Region* r = new (meta) Region();
    r->base = floor + kGuard;
    r->count = count;
    list_roomy(r);
    return r;
  }
  return nullptr;
}

// Unmaps a region with no chunk open (so on the roomy list).
static void release_region(Region* r) {
  unlist_roomy(r);
  os::unmap(r->base - kGuard, Region::reserved_bytes(r->count));
  // (Only a free racing with the closing of its wholly free chunk, a double
  // free, could still be reading a descriptor.)
  os::unmap(r, Region::meta_bytes(r->count));
}

constexpr unsigned kFreshRunSlots = kSmallPageBytes / kSlotSize;
// Bit i set when slot i ends a group of kFreshRunSlots (the last, 63, ends the chunk).
constexpr uint64_t fresh_guard_ends() {
  uint64_t ends = 0;
  for (unsigned i = kFreshRunSlots - 1; i < kSlotsPerChunk; i += kFreshRunSlots) ends |= uint64_t(1) << i;
  return ends;
}
constexpr uint64_t kFreshGuardEnds = fresh_guard_ends();
static_assert(kFreshGuardEnds == 0x8888888888888888ull);
constexpr uint64_t kTopSlot = uint64_t(1) << (kSlotsPerChunk - 1);

// The guard pages of a chunk just opened. Its last page, the chunk's guard;
// with markers, a guard page at the end of every group of kFreshRunSlots
// slots, all in one call: a run of that many slots, the most common (blocks
// up to 1 KiB), carved at a group has its end guard in place, and one below
// it (an underflow below its first block faults), with no call of its own;
// other runs install their end guard or remove the markers inside them (one
// call). Where the kernel cannot set them in one call, the whole chunk
// becomes markers instead, as purged slots are, and each run carved there
// removes them (one call) but for the last page.
static bool guard_new_chunk(Chunk* c) {
  char* top = c->base + kChunkSize - kGuard;
  if (os::markers_usable()) {
    if (os::guard_pages(c->base + kSmallPageBytes - kRunGuard, kSmallPageBytes, kSlotsPerChunk / kFreshRunSlots)) {
      c->guard_ends = kFreshGuardEnds;
      return true;
    }
    if (os::guard_marker(c->base, kChunkSize)) {
      c->purge_marked = ~uint64_t(0);
      c->guard_ends = kTopSlot;
      return true;
    }
    // Neither (a locked chunk refuses markers): what a short count of the
    // first call left would be unrecorded guard pages inside runs.
    if (!os::unguard_markers(c->base, kChunkSize)) return false;
  }
  if (!os::guard(top, kGuard)) return false;
  c->guard_ends = kTopSlot;
  return true;
}

// Closes an open chunk: its memory, markers and page map entries go; its
// place stays reserved, PROT_NONE (a guard page for the chunk above). A
// region with no chunk open goes back whole. False, the chunk still open,
// when the kernel refuses (a chunk between two open ones splits a mapping
// in three: refused at vm.max_map_count).
static bool close_chunk(Chunk* c) {
  if (!os::decommit(c->base, kChunkSize)) return false;
  Region* r = c->region;
  unsigned i = unsigned((c->base - r->base) / kChunkSize);
  pagemap::set(c->base, kChunkSize, 0);
  if (r->full()) list_roomy(r);  // it has room now
  r->open &= ~(uint64_t(1) << i);
  open_chunks--;
  if (r->open) {
    os::purge(c, kDescriptorBytes);
  } else {
    release_region(r);
  }
  return true;
}

// Opens a chunk, in the first region with room (its lowest closed place,
// next to its open ones), else in a new region.
static Chunk* new_chunk() {
  Region* r = roomy;
  if (!r && !(r = new_region())) return nullptr;
  unsigned i = unsigned(__builtin_ctzll(~r->open));
  char* base = r->base + i * kChunkSize;
  if (!os::protect_rw(base, kChunkSize)) {  // refused by the overcommit check
    if (!r->open) release_region(r);
    return nullptr;
  }
  Chunk* c = new (r->descriptor(i)) Chunk();
  c->base = base;
  c->region = r;
  c->free_slots = ~uint64_t(0);
  r->open |= uint64_t(1) << i;
  open_chunks++;
  if (r->full()) unlist_roomy(r);
  bool ok = !options.guard || guard_new_chunk(c);
  for (unsigned k = 0; ok && k < kSlotsPerChunk; k++) {
    Page& p = c->pages[k];
    p.chunk = c;
    p.slot_index = uint8_t(k);
    p.start = base + k * kSlotSize;
    p.capacity = 0;  // free slots reject every free
    ok = pagemap::set_page(p.start, kSlotSize, &p);
  }
  if (!ok) {
    // (Should the kernel refuse the close too, the place stays open,
    // unused: its page map entries reject every free.)
    close_chunk(c);
    return nullptr;
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
    bool in_place = markers == ready && !((c->purge_marked >> i) & m);
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
// Only with markers: with mprotect every run would be VMAs of its own. A
// run that ends the chunk has the chunk's own guard page as its last page,
// always (the 512 KiB class, used only with a raised mmap_threshold, keeps
// one block of its two: its runs are whole chunks); other runs not where
// the guard would cost more than a quarter of their blocks, nor once the
// kernel refused a marker (a locked mapping, say: os::markers_usable).

static_assert(kRunGuard == os::kPageSize);

static bool run_gets_guard(unsigned index, const ClassInfo& info) {
  if (!options.guard) return false;
  if (index + info.page_slots == kSlotsPerChunk) return true;  // the chunk's own
  return info.guard_always_worth() && os::markers_usable();
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
  // (A run that ends the chunk always wants its guard, the chunk's own:
  // that page is never cleared here.)
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
  // That took the chunk's own guard page too, if its last slot was in the
  // range: back at once (mprotect, where the marker is refused).
  if ((taken_back & kTopSlot) && os::guard(c->base + kChunkSize - kGuard, kGuard)) c->guard_ends |= kTopSlot;
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
      // A wholly free idle chunk: closed, its descriptor's pages released
      // too (the descriptors are near 1 % of the chunk). Read before: the
      // close releases (or unmaps) the descriptor.
      Chunk* next = c->next;
      uint64_t dirty = uint64_t(count_ones(c->dirty_slots)) * kSlotSize;
      unbin(c);
      if (close_chunk(c)) {
        dirty_bytes -= dirty;
        *link = next;
        continue;
      }
      rebin(c);
      // Refused: tried again once idle again, not at every purge meanwhile
      // (its free slots are purged below all the same).
      c->last_free_ms = now;
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
    u.slots_in_use += kSlotsPerChunk - unsigned(count_ones(c->free_slots));
    u.dirty_free_bytes += uint64_t(count_ones(c->dirty_slots)) * kSlotSize;
  }
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
