// Layer 4: malloc(0). Each call gets a unique 16-byte-aligned address inside
// a PROT_NONE region (mapped 1 MiB at a time, up to 256 MiB), so reading or
// writing a zero-size block faults at once, and free, realloc and
// malloc_usable_size know it through the page map.
// Rare, so one lock guards it all.
#pragma once
#include <cstddef>

namespace mapalloc::zero {

// A fresh zero-size block; nullptr when the region is used up or cannot
// grow (callers fall back to a 16-byte block).
void* alloc();
// Aborts on a double or invalid free.
void free(void* p);
// True if p is a live zero-size block.
bool live(const void* p);

void lock_for_fork();
void unlock_for_fork();
void reset_after_fork();

}  // namespace mapalloc::zero
