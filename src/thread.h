// Layer 5: start-up, thread life and fork.
//
// Heaps are never destroyed. When a thread exits (pthread key destructor),
// its empty pages go back to the arena and the heap, with whatever live
// blocks it still holds, is put on the abandoned list; the next new thread
// adopts it whole, so thousands of short-lived threads reuse a few heaps.
// Frees that arrive after a thread's teardown take the remote path.
#pragma once

namespace mapalloc {

struct Heap;

// Global start-up: options, secrets, the thread-exit key. Idempotent,
// safe against racing threads, allocates nothing.
void ensure_init();
// Gives the calling thread a heap (adopted or new); nullptr if out of memory.
// After the thread's exit handler ran, the heap is only lent (tls_heap stays
// the empty heap): the caller takes one block and gives it back.
Heap* thread_heap_init();
void thread_heap_give_back(Heap* heap);
// Occasionally collects one abandoned heap so memory freed into it by other
// threads returns to the arena even when no new thread adopts it.
void thread_maybe_reclaim_abandoned();
// Collects every abandoned heap now (mapalloc_collect).
void thread_reclaim_all_abandoned();

void heaps_visit(void (*visit)(const Heap*, void*), void* ctx);
// Calls visit on each abandoned heap, in the order they would be adopted,
// until it returns false, under the heap list's lock (no thread adopts one
// meanwhile); nothing if the lock stays taken for a second. For the check
// at exit.
void abandoned_heaps_visit(bool (*visit)(const Heap*, void*), void* ctx);
unsigned long long threads_seen();
unsigned long long heaps_created();

}  // namespace mapalloc
