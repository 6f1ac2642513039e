// Every C++ operator new/delete form over mapalloc.
//
// Without a C++ runtime of its own: loading libstdc++ (and with it libm and
// libgcc_s) cost every process half a millisecond at start, a shell's `cat`
// as much as a C++ program. What needs the runtime is needed only when an
// allocation fails or the program replaced a form, and then it is the
// program's: bound weakly (a C++ program has its runtime loaded before the
// shim is relocated), or looked up when first needed (a C program may load
// one later, with a C++ library). An exception thrown from here unwinds
// through these frames with their unwind tables; only new_caught catches.
// The fast paths make no call into the dynamic loader, which may be busy
// in another thread (a dlopen running a library's constructors).
#include <dlfcn.h>

#include <atomic>
#include <new>

#include "alloc.h"
#include "base/log.h"
#include "mapalloc.h"

using namespace mapalloc;

// Weak, so that nothing here makes the shim need a runtime: null unless the
// process has one in its global scope (or, in a static program, links it:
// static_runtime.cpp sees that it does).
namespace std {
void __throw_bad_alloc() __attribute__((__noreturn__, weak));
new_handler get_new_handler() noexcept __attribute__((weak));
}  // namespace std
// What new_caught's catch calls. Only GCC makes these references weak
// (clang's are strong whatever they are declared), so only GCC builds have
// new_caught (meson.build: -fexceptions).
#ifdef __EXCEPTIONS
extern "C" {
int __gxx_personality_v0();  // only its address is used
void* __cxa_begin_catch(void*) noexcept;
void __cxa_end_catch();
}
#pragma weak __gxx_personality_v0
#pragma weak __cxa_begin_catch
#pragma weak __cxa_end_catch
#endif
// The loader's too: a static program that links dlopen gets a warning from
// the linker, and has no use for them.
#pragma weak dlopen
#pragma weak dlsym

#define EXPORT MAPALLOC_EXPORT

