// Layer 3: memory for allocator metadata (heaps, chunk and large-block
// descriptors). Taken from the OS in 1 MiB mappings, away from user blocks,
// never returned: descriptors are recycled by their owners' free lists, so a
// stale pointer to one always reads valid (if outdated) metadata.
#pragma once
#include <cstddef>

namespace mapalloc::meta {

// Zeroed, 64-byte aligned; nullptr when the OS refuses.
void* allocate(size_t size);
void reset_after_fork();
void lock_for_fork();
void unlock_for_fork();

}  // namespace mapalloc::meta
