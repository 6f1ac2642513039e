// A program with no C++ runtime of its own, run under the shim, that loads
// C++ code later (as python3 or a plugin host does): the shim's operator new
// must find that runtime's new-handler and std::bad_alloc then, not at start.
// Usage: late_runtime <libnew_checks.so> [no-handler]. Prints "ok" and
// exits 0. no-handler: for a module that links its runtime statically.
#include <dlfcn.h>
#include <stdio.h>

int main(int argc, char** argv) {
  if (argc != 2 && argc != 3) return 2;
  // Nothing C++ is loaded yet: neither this program nor the shim needs it.
  if (dlopen("libstdc++.so.6", RTLD_LAZY | RTLD_NOLOAD)) {
    puts("libstdc++ was loaded at start");
    return 1;
  }
  void* module = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!module) {
    printf("dlopen: %s\n", dlerror());
    return 2;
  }
  auto run = reinterpret_cast<int (*)(int)>(dlsym(module, "run_new_checks"));
  if (!run) return 2;
  int failures = run(argc == 2);
  puts(failures ? "FAILED" : "ok");
  return failures ? 1 : 0;
}
