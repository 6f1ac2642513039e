// Every C++ operator new/delete form over mapalloc. Kept apart from
// override.cpp because throwing std::bad_alloc needs exceptions.
#include <new>

#include "alloc.h"
#include "mapalloc.h"

using namespace mapalloc;

#define EXPORT MAPALLOC_EXPORT

// Calls the new-handler until memory comes or there is no handler.
static void* new_or_throw(size_t size, size_t alignment) {
  for (;;) {
    void* p = alignment <= 16 ? alloc(size) : alloc_aligned(alignment, size);
    if (MAPALLOC_LIKELY(p)) return p;
    std::new_handler handler = std::get_new_handler();
    if (!handler) throw std::bad_alloc();
    handler();
  }
}

static MAPALLOC_INLINE void* new_fast(size_t size) {
  void* p = alloc(size);
  return MAPALLOC_LIKELY(p) ? p : new_or_throw(size, 0);
}

// Only the four basic forms allocate and free. The others call them as
// [new.delete] specifies (and libstdc++ does), through the dynamic symbol:
// a program that replaces just operator new(size_t) and operator
// delete(void*) gets its own for new[], the nothrow and the sized forms too,
// not mapalloc's, which would not know its pointers. (In the shim these
// calls are interposable: they go through the PLT, one indirect jump.)
EXPORT void* operator new(size_t size) { return new_fast(size); }
EXPORT void* operator new(size_t size, std::align_val_t al) { return new_or_throw(size, size_t(al)); }
EXPORT void operator delete(void* p) noexcept { dealloc(p); }
EXPORT void operator delete(void* p, std::align_val_t) noexcept { dealloc(p); }

// The nothrow forms: the throwing form's block, or nullptr where it throws.
template <typename New>
static void* or_null(New make) noexcept {
  try {
    return make();
  } catch (...) {
    return nullptr;
  }
}

EXPORT void* operator new[](size_t size) { return ::operator new(size); }
EXPORT void* operator new(size_t size, const std::nothrow_t&) noexcept {
  return or_null([=] { return ::operator new(size); });
}
EXPORT void* operator new[](size_t size, const std::nothrow_t&) noexcept {
  return or_null([=] { return ::operator new[](size); });
}
EXPORT void* operator new[](size_t size, std::align_val_t al) { return ::operator new(size, al); }
EXPORT void* operator new(size_t size, std::align_val_t al, const std::nothrow_t&) noexcept {
  return or_null([=] { return ::operator new(size, al); });
}
EXPORT void* operator new[](size_t size, std::align_val_t al, const std::nothrow_t&) noexcept {
  return or_null([=] { return ::operator new[](size, al); });
}

EXPORT void operator delete[](void* p) noexcept { ::operator delete(p); }
EXPORT void operator delete(void* p, const std::nothrow_t&) noexcept { ::operator delete(p); }
EXPORT void operator delete[](void* p, const std::nothrow_t&) noexcept { ::operator delete[](p); }
EXPORT void operator delete(void* p, size_t) noexcept { ::operator delete(p); }
EXPORT void operator delete[](void* p, size_t) noexcept { ::operator delete[](p); }
EXPORT void operator delete[](void* p, std::align_val_t al) noexcept { ::operator delete(p, al); }
EXPORT void operator delete(void* p, std::align_val_t al, const std::nothrow_t&) noexcept { ::operator delete(p, al); }
EXPORT void operator delete[](void* p, std::align_val_t al, const std::nothrow_t&) noexcept {
  ::operator delete[](p, al);
}
EXPORT void operator delete(void* p, size_t, std::align_val_t al) noexcept { ::operator delete(p, al); }
EXPORT void operator delete[](void* p, size_t, std::align_val_t al) noexcept { ::operator delete[](p, al); }
