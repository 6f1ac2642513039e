// Proves that a program's plain malloc/free/new/delete are mapalloc's.
//
// Built twice: linked with the static override archive (libmapalloc-override.a,
// whole-archive), and, with MAPALLOC_TEST_PRELOAD, as a plain program run under
// LD_PRELOAD=libmapalloc.so, where mapalloc's own functions are found with
// dlsym because the program does not link mapalloc at all.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "mapalloc.h"
#include "test_util.h"

namespace {

#ifdef MAPALLOC_TEST_PRELOAD
template <typename F>
F resolve(const char* name) {
  void* sym = dlsym(RTLD_DEFAULT, name);
  if (!sym) {
    fprintf(stderr, "%s not found: is LD_PRELOAD=libmapalloc.so set?\n", name);
    abort();
  }
  return reinterpret_cast<F>(sym);
}
int owns(const void* p) {
  static auto fn = resolve<int (*)(const void*)>("mapalloc_owns");
  return fn(p);
}
mapalloc_stats stats() {
  static auto fn = resolve<void (*)(mapalloc_stats*)>("mapalloc_stats_get");
  mapalloc_stats s;
  fn(&s);
  return s;
}
#else
int owns(const void* p) { return mapalloc_owns(p); }
mapalloc_stats stats() {
  mapalloc_stats s;
  mapalloc_stats_get(&s);
  return s;
}
#endif

struct alignas(256) OverAligned {
  char bytes[300];
};

}  // namespace

TEST(Override, MallocAndFreeAreMapalloc) {
  void* p = malloc(10);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(owns(p), 1) << p;
  EXPECT_GE(malloc_usable_size(p), 10u);
  volatile uintptr_t address = reinterpret_cast<uintptr_t>(p);  // not a pointer after free
  free(p);
  EXPECT_EQ(owns(reinterpret_cast<void*>(address)), 0) << "free did not release " << std::hex << uintptr_t(address);
  void* large = malloc(8 << 20);
  ASSERT_NE(large, nullptr);
  EXPECT_EQ(owns(large), 1) << large;
  free(large);
}

TEST(Override, CallocReallocAndAlignedAllocatorsAreMapalloc) {
  void* c = calloc(10, 10);
  EXPECT_EQ(owns(c), 1) << c;
  c = realloc(c, 1 << 20);
  EXPECT_EQ(owns(c), 1) << c;
  free(c);
  void* r = realloc(nullptr, 100);
  EXPECT_EQ(owns(r), 1) << r;
  free(r);
  void* pm = nullptr;
  ASSERT_EQ(posix_memalign(&pm, 4096, 100), 0);
  EXPECT_EQ(owns(pm), 1) << pm;
  free(pm);
  void* aa = aligned_alloc(64, 128);
  EXPECT_EQ(owns(aa), 1) << aa;
  free(aa);
  void* ma = memalign(1 << 20, 100);
  EXPECT_EQ(owns(ma), 1) << ma;
  free(ma);
  void* va = valloc(100);
  EXPECT_EQ(owns(va), 1) << va;
  free(va);
}

TEST(Override, OperatorNewAndDeleteAreMapalloc) {
  int* one = new int(7);
  EXPECT_EQ(owns(one), 1) << one;
  delete one;
  int* many = new int[1000];
  EXPECT_EQ(owns(many), 1) << many;
  delete[] many;
  char* nothrow = new (std::nothrow) char[100];
  EXPECT_EQ(owns(nothrow), 1) << static_cast<void*>(nothrow);
  delete[] nothrow;
  auto* aligned = new OverAligned;
  EXPECT_EQ(owns(aligned), 1) << aligned;
  EXPECT_EQ(reinterpret_cast<uintptr_t>(aligned) % 256, 0u) << aligned;
  delete aligned;
  auto* aligned_array = new OverAligned[3];
  EXPECT_EQ(reinterpret_cast<uintptr_t>(aligned_array) % 256, 0u) << aligned_array;
  delete[] aligned_array;
}

#ifdef MAPALLOC_TEST_PRELOAD
// This program replaces only the two basic forms, as [new.delete] lets a
// program do (over malloc, so mapalloc still serves them). The standard says
// the other forms call these: new[] and the nothrow forms call operator
// new(size_t), delete[], the nothrow and the sized forms operator
// delete(void*), as libstdc++'s do. A shim whose forms went to mapalloc
// directly would skip the program's own: a replacement that keeps a header
// before each block, or its own pool, then has mapalloc free its pointers
// (invalid free, abort).
static std::atomic<long> replaced_news{0}, replaced_deletes{0};
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsized-deallocation"  // leaving the sized form out is the point
void* operator new(size_t size) {
  replaced_news++;
  for (;;) {
    if (void* p = malloc(size ? size : 1)) return p;
    std::new_handler handler = std::get_new_handler();
    if (!handler) throw std::bad_alloc();
    handler();
  }
}
void operator delete(void* p) noexcept {
  if (p) replaced_deletes++;
  free(p);
}
#pragma GCC diagnostic pop

