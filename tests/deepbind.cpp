// Under the shim, a library loaded with RTLD_DEEPBIND (as PHP loads its
// extensions) frees the program's blocks and the program frees the
// library's: both must be the shim's malloc and free, not libc's for the
// library (glibc's free of a mapalloc block crashed, and mapalloc reported
// glibc's blocks as invalid frees). The library is opened by bare name from
// another library whose DT_RUNPATH names its directory (deepbind_loader.cpp).
// Usage: deepbind <loader path> <module file name>
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

int main(int argc, char** argv) {
  if (argc != 3 || std::strchr(argv[2], '/')) {
    std::fprintf(stderr, "usage: deepbind <loader path> <bare module file name>\n");
    return 2;
  }
  void* loader = dlopen(argv[1], RTLD_NOW);
  if (!loader) {
    std::fprintf(stderr, "dlopen %s: %s\n", argv[1], dlerror());
    return 1;
  }
  auto open = reinterpret_cast<void* (*)(const char*)>(dlsym(loader, "deepbind_loader_open"));
  if (!open) return 3;
  void* lib = open(argv[2]);
  if (!lib) {
    std::fprintf(stderr, "dlopen %s from the loader: %s\n", argv[2], dlerror());
    return 1;
  }
  auto module_malloc = reinterpret_cast<void* (*)(size_t)>(dlsym(lib, "deepbind_module_malloc"));
  auto module_free = reinterpret_cast<void (*)(void*)>(dlsym(lib, "deepbind_module_free"));
  if (!module_malloc || !module_free) return 3;
  for (size_t n : {size_t(24), size_t(5000), size_t(300000)}) {
    void* mine = std::malloc(n);
    std::memset(mine, 1, n);
    module_free(mine);
    void* theirs = module_malloc(n);
    if (!theirs) return 4;
    std::memset(theirs, 2, n);
    std::free(theirs);
  }
  std::puts("ok");
  return 0;
}
