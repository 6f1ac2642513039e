#include "large.h"

#include <errno.h>

#include <algorithm>

#include "arena.h"
#include "base/bits.h"
#include "base/lock.h"
#include "base/log.h"
#include "meta.h"
#include "options.h"
#include "os/os.h"
#include "page.h"
#include "pagemap.h"
#include "sample.h"

namespace mapalloc::large {

constexpr size_t kGuard = os::kPageSize;
// Enough for a program that frees a few hundred large blocks at once and
// builds them again (bench frag: with 64, its large phases re-faulted their
// blocks: 240k page faults against 158k, 1.02 -> 0.81 s, peak RSS +3 %).
// The bins and the sorted merge keep lookups cheap at this count.
constexpr size_t kMaxCached = 1024;
constexpr unsigned char kCanary = 0xCB;
constexpr size_t kMaxInner = size_t(1) << 46;

static SpinLock lock;
// All guarded by lock.
static LargeBlock* cache_head = nullptr;  // most recently freed first
static LargeBlock* cache_tail = nullptr;
// The cached mappings again, binned by read-write pages: four bins per
// power of two, so a lookup starts among blocks of about the right size.
constexpr unsigned kCacheBins = 4 * 48;
static LargeBlock* cache_bins[kCacheBins];
static size_t cache_count = 0, cache_bytes = 0;
static LargeBlock* spare = nullptr;
static uint64_t live_count = 0, live_bytes = 0, requests = 0, cache_hits = 0, mapped_bytes = 0;
static uint64_t last_purge_ms = 0;
static uint64_t coalesced = 0;  // cached neighbours merged
static size_t cache_dirty = 0;  // resident (not purged) bytes of cached blocks
// Live blocks, through next/prev (a block is live or cached, never both),
// for the check at exit. Guarded by lock.
static LargeBlock* live_head = nullptr;
// Freed growable mappings, most recent first (through next/prev), apart from
// the cache above: their layout (headroom PROT_NONE, not guard markers) is
// only for blocks that realloc grows. Kept resident, so that a program that
// grows a buffer by realloc, frees it and grows the next one (a string
// builder, say) neither maps nor faults its pages again: growing one from
// 16 B to 4 MiB ten thousand times took 370k page faults and 15 system calls
// a buffer when each went back to the kernel. Guarded by lock.
constexpr size_t kMaxGrowableCached = 16;
static LargeBlock* growable_head = nullptr;
static LargeBlock* growable_tail = nullptr;
static size_t growable_count = 0, growable_bytes = 0;  // bytes: read-write parts
// Cached blocks may keep this much resident beyond the purge delay's reach:
// the live large bytes, at least 128 MiB. Past it the oldest are purged (they
// stay cached, guards and all), so a burst of frees cannot hold RSS up.
static constexpr size_t kMinDirtyCap = 128 * MiB;

static size_t dirty_size(const LargeBlock* b) { return size_t(b->end - b->dirty_from); }
static size_t dirty_cap() { return live_bytes > kMinDirtyCap ? live_bytes : kMinDirtyCap; }

static char* page_down(char* p) { return reinterpret_cast<char*>(align_down(reinterpret_cast<uintptr_t>(p), kGuard)); }

// A block that is not a whole number of pages starts inside its first page,
// and may lie pages above its mapping's leading guard (a gap: gap_fits).
// Below it, down to the guard, lie bytes of its own mapping that no block
// uses. The kFrontCanary bytes right below the block (fewer where the guard
// is nearer) are filled with kCanary when it is handed out and checked on
// free, realloc and malloc_usable_size, so an underflow that starts there is
// caught; one that skips them lands in those unused bytes, never in another
// block or in metadata. Bounded at 256 bytes: filling and checking all of
// the partial first page, and in a gap the page below it too (up to 8 KiB,
// the layout before), took malloc from 60 to 100 and free from 16 to 42
// Mcycles in bench large's 100k requests (whose own time did not change:
// the first page's misses moved into its first touches), and a program
// that writes its whole blocks 2.4 % longer.
constexpr size_t kFrontCanary = 256;

static bool holds_canary(const char* from, const char* to) { return holds_byte(from, to, kCanary); }

// Where the front canary of b's block at user starts: kFrontCanary bytes
// below user, or the guard's end if nearer; at most down to user's first
// page for unguarded blocks (their fronts hold old data) and growable ones
// (which start at a page, their guard right below).
static char* canary_from(const LargeBlock* b, char* user) {
  char* floor = !b->guarded || b->growable ? page_down(user) : b->open_from;
  return size_t(user - floor) > kFrontCanary ? user - kFrontCanary : floor;
}

static void check_front_canary(const LargeBlock* b) {
  if (MAPALLOC_UNLIKELY(!holds_canary(canary_from(b, b->user), b->user)))
    fatal("heap underflow before the start of large block", b->user);
}

// The bytes after a block's requested end: up to kTailCanary of them (fewer
// where its read-write part ends sooner) hold kCanary, set when the block is
// handed out or resized and checked on free, realloc and
// malloc_usable_size. A block ends at its trailing guard only up to its
// rounding to 16 (malloc's alignment), its alignment, or a shrink in place:
// without them, p[n] of a 200001-byte block went unseen. So the block's
// usable size is its requested size, as a small block's is.
constexpr size_t kTailCanary = 256;

// From a block's end to the end of its read-write part, at most kTailCanary.
static size_t tail_canary_bytes(const char* from, const char* rw_end) {
  size_t room = size_t(rw_end - from);
  return room < kTailCanary ? room : kTailCanary;
}

// Set before the block is published, or resized in place (set_size): the
// check at exit, which holds the lock, never sees a size whose canary is
// not there yet.
static void set_tail_canary(char* block_end, const char* rw_end) {
  __builtin_memset(block_end, kCanary, tail_canary_bytes(block_end, rw_end));
}

static void check_tail_canary(const LargeBlock* b) {
  const char* from = b->user + b->size;
  if (MAPALLOC_UNLIKELY(!holds_canary(from, from + tail_canary_bytes(from, b->end))))
    fatal("heap overflow past the end of large block", b->user);
}

// Both canaries: for free, realloc and malloc_usable_size.
static void check_canaries(const LargeBlock* b) {
  check_front_canary(b);
  check_tail_canary(b);
}

// Whether a guarded cached block serves a request of `inner` bytes with its
// guard left in place: open at least that wide and at most three times as
// wide, and resident (a purged one faults every page in again anyway: its
// guard may as well move). The bound keeps resident waste at most twice the
// block's own size; a tighter one moves guards: bench large at an eighth
// (the size classes' bound) moved the guard on 53 % of reuses and ran 1.9x
// as long, at the same peak RSS; at twice as wide it still made 770-970
// madvise calls and 6.3k page faults for 20k requests (the unprotected
// build: 6.0k faults), at three times about 420 calls and 5.7k faults.
constexpr size_t kMaxGapRatio = 2;  // gap bytes per byte of the block
static bool gap_fits(const LargeBlock* b, size_t inner) {
  size_t open = size_t(b->end - b->open_from);
  return open >= inner && open - inner <= kMaxGapRatio * inner && b->dirty_from <= b->open_from;
}

// What lies between a block's read-write part and its mapping's end. For a
// guarded block, a guard of a slot (16 KiB): a read or write up to that far
// past the end faults, where one page let an outside suite's reads at p[n +
// 4096] of 100000-byte and bigger blocks through (guard markers and
// PROT_NONE pages cost no memory; split-off fronts get the same,
// split_front). An unguarded block's tail is read-write: a page, or a slot
// for a block under a slot, as the page map knows a large block by the slot
// (16 KiB) of its start, and at least a slot between the start and its
// mapping's end means no other mapping's block can start in the same slot.
constexpr size_t kTailGuard = kSlotSize;
static size_t tail_for(size_t usable, bool guarded) {
  if (guarded) return kTailGuard;
  return usable < kSlotSize ? kSlotSize : kGuard;
}

// A guarded block's purged pages become guard pages (one call, as a purge):
// a read or write through a dangling pointer into a block freed that long ago
// faults at once instead of reading zeros or writing unseen. The mapping is
// then open nowhere; its next use removes the markers it covers (open_block),
// one call more on a path that faults every page in again anyway.
static void purge_block(LargeBlock* b) {
  char* lo = page_down(b->dirty_from);
  if (lo < b->end) {
    bool took_back = false;
    if (b->guarded && os::purge_to_guard(lo, size_t(b->end - lo), &took_back)) {
      if (b->open_from < b->end) b->open_from = b->end;
    } else {
      // A refused install (locked pages) took back every marker of the
      // range, the guard below open_from too if it lay there: mark the
      // mapping open nowhere, so that its next use installs a guard again.
      if (took_back && b->open_from < b->end && b->open_from - kGuard >= lo) b->open_from = b->end;
      if (!os::purge(lo, size_t(b->end - lo))) b->lazily_purged = true;
    }
  }
  cache_dirty -= dirty_size(b);
  b->dirty_from = b->end;
  b->freed_marked = false;  // its words read zero now (or either, with MADV_FREE)
}

// A sampled free (sample.h): the block's pages become guard pages at once,
// so that a read or write through a dangling pointer faults. With guard
// markers, as a purge makes them later (its pages go back). Without, by
// mprotect, its pages kept: a plain purge would only make them read zero
// (and a later write after free would go unseen, by calloc too). Either
// way the mapping is open nowhere, and its next use opens what it covers
// (open_block). Lock held, b cached.
static void guard_freed(LargeBlock* b) {
  if (os::guard_markers()) return purge_block(b);
  char* from = page_down(b->user);  // at or above open_from: the block is in the open part
  if (!os::guard(from, size_t(b->end - from))) return;
  b->open_from = b->end;
  b->freed_marked = false;  // unreadable now: its words are checked no more
}

// Freed mapped samples (a small request's, heap.cpp), oldest first. Not
// cached: the next request of that size would take the mapping back at once,
// its guard off, and a read through the dangling pointer would go unseen.
// Their pages are guard pages until kRetiredSamples later ones are freed,
// then they are unmapped, as the slot samples' reuse waits (sample.cpp).
constexpr unsigned kRetiredSamples = 16;
static LargeBlock* retired_samples[kRetiredSamples];
static unsigned retired_next = 0;

static void release(LargeBlock* b);

// Lock held; b is off every list.
static void retire_sample(LargeBlock* b) {
  os::purge_and_close(b->begin, size_t(b->end - b->begin));
  b->freed_marked = false;
  LargeBlock* oldest = retired_samples[retired_next];
  retired_samples[retired_next] = b;
  retired_next = (retired_next + 1) % kRetiredSamples;
  if (oldest) release(oldest);
}

static unsigned cache_bin(size_t bytes) {
  size_t pages = bytes / kGuard;
  if (pages < 4) return unsigned(pages);
  unsigned log = unsigned(63 - __builtin_clzll(pages));
  unsigned bin = 4 * (log - 1) + unsigned((pages >> (log - 2)) & 3);
  return bin < kCacheBins ? bin : kCacheBins - 1;
}

static void cache_unlink(LargeBlock* b) {
  (b->prev ? b->prev->next : cache_head) = b->next;
  (b->next ? b->next->prev : cache_tail) = b->prev;
  b->next = b->prev = nullptr;
  (b->bin_prev ? b->bin_prev->bin_next : cache_bins[b->bin]) = b->bin_next;
  if (b->bin_next) b->bin_next->bin_prev = b->bin_prev;
  b->bin_next = b->bin_prev = nullptr;
  cache_count--;
  cache_bytes -= b->map_size;
  cache_dirty -= dirty_size(b);
}

static void cache_push_front(LargeBlock* b) {
  b->prev = nullptr;
  b->next = cache_head;
  (cache_head ? cache_head->prev : cache_tail) = b;
  cache_head = b;
  b->bin = cache_bin(size_t(b->end - b->begin));
  b->bin_prev = nullptr;
  b->bin_next = cache_bins[b->bin];
  if (b->bin_next) b->bin_next->bin_prev = b;
  cache_bins[b->bin] = b;
  cache_count++;
  cache_bytes += b->map_size;
  cache_dirty += dirty_size(b);
}

// A freed block keeps its page-map entry while its mapping is cached, so a
// second free reads "double free" rather than "invalid free"; the entry goes
// when the mapping is reused for another block, split away or released.
static void forget_user(LargeBlock* b) {
  if (b->user) pagemap::set(b->user, 1, 0);
  b->user = nullptr;
  b->freed_marked = false;
}

// A freed block kept in the cache gets its first 16 bytes overwritten with
// two words derived from the secrets and its address. They are checked when
// its mapping is taken again, merged or released, so a write after free
// there is caught, as in a small block; not once the pages are purged or
// the block's place is forgotten. The words are a small free block's link
// to nothing and its cookie. Lock held or b owned.
static void freed_words(const LargeBlock* b, uintptr_t w[2]) {
  const Block* head = reinterpret_cast<const Block*>(b->user);
  w[0] = encode_link(head, nullptr);
  w[1] = cookie_for(nullptr);
}

static void mark_freed(LargeBlock* b) {
  if (size_t(b->end - b->user) < 16) return;  // an over-aligned malloc(0)
  uintptr_t w[2];
  freed_words(b, w);
  __builtin_memcpy(b->user, w, sizeof w);
  b->freed_marked = true;
}

// Checks the mark once: the block is being reused, merged or released.
static void check_freed(LargeBlock* b) {
  if (!b->freed_marked) return;
  b->freed_marked = false;
  uintptr_t want[2], have[2];
  freed_words(b, want);
  __builtin_memcpy(have, b->user, sizeof have);
  if (MAPALLOC_UNLIKELY((want[0] ^ have[0]) | (want[1] ^ have[1]))) fatal("write after free into large block", b->user);
}

// A descriptor whose mapping is gone or now another's goes to the spare
// list; lock held.
static void give_back_descriptor_locked(LargeBlock* b) {
  b->next = spare;
  spare = b;
}

// Releases a descriptor's mapping; lock held.
static void release(LargeBlock* b) {
  check_freed(b);
  forget_user(b);
  os::unmap(b->map_base, b->map_size);
  mapped_bytes -= b->map_size;
  give_back_descriptor_locked(b);
}

static LargeBlock* new_descriptor_locked() {
  LargeBlock* b = spare;
  if (b) {
    spare = b->next;
    return b;
  }
  return static_cast<LargeBlock*>(meta::allocate(sizeof(LargeBlock)));
}

static LargeBlock* new_descriptor() {
  LockGuard guard(lock);
  return new_descriptor_locked();
}

static void give_back_descriptor(LargeBlock* b) {
  LockGuard guard(lock);
  give_back_descriptor_locked(b);
}

// Keeps a mapping out of the cache (freed, split off, or given back) in the
// cache, most recent first, or releases it when the cache's bound makes it
// too big to keep; then releases the oldest while the cache is over its
// bounds. Lock held.
static void cache_keep(LargeBlock* b) {
  size_t bound = options.large_cache;
  if (b->map_size > bound / 4) return release(b);
  cache_push_front(b);
  while (cache_bytes > bound || cache_count > kMaxCached) {
    LargeBlock* old = cache_tail;
    cache_unlink(old);
    release(old);
  }
}

static void growable_unlink(LargeBlock* b) {
  (b->prev ? b->prev->next : growable_head) = b->next;
  (b->next ? b->next->prev : growable_tail) = b->prev;
  b->next = b->prev = nullptr;
  growable_count--;
  growable_bytes -= size_t(b->end - b->begin);
}

// Keeps a freed growable mapping, releasing the oldest past the bounds: at
// most kMaxGrowableCached, whose read-write parts (resident) add up to an
// eighth of the large cache's bytes at most. Lock held.
static void growable_keep(LargeBlock* b) {
  b->prev = nullptr;
  b->next = growable_head;
  (growable_head ? growable_head->prev : growable_tail) = b;
  growable_head = b;
  growable_count++;
  growable_bytes += size_t(b->end - b->begin);
  while (growable_count > kMaxGrowableCached || growable_bytes > options.large_cache / 8) {
    LargeBlock* old = growable_tail;
    growable_unlink(old);
    release(old);
  }
}

// The cached growable mapping with the least room that has room for `rw`
// read-write bytes, taken out of the cache; nullptr if none. Lock held.
static LargeBlock* growable_take(size_t rw) {
  LargeBlock* best = nullptr;
  for (LargeBlock* b = growable_head; b; b = b->next) {
    if (size_t(b->map_end() - kGuard - b->begin) >= rw && (!best || b->map_size < best->map_size)) best = b;
  }
  if (best) growable_unlink(best);
  return best;
}

// Fronts smaller than this stay with the block (below its leading guard).
constexpr size_t kMinSplitInner = 16 * KiB;

// Cuts a front of at least kMinSplitInner (and a quarter of what b keeps)
// off b, so that b's read-write part becomes its last `inner` bytes; the
// front becomes a cached mapping of its own (or is unmapped, cache_keep). One call makes the front's
// trailing guard and b's leading one; the pages of both parts stay
// resident. False, b unchanged, when the front is too small or the kernel
// refused. Lock held.
static bool split_front(LargeBlock* b, size_t inner) {
  bool guarded = b->guarded;
  char* new_begin = b->end - inner;
  char* new_base = new_begin - (guarded ? kGuard : 0);
  // The front's trailing guard starts here (tail_for); an unguarded front
  // keeps that page read-write as its tail (map_block's layout, which
  // cache_take needs).
  char* front_end = new_base - (guarded ? kTailGuard : kGuard);
  if (front_end < b->begin + kMinSplitInner || size_t(front_end - b->begin) <= inner / 4) return false;
  LargeBlock* front = new_descriptor_locked();
  if (!front) return false;
  if (guarded && !os::guard(front_end, size_t(new_begin - front_end))) {
    give_back_descriptor_locked(front);
    return false;
  }
  *front = *b;
  front->user = nullptr;
  front->freed_marked = false;
  front->map_size = size_t(new_base - b->map_base);
  front->end = front_end;
  if (front->dirty_from > front_end) front->dirty_from = front_end;
  if (front->open_from > front_end) front->open_from = front_end;
  if (b->user && b->user < new_begin) forget_user(b);  // its start is not in what b keeps
  b->map_size -= size_t(new_base - b->map_base);
  b->map_base = new_base;
  b->begin = new_begin;
  if (b->dirty_from < new_begin) b->dirty_from = new_begin;
  if (b->open_from < new_begin) b->open_from = new_begin;
  cache_keep(front);  // released at once if the cache's bound is below it
  return true;
}

// Makes [from, b->end) the block's accessible part with a guard page right
// below it, so that an underflow faults at once. Markers left in b by
// earlier uses and merges (all in [begin, open_from)) are removed only when
// the new block covers them: a block reused at the same place costs no
// call, a smaller one one call, a bigger one two. Pages below the guard stay
// read-write and resident, for the next bigger use. Guarded blocks only.
static bool open_block(LargeBlock* b, char* from) {
  if (from < b->open_from) {
    if (!os::unguard(from, size_t(b->open_from - from))) return false;
    b->open_from = from;
    if (from == b->begin) return true;  // the mapping's own leading guard is below
  } else if (from == b->open_from) {
    return true;  // the guard below is in place
  }
  if (!os::guard(from - kGuard, kGuard)) {
    b->open_from = b->end;  // no guard below from: let the next use install one
    return false;
  }
  b->open_from = from;
  return true;
}

// Best-fitting cached mapping for `inner` read-write bytes and a tail of at
// least `tail`, taken out of the cache: one whose open part is that wide, or
// (gap_ok) up to three times as wide (gap_fits), if there is one (no guard to move: no
// call, no page zapped and faulted again; the narrowest such), else the
// smallest that fits. Its pages still resident spare a fault each, where a
// fresh mapping faults on every page. Measured on bench large at
// ops=100000: 81k -> 74k faults, 0.59 -> 0.50 s. Bins more than a doubling
// above the request's are looked at only while nothing below them fits:
// their mappings would be split anyway.
static LargeBlock* cache_take(size_t inner, size_t tail, bool guarded, bool gap_ok) {
  LargeBlock* best = nullptr;
  LargeBlock* in_place = nullptr;  // the narrowest whose guard can stay
  unsigned first = cache_bin(inner);
  for (unsigned bin = first; bin < kCacheBins && !(best && bin > first + 4); bin++) {
    for (LargeBlock* b = cache_bins[bin]; b; b = b->bin_next) {
      size_t have = size_t(b->end - b->begin);
      if (have < inner || size_t(b->map_end() - b->end) < tail || b->guarded != guarded) continue;
      if (guarded && gap_fits(b, inner)) {
        if (size_t(b->end - b->open_from) == inner) {  // no gap to fill either
          cache_unlink(b);
          return b;
        }
        if (gap_ok && (!in_place || b->end - b->open_from < in_place->end - in_place->open_from)) in_place = b;
      }
      if (!best || have < size_t(best->end - best->begin)) best = b;
    }
  }
  if (in_place) best = in_place;
  if (best) cache_unlink(best);
  return best;
}

// Merges cached mappings that lie side by side: the pieces of earlier
// splits, or fresh mappings the kernel placed next to each other. Without
// this, splits leave the cache full of pieces too small for a big request,
// which then needs a fresh mapping and a fault on every page. No call: the
// guard pages between two pieces stay until a block covers them
// (open_block). The upper piece's descriptor survives with its page-map
// entry, the lower one's goes. Done when a request finds nothing that fits.
// Returns whether anything merged. Lock held. Sorting by address finds
// every pair of neighbours at once, in O(n log n) for the whole cache.
static LargeBlock* by_address[kMaxCached];  // lock held
static bool coalesce_cache() {
  size_t n = 0;
  // Unguarded mappings are not merged: they keep fronts as wide as the block
  // read-write, so merged ones grow without bound and end up purged.
  for (LargeBlock* b = cache_head; b && n < kMaxCached; b = b->next)
    if (b->guarded) by_address[n++] = b;
  std::sort(by_address, by_address + n, [](const LargeBlock* x, const LargeBlock* y) { return x->map_base < y->map_base; });
  bool merged = false;
  for (size_t i = 1; i < n; i++) {
    LargeBlock* lo = by_address[i - 1];
    LargeBlock* hi = by_address[i];
    if (hi->map_base != lo->map_end()) continue;
    // Unlinked and pushed again so that the cache's byte counts and bins follow.
    cache_unlink(hi);
    cache_unlink(lo);
    check_freed(lo);
    forget_user(lo);
    hi->map_base = lo->map_base;
    hi->map_size += lo->map_size;
    hi->begin = lo->begin;
    hi->dirty_from = lo->dirty_from;  // conservative: the gap may hold old data
    hi->lazily_purged |= lo->lazily_purged;
    if (lo->cached_at_ms > hi->cached_at_ms) hi->cached_at_ms = lo->cached_at_ms;
    cache_push_front(hi);
    give_back_descriptor_locked(lo);
    coalesced++;
    merged = true;  // hi, now covering lo too, may merge with the next one up
  }
  return merged;
}

static void purge_locked(bool force, uint64_t now) {
  last_purge_ms = now;
  // Oldest at the tail: purge those idle ten delays (as long as free arena
  // pages wait), unmap those idle 100 ms longer (or everything when forced).
  // Memory in use by a steady workload never waits that long, so it is never
  // purged and re-faulted.
  uint64_t delay = options.purge_delay_ms;
  for (LargeBlock* b = cache_tail; b;) {
    LargeBlock* prev = b->prev;
    uint64_t idle = os::ms_since(now, b->cached_at_ms);
    if (force || idle >= 10 * delay + 100) {
      cache_unlink(b);
      release(b);
    } else if ((idle >= 10 * delay || cache_dirty > dirty_cap()) && b->dirty_from < b->end) {
      purge_block(b);
    }
    b = prev;
  }
  // Growable mappings are not purged and kept: those idle ten delays go.
  for (LargeBlock* b = growable_tail; b;) {
    LargeBlock* prev = b->prev;
    if (force || os::ms_since(now, b->cached_at_ms) >= 10 * delay) {
      growable_unlink(b);
      release(b);
    }
    b = prev;
  }
}

static void maybe_purge_locked(uint64_t now) {
  if (os::ms_since(now, last_purge_ms) >= options.purge_delay_ms || cache_dirty > dirty_cap()) purge_locked(false, now);
}

// A new mapping of map_size bytes whose read-write part is [begin, end).
// Growable blocks always take the mprotect layout: their headroom opens by
// mprotect, which does not remove guard markers.
static bool map_block(LargeBlock* b, size_t head, size_t rw, size_t map_size, bool guarded, bool growable) {
  char* base;
  if (guarded && !growable && os::guard_markers()) {
    // One read-write mapping (the kernel may merge it with its neighbours)
    // with guard markers at both ends, in one call where the kernel takes it.
    base = static_cast<char*>(os::map(map_size));
    if (base) {
      os::Range ends[2] = {{base, head}, {base + head + rw, map_size - head - rw}};
      if (!os::guard_each(ends, 2)) {
        os::unmap(base, map_size);
        base = nullptr;
      }
    }
  } else if (guarded) {
    base = static_cast<char*>(os::reserve(map_size));
    if (base && !os::protect_rw(base + head, rw)) {
      os::unmap(base, map_size);
      base = nullptr;
    }
  } else {
    base = static_cast<char*>(os::map(map_size));
  }
  if (!base) return false;
  b->map_base = base;
  b->map_size = map_size;
  b->begin = base + head;
  b->end = base + head + rw;
  b->dirty_from = b->end;  // fresh pages read as zero
  b->open_from = b->begin;
  b->spans_mappings = false;
  b->resizing = false;
  b->guarded = guarded;
  b->freed_marked = false;
  b->lazily_purged = false;
  LockGuard guard(lock);
  mapped_bytes += map_size;
  return true;
}

// Hands out b with the block at user; false if the page map could not grow.
static bool publish(LargeBlock* b, char* user, size_t size, uint64_t now) {
  if (b->user != user) forget_user(b);  // the entry of the block it held before
  b->user = user;
  b->size = size;
  b->live = true;
  b->next = b->prev = nullptr;
  bool ok = pagemap::set(user, 1, reinterpret_cast<uintptr_t>(b));
  LockGuard guard(lock);
  if (!ok) {
    b->live = false;
    b->user = nullptr;
    release(b);
    return false;
  }
  live_count++;
  live_bytes += size;
  b->next = live_head;
  if (live_head) live_head->prev = b;
  live_head = b;
  maybe_purge_locked(now);
  return true;
}

void give_back_caches() {
  arena::purge(true);
  purge(true);
}

// map_block, and once more after the caches gave back what they hold when
// the kernel refused: the address space or memory it lacks may be theirs.
static bool map_fresh(LargeBlock* b, size_t head, size_t rw, size_t map_size, bool guarded, bool growable) {
  if (map_block(b, head, rw, map_size, guarded, growable)) return true;
  give_back_caches();
  return map_block(b, head, rw, map_size, guarded, growable);
}

void* alloc(size_t size, size_t alignment, bool zero, bool sampled) {
  size_t usable = align_up(size, 16);
  size_t extra = alignment > kGuard ? alignment : 0;
  size_t inner;
  if (usable < size || add_overflows(align_up(usable, kGuard), extra, &inner) || inner > kMaxInner) {
    errno = ENOMEM;
    return nullptr;
  }
  bool guarded = options.guard;
  size_t tail = tail_for(usable, guarded);
  uint64_t now = os::now_ms();
  LargeBlock* b;
  // A gap (gap_fits) only below a block that starts inside its first page:
  // the block ends at a page boundary, so it starts kGuard - r into its
  // first page, rounded down to its alignment (at a page start when the
  // alignment exceeds that).
  size_t r = usable % kGuard;
  bool gap_ok = guarded && r != 0 && kGuard - r >= (alignment < 16 ? 16 : alignment);
  {
    LockGuard guard(lock);
    requests++;
    b = cache_take(inner, tail, guarded, gap_ok);
    if (!b && coalesce_cache()) b = cache_take(inner, tail, guarded, gap_ok);
    if (b) cache_hits++;
  }
  if (b) check_freed(b);  // before any guard page moves over it
  if (!b) {
    b = new_descriptor();
    if (!b) {
      errno = ENOMEM;
      return nullptr;
    }
    size_t head = guarded ? kGuard : 0;
    if (!map_fresh(b, head, inner, head + inner + tail, guarded, false)) {
      give_back_descriptor(b);
      errno = ENOMEM;
      return nullptr;
    }
    b->growable = false;
  }
  char* user = reinterpret_cast<char*>(
      align_down(reinterpret_cast<uintptr_t>(b->end - usable), alignment < 16 ? 16 : alignment));
  // Nothing accessible may lie right below the block's first page, or an
  // underflow would not fault. A big front left by a bigger cached mapping
  // or by the alignment is split off for reuse; a small one stays below a
  // guard page. (Unguarded blocks keep a front as wide as the block, as
  // guarded ones keep a gap: on bench large, splitting off fronts above a
  // quarter left pieces too small to reuse, 56 MB peak RSS, now 35 MB.)
  // A block that starts inside its first page keeps a mapping that
  // gap_fits open as it is (no call, no fault); the front is then what lies
  // below the guard. One that starts at a page has its guard right below,
  // so that p[-1] faults at once.
  char* open = gap_ok && gap_fits(b, inner) ? b->open_from : page_down(user);
  size_t front = size_t(open - b->begin);
  if (front > (guarded ? inner / 4 : inner) || (guarded && open != b->open_from)) {
    LockGuard guard(lock);
    split_front(b, size_t(b->end - open));  // when the front is worth a cache entry
    if (guarded && !open_block(b, open)) {
      b->cached_at_ms = now;  // the kernel refused: fail rather than hand out an unguarded front
      cache_keep(b);
      errno = ENOMEM;
      return nullptr;
    }
  }
  if (zero && (b->dirty_from < b->end || b->lazily_purged)) {
    char* from = user > b->dirty_from || b->lazily_purged ? user : b->dirty_from;
    __builtin_memset(from, 0, size_t(b->end - from));
  }
  char* canary = canary_from(b, user);  // (b->user is set by publish)
  __builtin_memset(canary, kCanary, size_t(user - canary));
  // The block's first page is resident from here on (the canary is in it
  // or below it), as far as purging and gap_fits are concerned.
  if (page_down(canary) < b->dirty_from) b->dirty_from = page_down(canary);
  set_tail_canary(user + size, b->end);
  b->sampled = sampled;
  if (!publish(b, user, size, now)) {
    errno = ENOMEM;
    return nullptr;
  }
  return user;
}

// Growable blocks start at begin (user == begin), their guard right below;
// their read-write part ends at the page after their size rounded to 16
// (the headroom above is PROT_NONE), their tail canary before it.
static size_t growable_usable(size_t size) { return align_up(size, 16); }

// Address space for a block of `size` growing: twice its pages. Only the
// pages in use are read-write; the rest is PROT_NONE, costing nothing.
static bool growable_reservation(size_t size, size_t* rw, size_t* map_size) {
  size_t pages = align_up(growable_usable(size), kGuard);
  if (pages > kMaxInner) return false;
  *rw = pages;
  *map_size = kGuard + 2 * align_up(pages, kSlotSize) + kGuard;
  return true;
}

// A cached growable mapping made ready for a block of `rw` read-write bytes:
// its read-write part shrunk (the pages past it stay resident, PROT_NONE,
// for its growth) or widened. False if the kernel refused.
static bool reopen_growable(LargeBlock* b, size_t rw) {
  char* end = b->begin + rw;
  if (end < b->end) {
    // The pages past it go back: a cached mapping may be much bigger.
    os::purge(end, size_t(b->end - end));
    if (!os::protect_none(end, size_t(b->end - end))) return false;
  } else if (end > b->end) {
    if (!os::protect_rw(b->end, size_t(end - b->end))) return false;
  }
  b->end = end;
  return true;
}

void* alloc_growable(size_t size) {
  size_t rw, map_size;
  if (!growable_reservation(size, &rw, &map_size)) {
    errno = ENOMEM;
    return nullptr;
  }
  uint64_t now = os::now_ms();
  LargeBlock* b;
  {
    LockGuard guard(lock);
    requests++;
    b = growable_take(rw);
    if (b) cache_hits++;
  }
  if (b) {
    check_freed(b);
    if (!reopen_growable(b, rw)) {
      LockGuard guard(lock);
      release(b);
      b = nullptr;
    }
  }
  if (!b) {
    b = new_descriptor();
    if (!b) {
      errno = ENOMEM;
      return nullptr;
    }
    // Always a reservation: the headroom must be PROT_NONE to be a guard.
    if (!map_fresh(b, kGuard, rw, map_size, true, true)) {
      give_back_descriptor(b);
      errno = ENOMEM;
      return nullptr;
    }
  }
  b->growable = true;
  b->sampled = false;
  set_tail_canary(b->begin + size, b->end);
  if (!publish(b, b->begin, size, now)) {
    errno = ENOMEM;
    return nullptr;
  }
  return b->user;
}

void free(LargeBlock* b, void* p) {
  if (MAPALLOC_UNLIKELY(!b->live)) fatal("double free of large block", p);
  if (MAPALLOC_UNLIKELY(p != b->user)) fatal("invalid free (interior pointer into large block)", p);
  check_canaries(b);
  uint64_t now = os::now_ms();
  LockGuard guard(lock);
  live_count--;
  live_bytes -= b->size;
  (b->prev ? b->prev->next : live_head) = b->next;
  if (b->next) b->next->prev = b->prev;
  b->next = b->prev = nullptr;
  b->live = false;  // b->user and its page-map entry stay: see forget_user
  if (b->sampled) {
    retire_sample(b);
  } else if (b->map_size > options.large_cache / 4) {
    release(b);  // not worth caching
  } else if (b->growable) {
    mark_freed(b);
    b->cached_at_ms = now;
    growable_keep(b);
  } else if (b->guarded != options.guard) {
    release(b);  // of a layout alloc cannot reuse
  } else {
    mark_freed(b);
    b->cached_at_ms = now;
    cache_keep(b);  // (b, the most recent, stays cached: it is at most a quarter of the bound)
    if (b->guarded && sample::take_large(size_t(b->end - b->user))) guard_freed(b);
  }
  maybe_purge_locked(now);
}

size_t usable_size(const LargeBlock* b) {
  check_canaries(b);
  return b->size;
}

static void set_size(LargeBlock* b, size_t new_size) {
  LockGuard guard(lock);
  live_bytes = live_bytes - b->size + new_size;
  b->size = new_size;
}

// Growable block: resize within its reservation, or move its pages to a
// bigger one. False when out of memory, the block unchanged.
static bool resize_growable(LargeBlock* b, size_t new_size) {
  size_t rw, map_size;
  if (!growable_reservation(new_size, &rw, &map_size)) return false;
  {
    LockGuard guard(lock);
    b->resizing = true;
  }
  struct Resized {
    LargeBlock* b;
    ~Resized() {
      LockGuard guard(lock);
      b->resizing = false;
    }
  } resized{b};
  size_t have = size_t(b->end - b->begin);
  if (b->begin + rw > b->map_end() - kGuard) {
    char* base = static_cast<char*>(os::reserve(map_size));
    if (!base) {
      give_back_caches();
      base = static_cast<char*>(os::reserve(map_size));
      if (!base) return false;
    }
    char* begin = base + kGuard;
    if (!pagemap::set(begin, 1, reinterpret_cast<uintptr_t>(b))) {
      os::unmap(base, map_size);
      return false;
    }
    // The old start's entry goes before the move: once the pages have moved,
    // another thread's mapping may take their place and publish a block in
    // that slot, whose entry a later clear would wipe.
    pagemap::set(b->user, 1, 0);
    // Before Linux 6.17 mremap moves no range that spans several mappings
    // (and refuses only after unmapping the destination): such a block is
    // copied instead, into one mapping that the next move can take.
    bool move = !b->spans_mappings || os::moves_across_mappings();
    if (move && os::protect_rw(begin + have, rw - have) && os::move_pages(b->begin, have, begin)) {
      // The moved pages left a hole that another thread's mmap may already
      // have taken: unmap only what is still ours, on either side of it.
      os::unmap(b->map_base, size_t(b->begin - b->map_base));
      os::unmap(b->begin + have, size_t(b->map_end() - (b->begin + have)));
      // The pages opened at begin + have before the move are a mapping of
      // their own: the moved ones do not merge with them (rw > have here).
      b->spans_mappings = true;
    } else if (os::protect_rw(begin, rw)) {
      // (A move refused otherwise leaves the old pages in place: copied too.)
      __builtin_memcpy(begin, b->begin, have);
      os::unmap(b->map_base, b->map_size);
      b->spans_mappings = false;
    } else {
      pagemap::set(begin, 1, 0);
      pagemap::set(b->user, 1, reinterpret_cast<uintptr_t>(b));  // its leaf exists: cannot fail
      os::unmap(base, map_size);
      return false;
    }
    {
      LockGuard guard(lock);
      mapped_bytes += map_size - b->map_size;
    }
    b->map_base = base;
    b->map_size = map_size;
    b->begin = b->user = begin;
    b->end = begin + rw;
  } else if (b->begin + rw > b->end) {
    // Open a quarter more than asked at once: one mprotect per step of
    // growth, not per page (the pages cost nothing until touched).
    size_t step = align_up(have / 4, kGuard);
    size_t room = size_t(b->map_end() - kGuard - b->begin);
    size_t open = rw > have + step ? rw : have + step;
    if (open > room) open = room;
    if (!os::protect_rw(b->end, open - have)) return false;
    b->end = b->begin + open;
  } else if (rw < have / 2) {
    // Shrunk to less than half: give the rest back, a guard again.
    char* new_end = b->begin + rw;
    os::purge(new_end, size_t(b->end - new_end));
    // Refused when it would split a mapping past the kernel's count: the
    // pages then stay read-write, and the part with them.
    if (os::protect_none(new_end, size_t(b->end - new_end))) b->end = new_end;
  }
  set_tail_canary(b->user + new_size, b->end);
  set_size(b, new_size);
  return true;
}

void* reallocate(LargeBlock* b, size_t new_size, bool* out_of_memory) {
  *out_of_memory = false;
  check_canaries(b);
  if (b->growable) {
    if (resize_growable(b, new_size)) return b->user;
    *out_of_memory = true;
    return nullptr;
  }
  // Shrinking a little or growing into the rounding or alignment slack keeps
  // the block.
  size_t room = size_t(b->end - b->user);
  if (new_size <= room && new_size >= room / 2) {
    set_tail_canary(b->user + new_size, b->end);
    set_size(b, new_size);
    return b->user;
  }
  if (new_size > room) {
    // Growing: copy once into the growable layout; later growth is cheap.
    void* q = alloc_growable(new_size);
    if (!q) {
      *out_of_memory = true;
      return nullptr;
    }
    __builtin_memcpy(q, b->user, b->size);
    free(b, b->user);
    return q;
  }
  return nullptr;  // shrinking a lot: the caller moves it to a smaller block
}

void check_at_exit() {
  // Another thread's hold ends soon: up to a second, else no check.
  if (!lock.try_lock_for_ms(1000)) return;
  struct Unlock {
    ~Unlock() { lock.unlock(); }
  } unlock_at_return;
  // Not a growable block that a realloc by another thread is moving (its
  // pages, its end) without the lock.
  for (LargeBlock* b = live_head; b; b = b->next) {
    if (b->resizing) continue;
    check_front_canary(b);
    check_tail_canary(b);
  }
  for (LargeBlock* b = cache_head; b; b = b->next) check_freed(b);
  for (LargeBlock* b = growable_head; b; b = b->next) check_freed(b);
}

void purge(bool force) {
  uint64_t now = os::now_ms();
  LockGuard guard(lock);
  purge_locked(force, now);
}

Usage usage() {
  LockGuard guard(lock);
  size_t growable_mapped = 0;
  for (const LargeBlock* b = growable_head; b; b = b->next) growable_mapped += b->map_size;
  return Usage{live_count,  live_bytes,   requests, cache_hits, cache_count + growable_count, cache_bytes + growable_mapped,
               mapped_bytes, coalesced};
}

void lock_for_fork() { lock.lock(); }
void unlock_for_fork() { lock.unlock(); }
void reset_after_fork() { lock.reset_after_fork(); }

}  // namespace mapalloc::large
