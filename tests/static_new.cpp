// A static C++ program linked with the override archive, where dlsym finds
// nothing: operator new's failure paths still reach the runtime
// (preload/static_runtime.cpp). Prints "ok" and exits 0.
#include <stdio.h>

#include "mapalloc.h"

extern "C" int run_new_checks(int with_handler);

int main() {
  int* p = new int(1);
  int failures = mapalloc_owns(p) != 1;
  if (failures) puts("failed: operator new is not mapalloc's");
  delete p;
  failures += run_new_checks(1);
  puts(failures ? "FAILED" : "ok");
  return failures ? 1 : 0;
}