namespace {

// A function of a C++ runtime in the process but not in its global scope, or
// null: one loaded with a library opened RTLD_LOCAL (as python3 opens its
// modules), or after mapalloc in the search order. With `load`, the system's
// libstdc++ is loaded if none is found: a C program may call operator new
// from a library that links its own runtime statically, and a bad_alloc from
// that runtime's twin is caught there as its own. Kept once found, with the
// runtime's handle (never closed).
void* runtime_function(std::atomic<void*>& found, const char* name, bool load = false) {
  void* fn = found.load(std::memory_order_acquire);
  if (fn || !dlsym) return fn;
  for (const char* runtime : {"libstdc++.so.6", "libc++.so.1"})
    if (void* lib = dlopen ? dlopen(runtime, RTLD_LAZY | RTLD_NOLOAD) : nullptr)
      if ((fn = dlsym(lib, name))) break;
  if (!fn) fn = dlsym(RTLD_NEXT, name);
  if (!fn && load && dlopen)
    if (void* lib = dlopen("libstdc++.so.6", RTLD_LAZY)) fn = dlsym(lib, name);
  if (fn) found.store(fn, std::memory_order_release);
  return fn;
}

std::new_handler current_new_handler() {
  if (std::get_new_handler) return std::get_new_handler();
  static std::atomic<void*> get;
  void* fn = runtime_function(get, "_ZSt15get_new_handlerv");
  return fn ? reinterpret_cast<std::new_handler (*)()>(fn)() : nullptr;
}

[[noreturn]] void throw_bad_alloc() {
  if (std::__throw_bad_alloc) std::__throw_bad_alloc();
  static std::atomic<void*> thrower;
  if (void* fn = runtime_function(thrower, "_ZSt17__throw_bad_allocv", true)) reinterpret_cast<void (*)()>(fn)();
  fatal("operator new: out of memory, and no C++ runtime to throw std::bad_alloc");
}

void* allocate(size_t size, size_t alignment) {
  return alignment <= 16 ? alloc(size) : alloc_aligned(alignment, size);
}

// Calls the new-handler until memory comes, or null when there is no handler.
void* allocate_with_handler(size_t size, size_t alignment) {
  for (;;) {
    if (void* p = allocate(size, alignment)) return p;
    std::new_handler handler = current_new_handler();
    if (!handler) return nullptr;
    handler();
  }
}

void* new_or_throw(size_t size, size_t alignment) {
  if (void* p = allocate_with_handler(size, alignment)) return p;
  throw_bad_alloc();
}

MAPALLOC_INLINE void* new_fast(size_t size) {
  void* p = alloc(size);
  return MAPALLOC_LIKELY(p) ? p : new_or_throw(size, 0);
}

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

namespace {

// mapalloc's own throwing forms, by local names (aliases): the names
// ::operator new etc. may be bound to a program's replacements. Only their
// addresses are used (hence not the attributes of the targets).
#pragma GCC diagnostic push
#ifndef __clang__
#pragma GCC diagnostic ignored "-Wmissing-attributes"
#endif
void* own_new(size_t) __attribute__((alias("_Znwm"), visibility("hidden")));
void* own_new_array(size_t) __attribute__((alias("_Znam"), visibility("hidden")));
void* own_new_aligned(size_t, std::align_val_t) __attribute__((alias("_ZnwmSt11align_val_t"), visibility("hidden")));
void* own_new_array_aligned(size_t, std::align_val_t)
    __attribute__((alias("_ZnamSt11align_val_t"), visibility("hidden")));
#pragma GCC diagnostic pop

template <typename F>
bool same(F bound, F own) {
  void* a = reinterpret_cast<void*>(bound);
  asm("" : "+r"(a));  // the bound address, as loaded, not folded with own
  return a == reinterpret_cast<void*>(own);
}

// Whether the process's throwing forms are all these: their dynamic symbols
// (read from the GOT) against the local names.
bool throwing_forms_are_ours() {
  static std::atomic<int> known{0};  // 1 yes, 2 no
  int k = known.load(std::memory_order_relaxed);
  if (MAPALLOC_LIKELY(k)) return k == 1;
  using New = void* (*)(size_t);
  using NewAligned = void* (*)(size_t, std::align_val_t);
  bool ours = same<New>(&::operator new, own_new) && same<New>(&::operator new[], own_new_array) &&
              same<NewAligned>(&::operator new, own_new_aligned) &&
              same<NewAligned>(&::operator new[], own_new_array_aligned);
  known.store(ours ? 1 : 2, std::memory_order_relaxed);
  return ours;
}

// The throwing form (through its dynamic symbol), and null for what it
// throws; false without a runtime bound, which the catch needs.
template <bool kArray, typename... Align>
MAPALLOC_NOINLINE bool new_caught(void** out, size_t size, Align... al) noexcept {
#ifdef __EXCEPTIONS
  if (!__gxx_personality_v0 || !__cxa_begin_catch || !__cxa_end_catch) return false;
  try {
    *out = kArray ? ::operator new[](size, al...) : ::operator new(size, al...);
  } catch (...) {
    *out = nullptr;
  }
  return true;
#else
  (void)out, (void)size, ((void)al, ...);
  return false;
#endif
}

// The nothrow forms return null where the throwing forms throw. Where a
// throw may come (a new-handler is set, or the program replaced a throwing
// form, which [new.delete] says these call) they call the throwing form and
// catch, with the program's runtime. Without one bound (a C program that
// loaded C++ code later) they call that runtime's own nothrow form, which
// does the same (libstdc++ since GCC 9, libc++); failing that, the handler
// themselves, and what it throws goes through.
template <bool kArray, typename... Align>
void* nothrow_new(size_t size, std::atomic<void*>& runtime_form, const char* name, Align... al) {
  size_t alignment = (0 + ... + size_t(al));
  if (MAPALLOC_LIKELY(throwing_forms_are_ours())) {
    void* p = allocate(size, alignment);
    if (MAPALLOC_LIKELY(p) || !current_new_handler()) return p;
  }
  if (void* p; new_caught<kArray>(&p, size, al...)) return p;
#ifndef __EXCEPTIONS
  // A clang build cannot catch: the program's throwing form is called as it
  // is (what it throws goes through), not through a runtime looked up first,
  // which would call into the loader on every program's first nothrow new.
  if (!throwing_forms_are_ours()) return kArray ? ::operator new[](size, al...) : ::operator new(size, al...);
#endif
  if (void* fn = runtime_function(runtime_form, name))
    return reinterpret_cast<void* (*)(size_t, Align..., const std::nothrow_t&)>(fn)(size, al..., std::nothrow_t{});
  return allocate_with_handler(size, alignment);
}

std::atomic<void*> runtime_new, runtime_new_array, runtime_new_aligned, runtime_new_array_aligned;

}  // namespace

EXPORT void* operator new(size_t size, const std::nothrow_t&) noexcept {
  return nothrow_new<false>(size, runtime_new, "_ZnwmRKSt9nothrow_t");
}
EXPORT void* operator new[](size_t size, const std::nothrow_t&) noexcept {
  return nothrow_new<true>(size, runtime_new_array, "_ZnamRKSt9nothrow_t");
}
EXPORT void* operator new(size_t size, std::align_val_t al, const std::nothrow_t&) noexcept {
  return nothrow_new<false>(size, runtime_new_aligned, "_ZnwmSt11align_val_tRKSt9nothrow_t", al);
}
EXPORT void* operator new[](size_t size, std::align_val_t al, const std::nothrow_t&) noexcept {
  return nothrow_new<true>(size, runtime_new_array_aligned, "_ZnamSt11align_val_tRKSt9nothrow_t", al);
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
