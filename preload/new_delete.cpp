// Every C++ operator new/delete form over mapalloc.
//
// Built without exceptions, so that the shim does not depend on a C++
// runtime: loading libstdc++ (and with it libm and libgcc_s) cost every
// process half a millisecond at start, a shell's `cat` as much as a C++
// program. What needs the runtime is needed only when an allocation fails or
// the program replaced a form, and is looked up in the process then (dlsym):
// the new-handler, the throw of std::bad_alloc, and the runtime's own nothrow
// forms, which catch. An exception thrown from here unwinds through these
// frames with their unwind tables alone (-funwind-tables).
#include <dlfcn.h>

#include <atomic>
#include <new>

#include "alloc.h"
#include "base/log.h"
#include "mapalloc.h"

using namespace mapalloc;

// Weak: bound when the program links the runtime (always, in a static C++
// program, where dlsym finds nothing), null otherwise.
namespace std {
void __throw_bad_alloc() __attribute__((__noreturn__, weak));
new_handler get_new_handler() noexcept __attribute__((weak));
}  // namespace std

// Only in the static override archive (static_runtime.cpp), which may catch.
namespace mapalloc {
void* new_caught(size_t size, size_t alignment) noexcept __attribute__((weak, visibility("hidden")));
}

#define EXPORT MAPALLOC_EXPORT

namespace {

// A function of the process's C++ runtime, or null. Searched in the runtimes
// by name first: one loaded with a library opened RTLD_LOCAL (as python3
// opens its modules) is in no global scope. Then after mapalloc, never in
// it (mapalloc's own nothrow forms must not find themselves). Kept once
// found: a C program may load the runtime late, with a C++ library.
void* runtime_function(std::atomic<void*>& found, const char* name, void* linked = nullptr) {
  void* fn = found.load(std::memory_order_acquire);
  if (fn) return fn;
  if (linked) return linked;
  for (const char* runtime : {"libstdc++.so.6", "libc++.so.1"}) {
    if (void* lib = dlopen(runtime, RTLD_LAZY | RTLD_NOLOAD)) {
      fn = dlsym(lib, name);
      dlclose(lib);  // only drops the reference RTLD_NOLOAD took
      if (fn) break;
    }
  }
  if (!fn) fn = dlsym(RTLD_NEXT, name);
  if (fn) found.store(fn, std::memory_order_release);
  return fn;
}

std::new_handler current_new_handler() {
  static std::atomic<void*> get;
  void* fn = runtime_function(get, "_ZSt15get_new_handlerv", reinterpret_cast<void*>(&std::get_new_handler));
  return fn ? reinterpret_cast<std::new_handler (*)()>(fn)() : nullptr;
}

[[noreturn]] void throw_bad_alloc() {
  static std::atomic<void*> thrower;
  if (void* fn = runtime_function(thrower, "_ZSt17__throw_bad_allocv", reinterpret_cast<void*>(&std::__throw_bad_alloc)))
    reinterpret_cast<void (*)()>(fn)();
  fatal("operator new: out of memory, and no C++ runtime in the process to throw std::bad_alloc");
}

void* allocate(size_t size, size_t alignment) {
  return alignment <= 16 ? alloc(size) : alloc_aligned(alignment, size);
}

// Calls the new-handler until memory comes or there is no handler.
void* new_or_throw(size_t size, size_t alignment) {
  for (;;) {
    if (void* p = allocate(size, alignment)) return p;
    std::new_handler handler = current_new_handler();
    if (!handler) throw_bad_alloc();
    handler();
  }
}

MAPALLOC_INLINE void* new_fast(size_t size) {
  void* p = alloc(size);
  return MAPALLOC_LIKELY(p) ? p : new_or_throw(size, 0);
}

// Whether the process's throwing forms are all these (not a program's
// replacements): 1 yes, 2 no, 0 not known yet. Looked up once: definitions
// loaded later do not take the place of those found first.
std::atomic<int> own_throwing_forms{0};

bool throwing_forms_are_ours() {
  int known = own_throwing_forms.load(std::memory_order_relaxed);
  if (MAPALLOC_LIKELY(known)) return known == 1;
  // (In a static program dladdr and dlsym find nothing, and nothing else can
  // define these.)
  Dl_info here, there;
  bool ours = true;
  if (dladdr(reinterpret_cast<void*>(&new_or_throw), &here)) {
    for (const char* name : {"_Znwm", "_Znam", "_ZnwmSt11align_val_t", "_ZnamSt11align_val_t"}) {
      void* fn = dlsym(RTLD_DEFAULT, name);
      if (fn && !(dladdr(fn, &there) && there.dli_fbase == here.dli_fbase)) ours = false;
    }
  }
  own_throwing_forms.store(ours ? 1 : 2, std::memory_order_relaxed);
  return ours;
}

// The nothrow forms return null where the throwing forms throw. They cannot
// catch, so where a throw may come (a new-handler is set, or the program
// replaced a throwing form, which [new.delete] says these call) they hand
// over to the runtime's own nothrow form, which calls the throwing one and
// catches; in the static archive, to new_caught. Failing both (a runtime
// this does not know) they call the handler themselves, and what it throws
// goes through.
template <typename... Align>
void* nothrow_new(size_t size, std::atomic<void*>& runtime_form, const char* name, Align... al) {
  size_t alignment = (0 + ... + size_t(al));
  if (MAPALLOC_LIKELY(throwing_forms_are_ours())) {
    void* p = allocate(size, alignment);
    if (MAPALLOC_LIKELY(p) || !current_new_handler()) return p;
  }
  if (new_caught) return new_caught(size, alignment);
  if (void* fn = runtime_function(runtime_form, name))
    return reinterpret_cast<void* (*)(size_t, Align..., const std::nothrow_t&)>(fn)(size, al..., std::nothrow_t{});  // not std::nothrow, the runtime's
  for (;;) {
    if (void* p = allocate(size, alignment)) return p;
    std::new_handler handler = current_new_handler();
    if (!handler) return nullptr;
    handler();
  }
}

std::atomic<void*> runtime_new, runtime_new_array, runtime_new_aligned, runtime_new_array_aligned;

}  // namespace