TEST(Override, EveryFormReachesTheProgramsOwnBasicNewAndDelete) {
  struct Form {
    const char* name;
    void* (*make)();
    void (*drop)(void*);
  };
  const Form forms[] = {
      {"new/delete", [] { return ::operator new(24); }, [](void* p) { ::operator delete(p); }},
      {"new/sized delete", [] { return ::operator new(24); }, [](void* p) { ::operator delete(p, 24); }},
      {"new/nothrow delete", [] { return ::operator new(24); }, [](void* p) { ::operator delete(p, std::nothrow); }},
      {"new[]/delete[]", [] { return ::operator new[](24); }, [](void* p) { ::operator delete[](p); }},
      {"new[]/sized delete[]", [] { return ::operator new[](24); }, [](void* p) { ::operator delete[](p, 24); }},
      {"nothrow new[]/nothrow delete[]", [] { return ::operator new[](24, std::nothrow); },
       [](void* p) { ::operator delete[](p, std::nothrow); }},
      {"nothrow new/delete", [] { return ::operator new(24, std::nothrow); }, [](void* p) { ::operator delete(p); }},
  };
  for (const Form& f : forms) {
    long news = replaced_news, deletes = replaced_deletes;
    void* p = f.make();
    ASSERT_NE(p, nullptr) << f.name;
    EXPECT_EQ(replaced_news - news, 1) << f.name << ": the program's operator new(size_t) was not called";
    f.drop(p);
    EXPECT_EQ(replaced_deletes - deletes, 1) << f.name << ": the program's operator delete(void*) was not called";
  }
}
#endif

TEST(Override, OperatorNewThrowsBadAllocWhenExhausted) {
  // The nothrow forms return null instead.
  EXPECT_THROW((void)::operator new(SIZE_MAX / 2), std::bad_alloc);
  EXPECT_THROW((void)::operator new[](SIZE_MAX / 2), std::bad_alloc);
  EXPECT_THROW((void)::operator new(SIZE_MAX / 2, std::align_val_t(64)), std::bad_alloc);
  EXPECT_EQ(::operator new(SIZE_MAX / 2, std::nothrow), nullptr);
  EXPECT_EQ(::operator new[](SIZE_MAX / 2, std::nothrow), nullptr);
  EXPECT_EQ(::operator new(SIZE_MAX / 2, std::align_val_t(64), std::nothrow), nullptr);
  EXPECT_EQ(::operator new[](SIZE_MAX / 2, std::align_val_t(64), std::nothrow), nullptr);
}

// [new.delete]: a failed operator new calls the new-handler until it
// returns memory or there is no handler, and the nothrow forms return null
// where the handler throws. The shim reaches the handler and std::bad_alloc
// through the program's C++ runtime (it links none), so these are its only
// check that it found them.
static int handler_calls = 0;
static void uninstall_after_three() {
  if (++handler_calls == 3) std::set_new_handler(nullptr);
}
static void throw_bad_alloc() {
  handler_calls++;
  throw std::bad_alloc();
}

TEST(Override, OperatorNewCallsTheNewHandlerUntilItIsRemoved) {
  handler_calls = 0;
  std::set_new_handler(uninstall_after_three);
  EXPECT_THROW((void)::operator new(SIZE_MAX / 2), std::bad_alloc);
  EXPECT_EQ(handler_calls, 3);
  handler_calls = 0;
  std::set_new_handler(uninstall_after_three);
  EXPECT_THROW((void)::operator new[](SIZE_MAX / 2, std::align_val_t(128)), std::bad_alloc);
  EXPECT_EQ(handler_calls, 3);
  handler_calls = 0;
  std::set_new_handler(uninstall_after_three);
  EXPECT_EQ(::operator new(SIZE_MAX / 2, std::nothrow), nullptr);
  EXPECT_EQ(handler_calls, 3);
  std::set_new_handler(nullptr);
}

TEST(Override, NothrowNewReturnsNullWhenTheNewHandlerThrows) {
  std::set_new_handler(throw_bad_alloc);
  handler_calls = 0;
  EXPECT_EQ(::operator new(SIZE_MAX / 2, std::nothrow), nullptr);
  EXPECT_EQ(::operator new[](SIZE_MAX / 2, std::nothrow), nullptr);
  EXPECT_EQ(::operator new(SIZE_MAX / 2, std::align_val_t(64), std::nothrow), nullptr);
  EXPECT_EQ(::operator new[](SIZE_MAX / 2, std::align_val_t(64), std::nothrow), nullptr);
  EXPECT_EQ(handler_calls, 4);
  EXPECT_THROW((void)::operator new(SIZE_MAX / 2), std::bad_alloc);
  EXPECT_EQ(handler_calls, 5);
  // With a handler set, a request that succeeds never calls it.
  char* p = new (std::nothrow) char[100];
  EXPECT_EQ(owns(p), 1) << static_cast<void*>(p);
  delete[] p;
  EXPECT_EQ(handler_calls, 5);
  std::set_new_handler(nullptr);
}

