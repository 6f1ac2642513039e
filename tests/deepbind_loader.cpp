// Opens a library by bare name, as PHP opens its extensions (RTLD_DEEPBIND).
// Its own DT_RUNPATH (tests/meson.build) is the only place that names the
// library's directory: the real dlopen searches its caller's, which it finds
// by its return address, so the shim's dlopen must leave that as it is.
#include <dlfcn.h>

extern "C" void* deepbind_loader_open(const char* name) {
  void* lib = dlopen(name, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  asm volatile("" : "+r"(lib));  // a call, not a tail jump: the caller is this library
  return lib;
}
