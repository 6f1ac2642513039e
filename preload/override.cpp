// The standard C names over mapalloc: what LD_PRELOAD=libmapalloc.so and the
// static override archive export. Only forwarding lives here; glibc declares
// these noexcept (__THROW), so we do too.
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>

#include "alloc.h"
#include "stats.h"
#include "mapalloc.h"

using namespace mapalloc;

#define EXPORT extern "C" MAPALLOC_EXPORT

EXPORT void* malloc(size_t size) noexcept { return alloc(size); }
EXPORT void free(void* p) noexcept { dealloc(p); }
EXPORT void* calloc(size_t n, size_t size) noexcept { return alloc_zeroed(n, size); }
EXPORT void* realloc(void* p, size_t size) noexcept { return reallocate(p, size); }
EXPORT void* reallocarray(void* p, size_t n, size_t size) noexcept { return mapalloc_reallocarray(p, n, size); }
EXPORT void* aligned_alloc(size_t alignment, size_t size) noexcept { return mapalloc_aligned_alloc(alignment, size); }
EXPORT int posix_memalign(void** out, size_t alignment, size_t size) noexcept {
  return mapalloc_posix_memalign(out, alignment, size);
}
EXPORT void* memalign(size_t alignment, size_t size) noexcept { return mapalloc_memalign(alignment, size); }
EXPORT void* valloc(size_t size) noexcept { return mapalloc_valloc(size); }
EXPORT void* pvalloc(size_t size) noexcept { return mapalloc_pvalloc(size); }
EXPORT size_t malloc_usable_size(void* p) noexcept { return usable_size(p); }
EXPORT void free_sized(void* p, size_t) noexcept { dealloc(p); }
EXPORT void free_aligned_sized(void* p, size_t, size_t) noexcept { dealloc(p); }
EXPORT void cfree(void* p) noexcept { dealloc(p); }

// glibc's internal names, called directly by some libraries.
EXPORT void* __libc_malloc(size_t size) noexcept { return alloc(size); }
EXPORT void __libc_free(void* p) noexcept { dealloc(p); }
EXPORT void* __libc_calloc(size_t n, size_t size) noexcept { return alloc_zeroed(n, size); }
EXPORT void* __libc_realloc(void* p, size_t size) noexcept { return reallocate(p, size); }
EXPORT void* __libc_memalign(size_t alignment, size_t size) noexcept { return mapalloc_memalign(alignment, size); }
EXPORT void* __libc_valloc(size_t size) noexcept { return mapalloc_valloc(size); }
EXPORT void* __libc_pvalloc(size_t size) noexcept { return mapalloc_pvalloc(size); }

// glibc's malloc introspection, answered with mapalloc's numbers.
EXPORT int malloc_trim(size_t) noexcept {
  mapalloc_collect();
  return 1;
}

EXPORT void malloc_stats(void) noexcept { mapalloc_stats_print(2); }

// glibc's numbers from mapalloc's, gathered under the statistics' own lock
// (stats.h: threads calling these at once must not read each other's
// half-gathered copy; mallinfo2 returned zeros when they did).
static void fill_info2(const mapalloc_stats& s, void* ctx) {
  struct mallinfo2& mi = *static_cast<struct mallinfo2*>(ctx);
  mi.arena = s.bytes_committed - s.large_live_bytes;  // non-mmapped bytes held
  mi.ordblks = s.arena_free_bytes / (64 * 1024);
  mi.hblks = s.large_live_count;
  mi.hblkhd = s.large_live_bytes;
  mi.uordblks = s.small_live_bytes;
  mi.fordblks = s.arena_free_bytes;
  mi.keepcost = s.large_cache_bytes;
}

static struct mallinfo2 info2() {
  struct mallinfo2 mi = {};
  with_stats(fill_info2, &mi);
  return mi;
}

EXPORT struct mallinfo2 mallinfo2(void) noexcept { return info2(); }

EXPORT struct mallinfo mallinfo(void) noexcept {
  struct mallinfo2 m = info2();
  struct mallinfo mi = {};
  auto clamp = [](size_t v) { return v > 0x7fffffff ? 0x7fffffff : int(v); };
  mi.arena = clamp(m.arena);
  mi.ordblks = clamp(m.ordblks);
  mi.hblks = clamp(m.hblks);
  mi.hblkhd = clamp(m.hblkhd);
  mi.uordblks = clamp(m.uordblks);
  mi.fordblks = clamp(m.fordblks);
  mi.keepcost = clamp(m.keepcost);
  return mi;
}

EXPORT int mallopt(int param, int value) noexcept {
  if (param == M_MMAP_THRESHOLD) {
    if (value < 0) return 0;
    size_t v = size_t(value) < kMinThreshold ? kMinThreshold : size_t(value);
    return mapalloc_set_mmap_threshold(v);
  }
  return 1;  // other glibc tunables are accepted and have no meaning here
}

static void write_malloc_info(const mapalloc_stats& s, void* ctx) {
  FILE* fp = static_cast<FILE*>(ctx);
  fprintf(fp, "<malloc version=\"mapalloc-%s\">\n", MAPALLOC_VERSION);
  for (unsigned c = 0; c < s.class_count; c++) {
    const mapalloc_class_stats& cs = s.classes[c];
    if (!cs.requests && !cs.pages) continue;
    fprintf(fp, "<size from=\"%llu\" to=\"%llu\" total=\"%llu\" count=\"%llu\" pages=\"%llu\"/>\n",
            (unsigned long long)(c ? s.classes[c - 1].block_size + 1 : 1), (unsigned long long)cs.block_size,
            (unsigned long long)cs.live_bytes, (unsigned long long)cs.live_blocks, (unsigned long long)cs.pages);
  }
  fprintf(fp, "<total type=\"mmap\" count=\"%llu\" size=\"%llu\"/>\n", (unsigned long long)s.large_live_count,
          (unsigned long long)s.large_live_bytes);
  fprintf(fp, "<system type=\"current\" size=\"%llu\"/>\n", (unsigned long long)s.bytes_committed);
  fprintf(fp, "<system type=\"mapped\" size=\"%llu\"/>\n", (unsigned long long)s.bytes_mapped);
  fprintf(fp, "</malloc>\n");
}

EXPORT int malloc_info(int options, FILE* fp) noexcept {
  if (options != 0 || !fp) {
    errno = EINVAL;
    return -1;
  }
  with_stats(write_malloc_info, fp);
  return 0;
}
