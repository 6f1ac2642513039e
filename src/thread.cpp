#include "thread.h"

#include <pthread.h>
#include <unistd.h>

#include <new>

#include "arena.h"
#include "base/lock.h"
#include "heap.h"
#include "large.h"
#include "pagemap.h"
#include "sample.h"
#include "zero.h"
#include "meta.h"
#include "options.h"
#include "os/os.h"
#include "stats.h"

namespace mapalloc {

static SpinLock heaps_lock;
static Heap* all_heaps = nullptr;  // guarded by heaps_lock
static Heap* abandoned = nullptr;  // guarded by heaps_lock
static std::atomic<bool> maybe_abandoned{false};  // a hint, read without the lock
// Written under heaps_lock, read by the statistics without it.
static std::atomic<unsigned long long> heap_count{0}, thread_count{0};
static pthread_key_t exit_key;
// Set when the thread's exit handler has run. A heap it takes after that (a
// later pthread key destructor allocates) is lent for one block only: glibc
// runs key destructors for PTHREAD_DESTRUCTOR_ITERATIONS rounds at most, so a
// heap kept after the last one would never be abandoned.
static __thread bool exited = false;

static std::atomic<int> init_state{0};  // 0: not yet, 1: running, 2: done
static SpinLock init_lock;
static std::atomic<bool> atfork_registered{false};

static void thread_exit(void* arg);
static void before_fork();
static void after_fork_parent();
static void after_fork_child();

void ensure_init() {
  if (MAPALLOC_LIKELY(init_state.load(std::memory_order_acquire) == 2)) return;
  {
    LockGuard guard(init_lock);
    if (init_state.load(std::memory_order_relaxed) != 2) {
      init_state.store(1, std::memory_order_relaxed);
      if (sysconf(_SC_PAGESIZE) != long(os::kPageSize)) fatal("unsupported OS page size");
      load_options_from_environment();
      if (options.verbose) print_options();
      // Before the first page exists: every page's frees then take the slow path.
      if (options.quarantine) pagemap::page_tag = pagemap::kSlowPageTag;
      sample::start_allowances(options.sample);
      uint64_t drawn[5];
      os::random_words(drawn, 5);
      keys.link = drawn[0];
      keys.canary = drawn[1];
      // Both bytes' top bits set, as every canary byte's (canary_word): the
      // record's low byte is the one right after a request that leaves 2
      // bytes of slack, its high byte the one right below the next block,
      // and with slacks under 32768 each then holds a byte over 0x7F, which
      // no NUL or ASCII byte written there equals.
      keys.record = uint16_t(drawn[2] | kCanaryTopBits);
      uintptr_t freed_top = (kFreedRecord ^ keys.record) << 48, low48 = (uintptr_t(1) << 48) - 1;
      // Drawn again in the rare process where a live block's untouched canary
      // bytes would read as a free block's (freed_tail): a 16-byte block's
      // canary xored with the seal decoding to a pointer into its own run (bits
      // 16-46 all zero), or a block's canary sharing the mark's low 48 bits.
      for (;;) {
        keys.seal = (drawn[3] & low48) | freed_top;
        keys.mark = (drawn[4] & low48) | freed_top;
        // (Bits the canary sets whatever the key (kCanaryTopBits) do not count.)
        uintptr_t keyed = ~kCanaryTopBits;
        if (((keys.canary ^ keys.seal) & 0x7FFFFFFF0000ull & keyed) != 0 && ((keys.canary ^ keys.mark) & low48 & keyed) != 0)
          break;
        os::random_words(drawn + 3, 2);
      }
      keys.cookie = keys.link ^ keys.seal;
      if (pthread_key_create(&exit_key, thread_exit) != 0) fatal("cannot create the thread-exit key");
      init_state.store(2, std::memory_order_release);
    }
  }
  // pthread_atfork may call malloc; we are initialised by now, so let it.
  if (!atfork_registered.exchange(true)) pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

Heap* thread_heap_init() {
  ensure_init();
  Heap* heap;
  {
    LockGuard guard(heaps_lock);
    if (!exited) thread_count.fetch_add(1, std::memory_order_relaxed);
    // Not one a fork left behind in this process (lost_in_fork): the block
    // or list its thread was working on may be half done, and its check at
    // exit would be skipped.
    Heap** link = &abandoned;
    while (*link && (*link)->lost_in_fork) link = &(*link)->next_abandoned;
    heap = *link;
    if (heap) {
      *link = heap->next_abandoned;
    } else {
      void* mem = meta::allocate(sizeof(Heap));
      if (!mem) return nullptr;
      heap = new (mem) Heap(&empty_page);
      heap->next_all = all_heaps;
      all_heaps = heap;
      heap_count.fetch_add(1, std::memory_order_relaxed);
    }
    heap->next_abandoned = nullptr;
    heap->owned = true;
  }
  if (exited) return heap;  // lent: the caller gives it back (thread_heap_give_back)
  tls_heap = heap;
  pthread_setspecific(exit_key, heap);
  return heap;
}

static void abandon(Heap* heap) {
  LockGuard guard(heaps_lock);
  heap->owned = false;
  heap->next_abandoned = abandoned;
  abandoned = heap;
  maybe_abandoned.store(true, std::memory_order_relaxed);
}

void thread_heap_give_back(Heap* heap) { abandon(heap); }

static void thread_exit(void* arg) {
  Heap* heap = static_cast<Heap*>(arg);
  if (!heap || heap == &empty_heap) return;
  exited = true;
  heap_collect(heap, true);
  tls_heap = &empty_heap;  // later frees go the remote way, later mallocs borrow a heap
  abandon(heap);
}

// Takes one abandoned heap exclusively, collects it and puts it back.
static bool reclaim_one(Heap* skip_after) {
  Heap* heap;
  {
    LockGuard guard(heaps_lock);
    heap = abandoned;
    if (!heap) maybe_abandoned.store(false, std::memory_order_relaxed);
    if (!heap || heap == skip_after) return false;
    abandoned = heap->next_abandoned;
  }
  heap_collect(heap, true);
  LockGuard guard(heaps_lock);
  heap->next_abandoned = nullptr;
  // Back at the tail, so repeated calls walk the whole list.
  Heap** link = &abandoned;
  while (*link) link = &(*link)->next_abandoned;
  *link = heap;
  return true;
}

void thread_maybe_reclaim_abandoned() {
  static std::atomic<unsigned> calls{0};
  if (!maybe_abandoned.load(std::memory_order_relaxed)) return;
  if ((calls.fetch_add(1, std::memory_order_relaxed) & 15) != 0) return;
  reclaim_one(nullptr);
}

void thread_reclaim_all_abandoned() {
  // One reclaim per heap abandoned now: each takes the front one and puts it
  // back at the tail. Counted, not "until the first one comes round again":
  // a new thread may adopt that one meanwhile, and the walk then went on for
  // as long as that thread lived (mapalloc_collect never returned).
  size_t count = 0;
  {
    LockGuard guard(heaps_lock);
    for (Heap* h = abandoned; h; h = h->next_abandoned) count++;
  }
  for (; count > 0; count--) {
    if (!reclaim_one(nullptr)) break;
  }
}

void heaps_visit(void (*visit)(const Heap*, void*), void* ctx) {
  LockGuard guard(heaps_lock);
  for (Heap* h = all_heaps; h; h = h->next_all) visit(h, ctx);
}

void abandoned_heaps_visit(bool (*visit)(const Heap*, void*), void* ctx) {
  // Not if the lock stays taken: exit may run in a signal handler that
  // interrupted this thread while it held it.
  if (!heaps_lock.try_lock_for_ms(1000)) return;
  for (Heap* h = abandoned; h && visit(h, ctx); h = h->next_abandoned) {
  }
  heaps_lock.unlock();
}

unsigned long long threads_seen() { return thread_count.load(std::memory_order_relaxed); }
unsigned long long heaps_created() { return heap_count.load(std::memory_order_relaxed); }

// fork: every lock is taken before, released in the parent, reset in the
// child. Lock order: heaps, arena, large, zero, sample, meta.
static void before_fork() {
  heaps_lock.lock();
  arena::lock_for_fork();
  large::lock_for_fork();
  zero::lock_for_fork();
  sample::lock_for_fork();
  meta::lock_for_fork();
}

static void after_fork_parent() {
  meta::unlock_for_fork();
  sample::unlock_for_fork();
  zero::unlock_for_fork();
  large::unlock_for_fork();
  arena::unlock_for_fork();
  heaps_lock.unlock();
}

static void after_fork_child() {
  meta::reset_after_fork();
  sample::reset_after_fork();
  zero::reset_after_fork();
  large::reset_after_fork();
  arena::reset_after_fork();
  heaps_lock.reset_after_fork();
  stats_reset_after_fork();
  // Only the forking thread lives on: other threads' heaps are abandoned,
  // and marked: the check at exit and other threads' frees do not look at
  // their blocks (a block their thread was halfway through reads as damage
  // for good: at 2ffecb4, 85 of 3000 children that just exit reported a false
  // overflow, their parent's other thread freeing and allocating), and
  // no thread adopts them (thread_heap_init) to allocate from them.
  for (Heap* h = all_heaps; h; h = h->next_all) {
    // (A heap neither owned nor abandoned, but being edited, was being
    // collected by a thread the fork did not copy: lost too, and off the
    // list it stays.)
    if (h != tls_heap && (h->owned || h->editing)) {
      bool owned = h->owned;
      h->owned = false;
      h->lost_in_fork = true;
      // Its thread was halfway through an edit of its page queues, current
      // pages or quarantine ring (HeapEdit, heap.cpp): not collected either,
      // as a half linked list could hand a page back to the arena twice, or
      // walk off into another's. What the child frees into its pages stays.
      if (h->editing || !owned) continue;
      h->next_abandoned = abandoned;
      abandoned = h;
      // Collected now and then, as other abandoned heaps (reclaim_one): what
      // the child frees into their pages goes back to the arena (a child that
      // freed 100 MB of its parent's worker's blocks kept them for good).
      maybe_abandoned.store(true, std::memory_order_relaxed);
    }
  }
  // The child samples its first requests again (sample.cpp): they must reach
  // the slow path, as a new process's do. And the check at its exit looks
  // at current pages first (heap.cpp): they will be those of the classes it
  // used, where its own latest blocks are. Every heap's it may use, as a
  // forking thread that had none adopts an abandoned one at its first malloc.
  // (Secure builds: there are no samples or check at exit otherwise.)
  if (kCanaries)
    for (Heap* h = all_heaps; h; h = h->next_all)
      if (!h->lost_in_fork) heap_prepare_child_samples(h);
  exit_check_start_in_child();
}

}  // namespace mapalloc