// Only the four basic forms allocate and free. The others call them as
// [new.delete] specifies (and libstdc++ does), through the dynamic symbol:
// a program that replaces just operator new(size_t) and operator
// delete(void*) gets its own for new[] and the sized forms too, not
// mapalloc's, which would not know its pointers. (In the shim these calls
// are interposable: they go through the PLT, one indirect jump.)
EXPORT void* operator new(size_t size) { return new_fast(size); }
EXPORT void* operator new(size_t size, std::align_val_t al) { return new_or_throw(size, size_t(al)); }
EXPORT void operator delete(void* p) noexcept { dealloc(p); }
EXPORT void operator delete(void* p, std::align_val_t) noexcept { dealloc(p); }

EXPORT void* operator new[](size_t size) { return ::operator new(size); }
EXPORT void* operator new[](size_t size, std::align_val_t al) { return ::operator new(size, al); }
EXPORT void* operator new(size_t size, const std::nothrow_t&) noexcept {
  return nothrow_new(size, runtime_new, "_ZnwmRKSt9nothrow_t");
}
EXPORT void* operator new[](size_t size, const std::nothrow_t&) noexcept {
  return nothrow_new(size, runtime_new_array, "_ZnamRKSt9nothrow_t");
}
EXPORT void* operator new(size_t size, std::align_val_t al, const std::nothrow_t&) noexcept {
  return nothrow_new(size, runtime_new_aligned, "_ZnwmSt11align_val_tRKSt9nothrow_t", al);
}
EXPORT void* operator new[](size_t size, std::align_val_t al, const std::nothrow_t&) noexcept {
  return nothrow_new(size, runtime_new_array_aligned, "_ZnamSt11align_val_tRKSt9nothrow_t", al);
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
