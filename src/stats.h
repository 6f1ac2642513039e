// Statistics (stats.cpp): gathered on demand from the heaps, the arena, the
// large cache and the OS layer.
#pragma once
#include "mapalloc.h"

namespace mapalloc {

void gather_stats(mapalloc_stats* out);
// Calls use with fresh statistics, in one static copy under one lock (the
// copy is 5 KiB: kept off small thread stacks). Also for the reports and
// glibc's introspection (preload/override.cpp).
void with_stats(void (*use)(const mapalloc_stats& s, void* ctx), void* ctx);
// Child side of fork: the statistics' locks guard only scratch copies.
void stats_reset_after_fork();

}  // namespace mapalloc
