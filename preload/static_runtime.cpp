// Only in the static override archive, not in the shim. A program that links
// the archive links a C++ runtime too (g++, or -lstdc++); in a static one,
// these references bring in the runtime's functions that new_delete.cpp
// binds weakly, which nothing else may pull in.
#include <stddef.h>

namespace std {
void __throw_bad_alloc() __attribute__((__noreturn__));
}
extern "C" {
int __gxx_personality_v0();
void* __cxa_begin_catch(void*) noexcept;
void __cxa_end_catch();
}

[[gnu::used]] static void* const keep_runtime[] = {
    reinterpret_cast<void*>(&std::__throw_bad_alloc), reinterpret_cast<void*>(&__gxx_personality_v0),
    reinterpret_cast<void*>(&__cxa_begin_catch), reinterpret_cast<void*>(&__cxa_end_catch)};
