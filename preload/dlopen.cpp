// dlopen without RTLD_DEEPBIND. A library loaded with it binds its own
// dependencies' symbols first: its malloc and free are libc's, not the
// shim's, and blocks cross between the two allocators. PHP loads its
// extensions so: `php -r 'echo 1;'` crashed at start-up (glibc's free of a
// mapalloc block, in pdo.so) under every preloaded allocator tried here
// (mapalloc, jemalloc, mimalloc, tcmalloc). Without the flag the library
// binds as any other, to the shim.
//
// The real dlopen finds the caller's DT_RPATH/DT_RUNPATH (and its namespace)
// by its return address, so this must reach it by a tail jump, never a call:
// meson.build compiles this file with sibling calls on and no sanitizer
// (test shim-deepbind: a library found only through the calling library's
// DT_RUNPATH).
#include <dlfcn.h>

#include <atomic>

namespace {

using DlopenFn = void* (*)(const char*, int);
std::atomic<DlopenFn> next_dlopen{nullptr};

// Out of line, so that dlopen itself keeps no frame.
[[gnu::noinline]] DlopenFn find_next_dlopen() {
  auto fn = reinterpret_cast<DlopenFn>(dlsym(RTLD_NEXT, "dlopen"));
  next_dlopen.store(fn, std::memory_order_release);
  return fn;
}

}  // namespace

extern "C" [[gnu::visibility("default")]] void* dlopen(const char* file, int mode) {
  DlopenFn fn = next_dlopen.load(std::memory_order_acquire);
  if (__builtin_expect(!fn, 0)) fn = find_next_dlopen();
  if (!fn) return nullptr;  // (no loader: a static program never gets here)
  return fn(file, mode & ~RTLD_DEEPBIND);
}
