// Only in the static override archive, not in the shim, and built with
// exceptions. A program that links the archive links a C++ runtime too
// (g++, or -lstdc++), so the archive may use it directly where the shim has
// to look it up (new_delete.cpp): in a static program dlsym finds nothing.
#include <stddef.h>

#include <new>

namespace std {
void __throw_bad_alloc() __attribute__((__noreturn__));
}

// new_delete.cpp binds std::__throw_bad_alloc weakly; in a static program
// nothing else may pull it in.
[[gnu::used]] static void (*const keep_throw_bad_alloc)() = &std::__throw_bad_alloc;

namespace mapalloc {

// For the nothrow forms where a throw may come (a new-handler is set): the
// throwing form, and null for what it throws.
__attribute__((visibility("hidden"))) void* new_caught(size_t size, size_t alignment) noexcept {
  try {
    return alignment ? ::operator new(size, std::align_val_t(alignment)) : ::operator new(size);
  } catch (...) {
    return nullptr;
  }
}

}  // namespace mapalloc
