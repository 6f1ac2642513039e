// Statistics: per-thread counters merged on demand, plus the arena's, the
// large cache's and the OS layer's. Reports are written with write(2).
#include <unistd.h>

#include "arena.h"
#include "base/lock.h"
#include "base/log.h"
#include "heap.h"
#include "large.h"
#include "mapalloc.h"
#include "options.h"
#include "os/os.h"
#include "stats.h"
#include "thread.h"

namespace mapalloc {

// Per class c, summed over heaps and pages:
//   pending  = remote frees not yet collected by the pages' owners
//   live     = allocated - freed - pending
//   requests = allocated
struct ClassSums {
  uint64_t allocated[kNumClasses], freed[kNumClasses], collected[kNumClasses];
  uint64_t remote[kNumClasses], pages[kNumClasses];
};

// Each guards a scratch copy that its holder fills from scratch (static: too
// big for small thread stacks), so a forked child may simply reset them: a
// thread reading the statistics when another forked held its lock in the
// child for ever (thread.cpp calls stats_reset_after_fork).
static SpinLock sums_lock, report_lock;
static mapalloc_stats report;  // under report_lock

void stats_reset_after_fork() {
  sums_lock.reset_after_fork();
  report_lock.reset_after_fork();
}


static void add_heap(const Heap* h, void* ctx) {
  auto* s = static_cast<ClassSums*>(ctx);
  for (unsigned c = 0; c < kNumClasses; c++) {
    // freed first: release_page adds a page's allocated count before its
    // freed count, so a page released meanwhile is counted out, not back.
    s->freed[c] += h->stats.freed[c].load(std::memory_order_relaxed);
    s->allocated[c] += h->stats.allocated[c].load(std::memory_order_relaxed);
    s->collected[c] += h->stats.collected[c].load(std::memory_order_relaxed);
    s->remote[c] += h->stats.remote_frees[c].load(std::memory_order_relaxed);
  }
}

static void add_page(const Page* p, void* ctx) {
  auto* s = static_cast<ClassSums*>(ctx);
  unsigned c = p->size_class;
  s->freed[c] += p->freed_count();  // first: see Page::freed_count
  s->allocated[c] += p->allocated.load(std::memory_order_relaxed);
  s->collected[c] += p->collected.load(std::memory_order_relaxed);
  s->pages[c]++;
}

void gather_stats(mapalloc_stats* out) {
  ensure_init();  // the fork handlers: this takes the arena's lock, maybe before any malloc
  __builtin_memset(out, 0, sizeof(*out));
  static ClassSums sums;  // static: too big for small thread stacks
  LockGuard guard(sums_lock);
  __builtin_memset(&sums, 0, sizeof(sums));
  heaps_visit(add_heap, &sums);
  arena::visit_pages(add_page, &sums);
  out->class_count = kNumClasses;
  for (unsigned c = 0; c < kNumClasses; c++) {
    uint64_t remote = sums.remote[c];
    for (const OrphanShard& shard : orphan_frees) remote += shard.frees[c].load(std::memory_order_relaxed);
    uint64_t pending = remote > sums.collected[c] ? remote - sums.collected[c] : 0;
    // Read while other threads run, the sums are a moment's approximation (a
    // page released between the heap's counters and the arena's pages can
    // be missed or counted twice): never below 0.
    uint64_t out_blocks = sums.allocated[c] > sums.freed[c] ? sums.allocated[c] - sums.freed[c] : 0;
    uint64_t live = out_blocks > pending ? out_blocks - pending : 0;
    mapalloc_class_stats& cs = out->classes[c];
    cs.block_size = kClasses[c].block_size;
    cs.requests = sums.allocated[c];
    cs.live_blocks = live;
    cs.live_bytes = live * cs.block_size;
    cs.pages = sums.pages[c];
    out->small_requests += cs.requests;
    out->small_live_blocks += live;
    out->small_live_bytes += cs.live_bytes;
  }
  arena::Usage a = arena::usage();
  large::Usage l = large::usage();
  out->arena_pages = a.pages_in_use;
  out->arena_free_bytes = a.dirty_free_bytes;
  out->large_live_count = l.live_count;
  out->large_live_bytes = l.live_bytes;
  out->large_requests = l.requests;
  out->large_cache_hits = l.cache_hits;
  out->large_cache_count = l.cache_count;
  out->large_cache_bytes = l.cache_bytes;
  out->large_coalesced = l.coalesced;
  out->bytes_mapped = os::counters.mapped.load(std::memory_order_relaxed);
  // Committed: arena slots in use or not yet purged, plus large mappings
  // minus their guards and purged cache entries (approximate for those).
  out->bytes_committed = (a.slots_in_use * kSlotSize + a.dirty_free_bytes) + l.mapped_bytes;
  out->bytes_resident = os::resident_bytes();
  out->purges = os::counters.purges.load(std::memory_order_relaxed);
  out->purged_bytes = os::counters.purged_bytes.load(std::memory_order_relaxed);
  out->mmap_calls = os::counters.mmap_calls.load(std::memory_order_relaxed);
  out->munmap_calls = os::counters.munmap_calls.load(std::memory_order_relaxed);
  out->mprotect_calls = os::counters.mprotect_calls.load(std::memory_order_relaxed);
  out->madvise_calls = os::counters.madvise_calls.load(std::memory_order_relaxed);
  out->mremap_calls = os::counters.mremap_calls.load(std::memory_order_relaxed);
  out->threads_seen = threads_seen();
  out->heaps = heaps_created();
}

void with_stats(void (*use)(const mapalloc_stats& s, void* ctx), void* ctx) {
  LockGuard guard(report_lock);
  gather_stats(&report);
  use(report, ctx);
}

static void row(LineBuffer& b, int fd, const char* name, uint64_t v, bool as_bytes) {
  b.str("  ").str(name).pad_to(24);
  if (as_bytes) {
    b.bytes(v).str(" (").dec(v).str(")");
  } else {
    b.dec(v);
  }
  b.str("\n").flush(fd);
}

static void print_text(const mapalloc_stats& s, void* ctx) {
  int fd = *static_cast<int*>(ctx);
  LineBuffer b;
  b.str("mapalloc statistics\n").flush(fd);
  row(b, fd, "mapped", s.bytes_mapped, true);
  row(b, fd, "committed", s.bytes_committed, true);
  row(b, fd, "resident (process)", s.bytes_resident, true);
  row(b, fd, "small live", s.small_live_bytes, true);
  row(b, fd, "small live blocks", s.small_live_blocks, false);
  row(b, fd, "small requests", s.small_requests, false);
  row(b, fd, "arena pages", s.arena_pages, false);
  row(b, fd, "arena free resident", s.arena_free_bytes, true);
  row(b, fd, "large live", s.large_live_bytes, true);
  row(b, fd, "large live blocks", s.large_live_count, false);
  row(b, fd, "large requests", s.large_requests, false);
  row(b, fd, "large cache hits", s.large_cache_hits, false);
  row(b, fd, "large cached", s.large_cache_bytes, true);
  row(b, fd, "large cached blocks", s.large_cache_count, false);
  row(b, fd, "large coalesced", s.large_coalesced, false);
  row(b, fd, "purges", s.purges, false);
  row(b, fd, "purged", s.purged_bytes, true);
  row(b, fd, "mmap calls", s.mmap_calls, false);
  row(b, fd, "munmap calls", s.munmap_calls, false);
  row(b, fd, "mprotect calls", s.mprotect_calls, false);
  row(b, fd, "madvise calls", s.madvise_calls, false);
  row(b, fd, "mremap calls", s.mremap_calls, false);
  row(b, fd, "threads seen", s.threads_seen, false);
  row(b, fd, "heaps", s.heaps, false);
  b.str("  class  block size    requests  live blocks    live bytes  pages\n").flush(fd);
  for (unsigned c = 0; c < s.class_count; c++) {
    const mapalloc_class_stats& cs = s.classes[c];
    if (!cs.requests && !cs.pages) continue;
    b.str("  ").dec(c).pad_to(9).dec(cs.block_size).pad_to(22).dec(cs.requests).pad_to(35).dec(cs.live_blocks)
        .pad_to(49).dec(cs.live_bytes).pad_to(60).dec(cs.pages).str("\n").flush(fd);
  }
}

void print_stats(int fd) { with_stats(print_text, &fd); }

static void print_json(const mapalloc_stats& s, void* ctx) {
  int fd = *static_cast<int*>(ctx);
  LineBuffer b;
  auto field = [&](const char* name, uint64_t v) { b.str("\"").str(name).str("\":").dec(v).str(","); };
  b.str("{");
  field("bytes_mapped", s.bytes_mapped);
  field("bytes_committed", s.bytes_committed);
  field("bytes_resident", s.bytes_resident);
  field("small_live_bytes", s.small_live_bytes);
  field("small_live_blocks", s.small_live_blocks);
  field("small_requests", s.small_requests);
  field("arena_pages", s.arena_pages);
  field("arena_free_bytes", s.arena_free_bytes);
  b.flush(fd);
  field("large_live_count", s.large_live_count);
  field("large_live_bytes", s.large_live_bytes);
  field("large_requests", s.large_requests);
  field("large_cache_hits", s.large_cache_hits);
  field("large_cache_count", s.large_cache_count);
  field("large_cache_bytes", s.large_cache_bytes);
  field("large_coalesced", s.large_coalesced);
  field("purges", s.purges);
  field("purged_bytes", s.purged_bytes);
  b.flush(fd);
  field("mmap_calls", s.mmap_calls);
  field("munmap_calls", s.munmap_calls);
  field("mprotect_calls", s.mprotect_calls);
  field("madvise_calls", s.madvise_calls);
  field("mremap_calls", s.mremap_calls);
  field("threads_seen", s.threads_seen);
  field("heaps", s.heaps);
  b.str("\"classes\":[").flush(fd);
  bool first = true;
  for (unsigned c = 0; c < s.class_count; c++) {
    const mapalloc_class_stats& cs = s.classes[c];
    if (!cs.requests && !cs.pages) continue;
    if (!first) b.str(",");
    first = false;
    b.str("{\"block_size\":").dec(cs.block_size).str(",\"requests\":").dec(cs.requests);
    b.str(",\"live_blocks\":").dec(cs.live_blocks).str(",\"live_bytes\":").dec(cs.live_bytes);
    b.str(",\"pages\":").dec(cs.pages).str("}").flush(fd);
  }
  b.str("]}\n").flush(fd);
}

void print_stats_json(int fd) { with_stats(print_json, &fd); }

// stats=1: the report at exit (a destructor, not atexit, which may allocate).
__attribute__((destructor)) static void print_stats_at_exit() {
  if (options.stats) print_stats(2);
}

}  // namespace mapalloc

using namespace mapalloc;
extern "C" {
MAPALLOC_EXPORT void mapalloc_stats_get(struct mapalloc_stats* out) { gather_stats(out); }
MAPALLOC_EXPORT void mapalloc_stats_print(int fd) { print_stats(fd); }
MAPALLOC_EXPORT void mapalloc_stats_print_json(int fd) { print_stats_json(fd); }
}
