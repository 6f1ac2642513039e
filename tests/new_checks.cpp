// operator new's failure paths, which reach the C++ runtime: std::bad_alloc,
// the new-handler, the nothrow forms when the handler throws. Run from a
// module that late_runtime.cpp loads with dlopen under the shim, and by
// static_new.cpp, a static program with the override archive. Returns how
// many checks failed (each prints a line). Without with_handler, only those
// without a new-handler: a module that links its runtime statically keeps
// its handler where the shim cannot see it.
#include <stdint.h>
#include <stdio.h>

#include <new>
#include <string>
#include <vector>

static int calls;

static int check(bool ok, const char* what) {
  if (!ok) printf("failed: %s (new-handler calls: %d)\n", what, calls);
  return ok ? 0 : 1;
}

extern "C" __attribute__((visibility("default"))) int run_new_checks(int with_handler) {
  int failures = 0;
  bool caught = false;
  try {
    (void)::operator new(SIZE_MAX / 2);
  } catch (const std::bad_alloc&) {
    caught = true;
  }
  failures += check(caught, "operator new threw std::bad_alloc");

  failures += check(::operator new(SIZE_MAX / 2, std::nothrow) == nullptr, "nothrow operator new returned null");
  std::vector<std::string> words(1000, std::string(100, 'x'));
  size_t total = 0;
  for (const std::string& w : words) total += w.size();
  failures += check(total == 100000, "containers work");
  if (!with_handler) return failures;

  calls = 0;
  std::set_new_handler([] {
    if (++calls == 2) std::set_new_handler(nullptr);
  });
  caught = false;
  try {
    (void)::operator new[](SIZE_MAX / 2, std::align_val_t(64));
  } catch (const std::bad_alloc&) {
    caught = true;
  }
  failures += check(caught && calls == 2, "aligned operator new[] called the new-handler twice, then threw");

  calls = 0;
  std::set_new_handler([] {
    calls++;
    throw std::bad_alloc();
  });
  failures += check(::operator new(SIZE_MAX / 2, std::nothrow) == nullptr && calls == 1,
                    "nothrow operator new returned null when the new-handler threw");
  std::set_new_handler(nullptr);
  return failures;
}
