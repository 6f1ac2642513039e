// Loaded by tests/deepbind.cpp with RTLD_DEEPBIND: its malloc and free must
// still be the shim's.
#include <cstdlib>

extern "C" void* deepbind_module_malloc(size_t n) { return std::malloc(n); }
extern "C" void deepbind_module_free(void* p) { std::free(p); }
