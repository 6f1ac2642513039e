#include "arena.h"

#include "base/lock.h"
#include "base/log.h"
#include "meta.h"
#include "options.h"
#include "os/os.h"
#include "pagemap.h"

namespace mapalloc::arena {

static SpinLock lock;
static Chunk* chunks = nullptr;        // guarded by lock
static Chunk* spare_descriptors = nullptr;
static uint64_t pages_in_use = 0;
static uint64_t last_purge_ms = 0;
static uint64_t dirty_bytes = 0;  // free but possibly resident
// Free pages are purged once idle for the purge delay, so a steady workload
// reuses them without faults. Beyond this much free resident memory the
// excess goes at once, so a burst of frees cannot hold RSS up for long; only
// down to half of it, so a workload cycling through more than the cap does
// not purge and re-fault everything each time.
static constexpr uint64_t kDirtyCap = 64 * MiB;
static constexpr size_t kGuard = os::kPageSize;

static uint64_t run_mask(unsigned slots) {
  return slots == 64 ? ~uint64_t(0) : ((uint64_t(1) << slots) - 1);
}

// Maps a chunk-aligned chunk; with guards, a PROT_NONE page on each side.
static char* map_chunk() {
  if (!options.guard) return static_cast<char*>(os::map_aligned(kChunkSize, kChunkSize, true));
  size_t total = 2 * kChunkSize + 2 * kGuard;
  char* res = static_cast<char*>(os::reserve(total));
  if (!res) return nullptr;
  char* base = reinterpret_cast<char*>(align_up(reinterpret_cast<uintptr_t>(res) + kGuard, kChunkSize));
  char* lo = base - kGuard;
  char* hi = base + kChunkSize + kGuard;
  os::unmap(res, size_t(lo - res));
  os::unmap(hi, size_t(res + total - hi));
  if (!os::protect_rw(base, kChunkSize)) {
    os::unmap(lo, size_t(hi - lo));
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

static Chunk* new_chunk() {
  char* base = map_chunk();
  if (!base) return nullptr;
  Chunk* c = spare_descriptors;
  if (c) {
    spare_descriptors = c->next;
  } else {
    c = static_cast<Chunk*>(meta::allocate(sizeof(Chunk)));
    // One OS page per slot, touched only as blocks are handed out, and purged
    // with its slot.
    uint8_t* slack = static_cast<uint8_t*>(os::map(kSlotsPerChunk * kMaxBlocksPerSlot));
    if (!c || !slack) {
      if (slack) os::unmap(slack, kSlotsPerChunk * kMaxBlocksPerSlot);
      unmap_chunk(base);
      return nullptr;  // a descriptor meta handed out stays with it: rare, and bounded
    }
    new (c) Chunk();
    c->slack = slack;
  }
  c->base = base;
  c->free_slots = ~uint64_t(0);
  c->dirty_slots = 0;
  c->last_free_ms = 0;
  for (unsigned i = 0; i < kSlotsPerChunk; i++) {
    Page& p = c->pages[i];
    p.chunk = c;
    p.slot_index = uint8_t(i);
    p.start = base + i * kSlotSize;
    p.capacity = 0;  // free slots reject every free
    p.slack = c->slack + i * kMaxBlocksPerSlot;
    if (!pagemap::set_page(p.start, kSlotSize, &p)) {
      unmap_chunk(base);
      c->next = spare_descriptors;
      spare_descriptors = c;
      return nullptr;
    }
  }
  c->next = chunks;
  chunks = c;
  return c;
}

// Lowest run of `slots` free slots aligned to `slots`, preferring runs that
// are still resident (no page faults). Returns 64 if none.
static unsigned find_run(const Chunk* c, unsigned slots) {
  uint64_t m = run_mask(slots);
  unsigned best = 64;
  for (unsigned i = 0; i < 64; i += slots) {
    if (((c->free_slots >> i) & m) != m) continue;
    if (((c->dirty_slots >> i) & m) == m) return i;
    if (best == 64) best = i;
  }
  return best;
}

static void maybe_purge_locked(uint64_t now);

Page* alloc_page(Heap* heap, unsigned size_class) {
  unsigned slots = kClasses[size_class].page_slots;
  Chunk* chosen = nullptr;
  unsigned index = 64;
  {
    LockGuard guard(lock);
    // Prefer a run that is still resident anywhere, then any free run.
    Chunk* fallback = nullptr;
    unsigned fallback_index = 64;
    for (Chunk* c = chunks; c; c = c->next) {
      if (!c->free_slots) continue;
      unsigned i = find_run(c, slots);
      if (i == 64) continue;
      if (((c->dirty_slots >> i) & run_mask(slots)) == run_mask(slots)) {
        chosen = c;
        index = i;
        break;
      }
      if (!fallback) fallback = c, fallback_index = i;
    }
    if (!chosen && fallback) chosen = fallback, index = fallback_index;
    if (!chosen) {
      chosen = new_chunk();
      if (!chosen) return nullptr;
      index = 0;
    }
    uint64_t m = run_mask(slots) << index;
    chosen->free_slots &= ~m;
    dirty_bytes -= uint64_t(__builtin_popcountll(chosen->dirty_slots & m)) * kSlotSize;
    chosen->dirty_slots &= ~m;
    pages_in_use++;
    // Under the lock, so that the statistics read a consistent page.
    Page* head = &chosen->pages[index];
    head->slot_count = uint8_t(slots);
    head->start = chosen->base + index * kSlotSize;
    page_init(head, heap, size_class);
    maybe_purge_locked(os::now_ms());
  }
  Page* page = &chosen->pages[index];
  // The run's slots are ours alone now: point them at the head descriptor.
  if (slots > 1) pagemap::set_page(page->start, slots * kSlotSize, page);
  return page;
}

static void purge_chunk(Chunk* c, uint64_t which) {
  while (which) {
    unsigned first = unsigned(__builtin_ctzll(which));
    unsigned len = 0;
    while (first + len < 64 && (which >> (first + len) & 1)) len++;
    os::purge(c->base + first * kSlotSize, len * kSlotSize);
    os::purge(c->slack + first * kMaxBlocksPerSlot, len * kMaxBlocksPerSlot);
    which &= ~(run_mask(len) << first);
  }
  dirty_bytes -= uint64_t(__builtin_popcountll(c->dirty_slots)) * kSlotSize;
  c->dirty_slots = 0;
}

// Purges chunks idle past the delay, then more while over the cap; with
// force, every chunk, and wholly free chunks are unmapped.
static void purge_locked(bool force, uint64_t now) {
  last_purge_ms = now;
  Chunk** link = &chunks;
  while (Chunk* c = *link) {
    bool idle = force || now - c->last_free_ms >= options.purge_delay_ms;
    if (c->dirty_slots && idle) purge_chunk(c, c->dirty_slots);
    if (force && c->free_slots == ~uint64_t(0) && !c->dirty_slots) {
      // A wholly free chunk: give the address space back too.
      pagemap::set(c->base, kChunkSize, 0);
      unmap_chunk(c->base);
      *link = c->next;
      c->next = spare_descriptors;
      spare_descriptors = c;
      continue;
    }
    link = &c->next;
  }
  for (Chunk* c = chunks; c && dirty_bytes > kDirtyCap / 2; c = c->next) {
    if (c->dirty_slots) purge_chunk(c, c->dirty_slots);
  }
}

static void maybe_purge_locked(uint64_t now) {
  if (now - last_purge_ms >= options.purge_delay_ms || dirty_bytes > kDirtyCap) purge_locked(false, now);
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
    unsigned free_count = unsigned(__builtin_popcountll(c->free_slots));
    unsigned dirty_count = unsigned(__builtin_popcountll(c->dirty_slots));
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
