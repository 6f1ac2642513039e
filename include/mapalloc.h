/* mapalloc: a size-class arena allocator with guarded large blocks.
 *
 * The prefixed C API below is what libmapalloc.a exports. The LD_PRELOAD shim
 * (libmapalloc.so) and the static override archive (libmapalloc-override.a)
 * export the same functions under the standard names (malloc, free, ...).
 * Every function follows the glibc/POSIX semantics of its standard name. */
#ifndef MAPALLOC_H
#define MAPALLOC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MAPALLOC_VERSION "0.1.0"

/* Upper bound on the number of size classes reported in mapalloc_stats. */
#define MAPALLOC_MAX_CLASSES 128

void *mapalloc_malloc(size_t size);
void mapalloc_free(void *ptr);
void *mapalloc_calloc(size_t count, size_t size);
void *mapalloc_realloc(void *ptr, size_t size);
void *mapalloc_reallocarray(void *ptr, size_t count, size_t size);
void *mapalloc_aligned_alloc(size_t alignment, size_t size);
int mapalloc_posix_memalign(void **out, size_t alignment, size_t size);
void *mapalloc_memalign(size_t alignment, size_t size);
void *mapalloc_valloc(size_t size);
void *mapalloc_pvalloc(size_t size);
size_t mapalloc_usable_size(const void *ptr);
void mapalloc_free_sized(void *ptr, size_t size);
void mapalloc_free_aligned_sized(void *ptr, size_t alignment, size_t size);

/* 1 if ptr is the start of a live block handed out by mapalloc, else 0. */
int mapalloc_owns(const void *ptr);

/* Return every unused page and cached large mapping to the OS now. */
void mapalloc_collect(void);

/* Requests larger than this go to their own guarded mapping. */
size_t mapalloc_mmap_threshold(void);
/* Returns 1 on success, 0 if the value is out of range (nothing changes). */
int mapalloc_set_mmap_threshold(size_t bytes);

struct mapalloc_class_stats {
  uint64_t block_size;  /* bytes per block of this class */
  uint64_t requests;    /* allocations served from this class, ever */
  uint64_t live_blocks; /* allocated and not yet freed */
  uint64_t live_bytes;  /* live_blocks * block_size */
  uint64_t pages;       /* arena pages currently holding this class */
};

struct mapalloc_stats {
  uint64_t bytes_mapped;    /* address space taken from the OS (guards included) */
  uint64_t bytes_committed; /* mapped read-write and not purged */
  uint64_t bytes_resident;  /* from /proc/self/statm (whole process) */
  uint64_t small_live_bytes;
  uint64_t small_live_blocks;
  uint64_t small_requests;
  uint64_t arena_pages;       /* pages held by heaps */
  uint64_t arena_free_bytes;  /* committed arena bytes in free pages */
  uint64_t large_live_count;
  uint64_t large_live_bytes;  /* requested bytes of live large blocks */
  uint64_t large_requests;
  uint64_t large_cache_hits;
  uint64_t large_cache_count;
  uint64_t large_cache_bytes;
  uint64_t large_coalesced; /* merges of side-by-side cached large mappings */
  uint64_t purges;        /* madvise calls that released memory */
  uint64_t purged_bytes;
  uint64_t mmap_calls;
  uint64_t munmap_calls;
  uint64_t mprotect_calls;
  uint64_t madvise_calls;
  uint64_t mremap_calls;   /* pages moved by realloc without copying */
  uint64_t threads_seen;
  uint64_t heaps;         /* heap structures created (reused after thread exit) */
  uint32_t class_count;
  struct mapalloc_class_stats classes[MAPALLOC_MAX_CLASSES];
};

void mapalloc_stats_get(struct mapalloc_stats *out);
/* Readable report, written with write(2) without allocating. */
void mapalloc_stats_print(int fd);
void mapalloc_stats_print_json(int fd);

#ifdef __cplusplus
}
#endif

#endif /* MAPALLOC_H */
