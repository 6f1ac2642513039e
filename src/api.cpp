// The prefixed C API of libmapalloc.a. Each function has the glibc/POSIX
// semantics of its standard name; the shim exports the same under those names.
#include "mapalloc.h"

#include <errno.h>
#include <unistd.h>

#include "alloc.h"
#include "os/os.h"
#include "thread.h"

using namespace mapalloc;

extern "C" {

MAPALLOC_EXPORT void* mapalloc_malloc(size_t size) { return alloc(size); }
MAPALLOC_EXPORT void mapalloc_free(void* p) { dealloc(p); }
MAPALLOC_EXPORT void* mapalloc_calloc(size_t n, size_t size) { return alloc_zeroed(n, size); }
MAPALLOC_EXPORT void* mapalloc_realloc(void* p, size_t size) { return reallocate(p, size); }

MAPALLOC_EXPORT void* mapalloc_reallocarray(void* p, size_t n, size_t size) {
  size_t total;
  if (mul_overflows(n, size, &total)) {
    errno = ENOMEM;
    return nullptr;
  }
  return reallocate(p, total);
}

MAPALLOC_EXPORT int mapalloc_posix_memalign(void** out, size_t alignment, size_t size) {
  if (alignment < sizeof(void*) || !is_pow2(alignment)) return EINVAL;
  int saved = errno;
  void* p = alloc_aligned(alignment, size);
  if (!p) {
    errno = saved;  // posix_memalign reports through its result, not errno
    return ENOMEM;
  }
  *out = p;
  return 0;
}

MAPALLOC_EXPORT void* mapalloc_aligned_alloc(size_t alignment, size_t size) {
  if (!is_pow2(alignment)) {
    errno = EINVAL;
    return nullptr;
  }
  return alloc_aligned(alignment, size);
}

MAPALLOC_EXPORT void* mapalloc_memalign(size_t alignment, size_t size) {
  // glibc rounds a non-power-of-two alignment up to the next power of two,
  // and takes any up to 2^63 (SIZE_MAX / 2 + 1): those too big for memory
  // fail with ENOMEM in alloc_aligned; only larger ones are EINVAL.
  if (alignment > SIZE_MAX / 2 + 1) {
    errno = EINVAL;
    return nullptr;
  }
  if (!is_pow2(alignment)) alignment = alignment < 16 ? 16 : size_t(1) << (log2_floor(alignment) + 1);
  return alloc_aligned(alignment, size);
}

MAPALLOC_EXPORT void* mapalloc_valloc(size_t size) { return alloc_aligned(os::kPageSize, size); }

MAPALLOC_EXPORT void* mapalloc_pvalloc(size_t size) {
  size_t page = os::kPageSize;
  size_t rounded;
  if (add_overflows(size, page - 1, &rounded)) {
    errno = ENOMEM;
    return nullptr;
  }
  rounded &= ~(page - 1);
  return alloc_aligned(page, rounded ? rounded : page);
}

MAPALLOC_EXPORT size_t mapalloc_usable_size(const void* p) { return usable_size(p); }
MAPALLOC_EXPORT void mapalloc_free_sized(void* p, size_t) { dealloc(p); }
MAPALLOC_EXPORT void mapalloc_free_aligned_sized(void* p, size_t, size_t) { dealloc(p); }
MAPALLOC_EXPORT int mapalloc_owns(const void* p) { return owns(p) ? 1 : 0; }
MAPALLOC_EXPORT void mapalloc_collect(void) { collect(); }

MAPALLOC_EXPORT size_t mapalloc_mmap_threshold(void) {
  ensure_init();
  return options.mmap_threshold.load(std::memory_order_relaxed);
}

MAPALLOC_EXPORT int mapalloc_set_mmap_threshold(size_t bytes) {
  ensure_init();
  return set_mmap_threshold(bytes) ? 1 : 0;
}

}  // extern "C"