TEST(Override, StandardLibraryContainersUseMapalloc) {
  std::vector<int> v(1000, 1);
  EXPECT_EQ(owns(v.data()), 1) << v.data();
  std::string s(500, 'x');
  EXPECT_EQ(owns(s.data()), 1) << static_cast<const void*>(s.data());
  auto shared = std::make_shared<std::vector<char>>(100);
  EXPECT_EQ(owns(shared->data()), 1);
}

TEST(Override, LibcInternalAllocationsUseMapalloc) {
  char* dup = strdup("allocated inside libc");
  ASSERT_NE(dup, nullptr);
  EXPECT_EQ(owns(dup), 1) << static_cast<void*>(dup);
  free(dup);
}

TEST(Override, PlainMallocCallsShowInMapallocStats) {
  const int n = 100;
  mapalloc_stats before = stats();
  std::vector<void*> blocks;
  blocks.reserve(n);
  mapalloc_stats after_reserve = stats();
  for (int i = 0; i < n; i++) blocks.push_back(malloc(24));
  mapalloc_stats after = stats();
  EXPECT_GE(after.small_requests - after_reserve.small_requests, uint64_t(n));
  EXPECT_GE(after.small_live_blocks - after_reserve.small_live_blocks, uint64_t(n));
  EXPECT_GT(after_reserve.small_requests, before.small_requests) << "vector::reserve did not go through mapalloc";
  for (void* p : blocks) free(p);
}

// A forked child starts its sampling over (sample.cpp, reset_after_fork):
// its first small blocks are guarded samples, in slots the parent guarded
// ahead before the fork, so the child makes no system call for them (a
// sample of up to a page opens without one). Before, each child whose
// parent had used up its guarded slots guarded a chunk of slots itself.
TEST(Samples, ForkedChildTakesItsSamplesWithoutSystemCalls) {
  if (!MAPALLOC_TEST_SECURE) GTEST_SKIP() << "unprotected builds take no samples";
  if (!mapalloc_test::kernel_has_guard_markers()) GTEST_SKIP() << "no guard markers: a sample's slot opens with a call";
  std::vector<void*> parents;
  for (int i = 0; i < 200; i++) parents.push_back(malloc(24));  // the parent's own samples used up
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    mapalloc_stats before = stats();
    int sampled = 0;
    void* blocks[4];
    for (void*& p : blocks) {
      p = malloc(24);
      // A sample ends where its slot's guard page begins (24 rounded up to 16).
      if ((reinterpret_cast<uintptr_t>(p) + 32) % 4096 == 0) sampled++;
    }
    mapalloc_stats after = stats();
    uint64_t calls = (after.mmap_calls - before.mmap_calls) + (after.mprotect_calls - before.mprotect_calls) +
                     (after.madvise_calls - before.madvise_calls);
    _exit(sampled != 4 ? 2 : calls != 0 ? 3 : 0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_NE(WEXITSTATUS(status), 2) << "the child's first blocks were not all samples";
  EXPECT_NE(WEXITSTATUS(status), 3) << "the child's samples made system calls";
  EXPECT_EQ(WEXITSTATUS(status), 0);
  for (void* p : parents) free(p);
}

// mallinfo2 from several threads at once, nothing allocating meanwhile:
// every call sees the same numbers. The statistics it reads are 5 KiB, kept
// in one static copy; without a lock around it, threads read each other's
// half-gathered numbers (11 of 80000 calls returned zeros).
TEST(Override, MallinfoFromManyThreadsAtOnceIsConsistent) {
  std::vector<void*> blocks;
  blocks.reserve(1000);
  for (int i = 0; i < 1000; i++) blocks.push_back(malloc(64 + i));
  void* big = malloc(12 * 1000 * 1000);
  // The threads start first (starting one allocates), then read.
  std::atomic<int> ready{0}, finished{0}, wrong{0};
  std::atomic<bool> go{false};
  struct mallinfo2 want = {};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; t++) {
    threads.emplace_back([&] {
      ready++;
      while (!go.load()) std::this_thread::yield();
      for (int i = 0; i < 20000; i++) {
        struct mallinfo2 m = mallinfo2();
        if (m.hblkhd != want.hblkhd || m.uordblks != want.uordblks || m.hblks != want.hblks) wrong++;
      }
      finished++;  // a thread that ends frees its std::thread state: none ends while others read
      while (finished.load() < 4) std::this_thread::yield();
    });
  }
  while (ready.load() < 4) std::this_thread::yield();
  want = mallinfo2();
  ASSERT_GE(want.hblkhd, size_t(12 * 1000 * 1000));
  go = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  free(big);
  for (void* p : blocks) free(p);
}
