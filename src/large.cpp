#include "large.h"

#include <errno.h>

#include <new>

#include "base/bits.h"
#include "base/lock.h"
#include "base/log.h"
#include "meta.h"
#include "options.h"
#include "os/os.h"
#include "pagemap.h"

namespace mapalloc::large {

constexpr size_t kGuard = os::kPageSize;
constexpr size_t kMaxCached = 64;

static SpinLock lock;
// All guarded by lock.
static LargeBlock* cache_head = nullptr;  // most recently freed first
static LargeBlock* cache_tail = nullptr;
static size_t cache_count = 0, cache_bytes = 0;
static LargeBlock* spare = nullptr;
static uint64_t live_count = 0, live_bytes = 0, requests = 0, cache_hits = 0, mapped_bytes = 0;
static uint64_t last_purge_ms = 0;
static size_t cache_dirty = 0;  // resident bytes of cached blocks
// Resident cache beyond this is purged at once (oldest first); the mappings
// stay cached with their guards, so reuse costs faults but no syscalls.
static constexpr size_t kDirtyCap = 8 << 20;

static size_t dirty_size(const LargeBlock* b) { return size_t(b->inner_end() - b->dirty_from); }

static void purge_block(LargeBlock* b) {
  char* lo = reinterpret_cast<char*>(align_down(reinterpret_cast<uintptr_t>(b->dirty_from), os::kPageSize));
  if (lo < b->inner_end()) os::purge(lo, size_t(b->inner_end() - lo));
  cache_dirty -= dirty_size(b);
  b->dirty_from = b->inner_end();
}

static void cache_unlink(LargeBlock* b) {
  (b->prev ? b->prev->next : cache_head) = b->next;
  (b->next ? b->next->prev : cache_tail) = b->prev;
  b->next = b->prev = nullptr;
  cache_count--;
  cache_bytes -= b->map_size;
  cache_dirty -= dirty_size(b);
}

static void cache_push_front(LargeBlock* b) {
  b->prev = nullptr;
  b->next = cache_head;
  (cache_head ? cache_head->prev : cache_tail) = b;
  cache_head = b;
  cache_count++;
  cache_bytes += b->map_size;
  cache_dirty += dirty_size(b);
}

// Releases a descriptor's mapping; lock held.
static void release(LargeBlock* b) {
  os::unmap(b->map_base, b->map_size);
  mapped_bytes -= b->map_size;
  b->next = spare;
  spare = b;
}

static LargeBlock* new_descriptor() {
  LargeBlock* b = spare;
  if (b) {
    spare = b->next;
    return b;
  }
  return static_cast<LargeBlock*>(meta::allocate(sizeof(LargeBlock)));
}

// Best-fitting cached mapping for an inner size, wasting at most 1/4.
static LargeBlock* cache_take(size_t inner) {
  LargeBlock* best = nullptr;
  for (LargeBlock* b = cache_head; b; b = b->next) {
    size_t have = size_t(b->inner_end() - b->inner_begin());
    if (have < inner || have - inner > inner / 4) continue;
    if (b->guarded != options.guard) continue;
    if (!best || b->map_size < best->map_size) best = b;
  }
  if (best) cache_unlink(best);
  return best;
}

static void purge_locked(bool force, uint64_t now) {
  last_purge_ms = now;
  // Oldest at the tail: purge those idle past the delay, unmap those idle
  // ten delays (or everything when forced).
  uint64_t delay = options.purge_delay_ms;
  for (LargeBlock* b = cache_tail; b;) {
    LargeBlock* prev = b->prev;
    uint64_t idle = now - b->cached_at_ms;
    if (force || idle >= 10 * delay + 100) {
      cache_unlink(b);
      release(b);
    } else if ((idle >= delay || cache_dirty > kDirtyCap) && b->dirty_from < b->inner_end()) {
      purge_block(b);
    }
    b = prev;
  }
}

void* alloc(size_t size, size_t alignment, bool zero) {
  size_t usable = align_up(size, 16);
  size_t extra = alignment > kGuard ? alignment : 0;
  size_t inner;
  if (usable < size || add_overflows(align_up(usable, kGuard), extra, &inner) || inner > (size_t(1) << 46)) {
    errno = ENOMEM;
    return nullptr;
  }
  bool guarded = options.guard;
  uint64_t now = os::now_ms();
  lock.lock();
  requests++;
  LargeBlock* b = cache_take(inner);
  bool hit = b != nullptr;
  if (hit) {
    cache_hits++;
  } else {
    b = new_descriptor();
  }
  lock.unlock();
  if (!b) {
    errno = ENOMEM;
    return nullptr;
  }
  if (!hit) {
    size_t total = inner + (guarded ? 2 * kGuard : 0);
    char* base;
    if (guarded) {
      base = static_cast<char*>(os::reserve(total));
      if (base && !os::protect_rw(base + kGuard, inner)) {
        os::unmap(base, total);
        base = nullptr;
      }
    } else {
      base = static_cast<char*>(os::map(total));
    }
    if (!base) {
      LockGuard guard(lock);
      b->next = spare;
      spare = b;
      errno = ENOMEM;
      return nullptr;
    }
    b->map_base = base;
    b->map_size = total;
    b->guarded = guarded;
    b->dirty_from = b->inner_end();  // fresh pages read as zero
    LockGuard guard(lock);
    mapped_bytes += total;
  }
  char* user = reinterpret_cast<char*>(
      align_down(reinterpret_cast<uintptr_t>(b->inner_end() - usable), alignment < 16 ? 16 : alignment));
  if (zero && b->dirty_from < b->inner_end()) {
    char* from = user > b->dirty_from ? user : b->dirty_from;
    __builtin_memset(from, 0, size_t(b->inner_end() - from));
  }
  if (user < b->dirty_from) b->dirty_from = user;
  b->user = user;
  b->size = size;
  b->live = true;
  b->next = b->prev = nullptr;
  if (!pagemap::set(user, 1, reinterpret_cast<uintptr_t>(b) | pagemap::kLargeTag)) {
    LockGuard guard(lock);
    b->live = false;
    b->user = nullptr;
    release(b);
    errno = ENOMEM;
    return nullptr;
  }
  LockGuard guard(lock);
  live_count++;
  live_bytes += size;
  if (now - last_purge_ms >= options.purge_delay_ms) purge_locked(false, now);
  return user;
}

void free(LargeBlock* b, void* p) {
  if (MAPALLOC_UNLIKELY(!b->live)) fatal("double free of large block", p);
  if (MAPALLOC_UNLIKELY(p != b->user)) fatal("invalid free (interior pointer into large block)", p);
  pagemap::set(b->user, 1, 0);
  uint64_t now = os::now_ms();
  LockGuard guard(lock);
  live_count--;
  live_bytes -= b->size;
  b->live = false;
  b->user = nullptr;
  size_t bound = options.large_cache;
  if (b->map_size > bound / 4 || b->guarded != options.guard) {
    release(b);  // too big to be worth caching
  } else {
    b->cached_at_ms = now;
    cache_push_front(b);
    while (cache_bytes > bound || cache_count > kMaxCached) {
      LargeBlock* old = cache_tail;
      cache_unlink(old);
      release(old);
    }
  }
  if (now - last_purge_ms >= options.purge_delay_ms || cache_dirty > kDirtyCap) purge_locked(false, now);
}

size_t usable_size(const LargeBlock* b) { return size_t(b->inner_end() - b->user); }

void* try_resize_in_place(LargeBlock* b, size_t new_size) {
  // Shrinking a little or growing into the alignment slack keeps the block.
  size_t have = usable_size(b);
  if (new_size <= have && new_size >= have / 2) {
    LockGuard guard(lock);
    live_bytes = live_bytes - b->size + new_size;
    b->size = new_size;
    return b->user;
  }
  return nullptr;
}

void purge(bool force) {
  uint64_t now = os::now_ms();
  LockGuard guard(lock);
  purge_locked(force, now);
}

Usage usage() {
  LockGuard guard(lock);
  return Usage{live_count, live_bytes, requests, cache_hits, cache_count, cache_bytes, mapped_bytes};
}

void lock_for_fork() { lock.lock(); }
void unlock_for_fork() { lock.unlock(); }
void reset_after_fork() { lock.reset_after_fork(); }

}  // namespace mapalloc::large
