// Conformance of the prefixed C API (libmapalloc.a) to the glibc/POSIX
// semantics of the standard names: sizes, alignment, zeroing, errno, and the
// mapalloc extensions (owns, stats, mmap threshold).
#include <errno.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdint.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "mapalloc.h"
#include "test_util.h"

using namespace mapalloc_test;

#ifndef MAPALLOC_TEST_SECURE
#define MAPALLOC_TEST_SECURE 1
#endif

namespace {

constexpr size_t KiB = 1024;
constexpr size_t MiB = 1024 * KiB;
constexpr size_t kPage = 4096;

mapalloc_stats stats() {
  mapalloc_stats s;
  mapalloc_stats_get(&s);
  return s;
}

struct Live {
  void* p;
  size_t size;
  uint64_t key;
};

// Allocates every size, fills each block's whole usable size with its own
// pattern while all are live, then checks: alignment, usable >= requested,
// owned, no two blocks overlap, every pattern intact. Frees in shuffled order.
void check_sizes_all_live(const std::vector<size_t>& sizes, uint64_t seed) {
  std::vector<Live> live;
  live.reserve(sizes.size());
  for (size_t size : sizes) {
    void* p = mapalloc_malloc(size);
    ASSERT_NE(p, nullptr) << "size " << size;
    ASSERT_TRUE(is_aligned(p, 16)) << "size " << size << " ptr " << p;
    size_t usable = mapalloc_usable_size(p);
    ASSERT_GE(usable, size) << "size " << size << " ptr " << p;
    ASSERT_EQ(mapalloc_owns(p), 1) << "size " << size << " ptr " << p;
    uint64_t key = block_key(p, size, seed);
    fill_pattern(p, usable, key);
    live.push_back({p, usable, key});
  }
  std::vector<Live> sorted = live;
  std::sort(sorted.begin(), sorted.end(), [](const Live& a, const Live& b) { return a.p < b.p; });
  for (size_t i = 1; i < sorted.size(); i++) {
    auto* prev_end = static_cast<char*>(sorted[i - 1].p) + sorted[i - 1].size;
    ASSERT_LE(prev_end, static_cast<char*>(sorted[i].p))
        << "blocks overlap: " << sorted[i - 1].p << " (usable " << sorted[i - 1].size << ") and " << sorted[i].p
        << " (usable " << sorted[i].size << "), seed " << seed;
  }
  for (const Live& b : live) {
    size_t bad = check_pattern(b.p, b.size, b.key);
    ASSERT_EQ(bad, SIZE_MAX) << "block " << b.p << " usable " << b.size << " corrupted at offset " << bad << ", seed "
                             << seed;
  }
  Rng rng(seed);
  for (size_t i = live.size(); i > 1; i--) std::swap(live[i - 1], live[rng.next() % i]);
  for (const Live& b : live) mapalloc_free(b.p);
}

// Requested-size variant for the aligned allocators: checks alignment too.
void check_aligned_block(void* p, size_t alignment, size_t size, const char* what) {
  ASSERT_NE(p, nullptr) << what << " alignment " << alignment << " size " << size;
  ASSERT_TRUE(is_aligned(p, alignment)) << what << " alignment " << alignment << " size " << size << " ptr " << p;
  ASSERT_EQ(mapalloc_owns(p), 1) << what << " alignment " << alignment << " size " << size << " ptr " << p;
  size_t usable = mapalloc_usable_size(p);
  ASSERT_GE(usable, size) << what << " alignment " << alignment << " size " << size << " ptr " << p;
  uint64_t key = block_key(p, size, alignment);
  fill_pattern(p, usable, key);
  ASSERT_EQ(check_pattern(p, usable, key), SIZE_MAX) << what << " alignment " << alignment << " ptr " << p;
}

std::vector<size_t> alignment_test_sizes(size_t alignment) {
  size_t t = mapalloc_mmap_threshold();
  std::vector<size_t> sizes;
  for (size_t size : {size_t(1), alignment - 1, alignment, 3 * alignment, t - 1, t, t + 1})
    if (size != 0) sizes.push_back(size);
  return sizes;
}

std::vector<size_t> all_alignments() {
  std::vector<size_t> a;
  for (size_t al = 8; al <= 4 * MiB; al *= 2) a.push_back(al);
  return a;
}

// Restores the mmap threshold a test changed, even if an assertion fails.
struct ThresholdGuard {
  size_t saved = mapalloc_mmap_threshold();
  ~ThresholdGuard() { mapalloc_set_mmap_threshold(saved); }
};

int global_int;

}  // namespace

// ---------------------------------------------------------------- malloc

TEST(Malloc, ZeroSizeReturnsUniqueFreeablePointers) {
  std::vector<void*> ps;
  for (int i = 0; i < 200; i++) {
    void* p = mapalloc_malloc(0);
    ASSERT_NE(p, nullptr) << "iteration " << i;
    EXPECT_TRUE(is_aligned(p, 16)) << p;
    EXPECT_EQ(mapalloc_owns(p), 1) << p;
    ps.push_back(p);
  }
  std::vector<void*> sorted = ps;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(std::adjacent_find(sorted.begin(), sorted.end()), sorted.end()) << "malloc(0) returned a pointer twice";
  for (void* p : ps) mapalloc_free(p);
}

// More than one block of the malloc(0) region (65536 slots each), with slots
// freed in each and handed out again: no address twice, each one known.
TEST(Malloc, ZeroSizeBlocksAcrossTheRegionsBlocksAreUnique) {
  const size_t n = 150000;
  std::vector<void*> ps;
  for (size_t i = 0; i < n; i++) ps.push_back(mapalloc_malloc(0));
  for (size_t i = 0; i < n; i += 2) mapalloc_free(ps[i]);
  for (size_t i = 0; i < n; i += 2) ps[i] = mapalloc_malloc(0);
  for (size_t i = 0; i < n; i += 1000) {
    ASSERT_NE(ps[i], nullptr) << i;
    EXPECT_EQ(mapalloc_owns(ps[i]), 1) << ps[i];
    EXPECT_EQ(mapalloc_usable_size(ps[i]), 0u) << ps[i];
  }
  std::vector<void*> sorted = ps;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(std::adjacent_find(sorted.begin(), sorted.end()), sorted.end()) << "malloc(0) returned a pointer twice";
  for (void* p : ps) mapalloc_free(p);
}

TEST(Malloc, FreeNullIsNoOp) {
  errno = 1234;
  mapalloc_free(nullptr);
  mapalloc_free_sized(nullptr, 0);
  mapalloc_free_aligned_sized(nullptr, 64, 0);
  EXPECT_EQ(errno, 1234);
  EXPECT_EQ(mapalloc_usable_size(nullptr), 0u);
}

TEST(Malloc, EverySize1To4096AlignedDisjointAndIntactWhileLive) {
  std::vector<size_t> sizes;
  for (size_t s = 1; s <= 4096; s++) sizes.push_back(s);
  check_sizes_all_live(sizes, test_seed());
}

TEST(Malloc, EverySize1To4096ReverseOrderAndRepeated) {
  // Second pass in a different order: blocks come from pages the first pass
  // dirtied and freed.
  std::vector<size_t> sizes;
  for (size_t s = 4096; s >= 1; s--) sizes.push_back(s);
  for (int round = 0; round < 2; round++) check_sizes_all_live(sizes, test_seed() + unsigned(round));
}

TEST(Malloc, PowersOfTwoPlusMinusOneUpTo4MiB) {
  std::vector<size_t> sizes;
  for (size_t p = 1; p <= 4 * MiB; p *= 2) {
    sizes.push_back(p - 1);
    sizes.push_back(p);
    sizes.push_back(p + 1);
  }
  check_sizes_all_live(sizes, test_seed());
}

TEST(Malloc, SizesAroundMmapThreshold) {
  size_t t = mapalloc_mmap_threshold();
  SCOPED_TRACE("mmap threshold " + std::to_string(t));
  std::vector<size_t> sizes;
  for (size_t s = t - 48; s <= t + 48; s++) sizes.push_back(s);
  for (size_t d : {kPage - 1, kPage, kPage + 1, 2 * kPage}) {
    sizes.push_back(t - d);
    sizes.push_back(t + d);
  }
  check_sizes_all_live(sizes, test_seed());
}

TEST(Malloc, SizesAboveThresholdUseLargePathAndBelowDoNot) {
  size_t t = mapalloc_mmap_threshold();
  for (size_t size : {t - 16, t, t + 1, t + 16, 2 * t}) {
    uint64_t before = stats().large_live_count;
    void* p = mapalloc_malloc(size);
    ASSERT_NE(p, nullptr) << "size " << size;
    uint64_t during = stats().large_live_count;
    EXPECT_EQ(during - before, size > t ? 1u : 0u) << "size " << size << " threshold " << t << " ptr " << p;
    mapalloc_free(p);
    EXPECT_EQ(stats().large_live_count, before) << "size " << size << " ptr " << p;
  }
}

TEST(Malloc, HugeSizesFailWithENOMEM) {
  for (size_t size : {SIZE_MAX, SIZE_MAX - 15, SIZE_MAX - kPage, SIZE_MAX / 2, size_t(PTRDIFF_MAX) + 1,
                      size_t(PTRDIFF_MAX), size_t(PTRDIFF_MAX) - kPage}) {
    errno = 0;
    void* p = mapalloc_malloc(size);
    EXPECT_EQ(p, nullptr) << "size " << size;
    EXPECT_EQ(errno, ENOMEM) << "size " << size;
    if (p) mapalloc_free(p);
  }
}

TEST(Malloc, ErrnoUntouchedOnSuccess) {
  size_t t = mapalloc_mmap_threshold();
  for (size_t size : {size_t(0), size_t(1), size_t(100), size_t(5000), t, t + 1, 3 * MiB}) {
    for (int round = 0; round < 2; round++) {  // the second round reuses cached memory
      errno = 1234;
      void* p = mapalloc_malloc(size);
      EXPECT_EQ(errno, 1234) << "malloc size " << size;
      ASSERT_NE(p, nullptr);
      errno = 1234;
      EXPECT_GE(mapalloc_usable_size(p), size);
      EXPECT_EQ(mapalloc_owns(p), 1);
      EXPECT_EQ(errno, 1234) << "usable_size/owns size " << size;
      errno = 1234;
      p = mapalloc_realloc(p, size + 1000);
      EXPECT_EQ(errno, 1234) << "realloc grow size " << size;
      errno = 1234;
      p = mapalloc_realloc(p, size / 2 + 1);
      EXPECT_EQ(errno, 1234) << "realloc shrink size " << size;
      errno = 1234;
      mapalloc_free(p);
      EXPECT_EQ(errno, 1234) << "free size " << size;
      errno = 1234;
      p = mapalloc_calloc(1, size);
      EXPECT_EQ(errno, 1234) << "calloc size " << size;
      errno = 1234;
      mapalloc_free_sized(p, size);
      EXPECT_EQ(errno, 1234) << "free_sized size " << size;
      errno = 1234;
      void* q = nullptr;
      EXPECT_EQ(mapalloc_posix_memalign(&q, 4096, size), 0);
      EXPECT_EQ(errno, 1234) << "posix_memalign size " << size;
      errno = 1234;
      mapalloc_free_aligned_sized(q, 4096, size);
      q = mapalloc_aligned_alloc(64, size);
      mapalloc_free(q);
      q = mapalloc_memalign(256, size);
      mapalloc_free(q);
      q = mapalloc_valloc(size);
      mapalloc_free(q);
      q = mapalloc_pvalloc(size);
      mapalloc_free(q);
      EXPECT_EQ(errno, 1234) << "aligned allocators size " << size;
      errno = 1234;
      p = mapalloc_malloc(size);
      EXPECT_EQ(mapalloc_realloc(p, 0), nullptr);
      EXPECT_EQ(errno, 1234) << "realloc(p, 0) size " << size;
    }
  }
  errno = 1234;
  mapalloc_stats s;
  mapalloc_stats_get(&s);
  mapalloc_collect();
  EXPECT_EQ(errno, 1234) << "stats_get/collect";
}

// ---------------------------------------------------------------- calloc

TEST(Calloc, ZeroesReusedDirtyBlocks) {
  size_t t = mapalloc_mmap_threshold();
  for (size_t size : {size_t(1), size_t(16), size_t(17), size_t(100), size_t(1000), size_t(1024), size_t(1025),
                      size_t(4096), size_t(10000), 64 * KiB, t - 1, t, t + 1, t + 5000, 1 * MiB, 3 * MiB + 17}) {
    int rounds = size > t ? 20 : 100;
    for (int i = 0; i < rounds; i++) {
      void* p = mapalloc_malloc(size);
      ASSERT_NE(p, nullptr) << "size " << size;
      std::memset(p, 0xab, mapalloc_usable_size(p));
      mapalloc_free(p);
      auto* q = static_cast<unsigned char*>(i % 2 ? mapalloc_calloc(size, 1) : mapalloc_calloc(1, size));
      ASSERT_NE(q, nullptr) << "size " << size;
      size_t bad = first_nonzero(q, size);
      ASSERT_EQ(bad, SIZE_MAX) << "calloc(" << size << ") ptr " << static_cast<void*>(q) << " (dirty block " << p
                               << ") byte " << bad << " is " << int(q[bad]) << ", round " << i;
      mapalloc_free(q);
    }
  }
}

TEST(Calloc, ZeroesReusedLargeMappingOfDifferentSize) {
  // A cached large mapping may be reused for a slightly different size, so
  // the block starts at a different offset of the dirty mapping.
  size_t t = mapalloc_mmap_threshold();
  for (size_t size : {t + 16, 2 * t + 100, 1 * MiB, 3 * MiB}) {
    for (size_t other : {size - size / 8, size + size / 8, size - 16, size + 4096}) {
      if (other <= t) continue;
      void* p = mapalloc_malloc(size);
      ASSERT_NE(p, nullptr);
      std::memset(p, 0xab, mapalloc_usable_size(p));
      mapalloc_free(p);
      auto* q = static_cast<unsigned char*>(mapalloc_calloc(other, 1));
      ASSERT_NE(q, nullptr);
      size_t bad = first_nonzero(q, other);
      ASSERT_EQ(bad, SIZE_MAX) << "calloc(" << other << ") after free of dirty " << size << "-byte block " << p
                               << ": ptr " << static_cast<void*>(q) << " byte " << bad << " is " << int(q[bad]);
      mapalloc_free(q);
    }
  }
}

TEST(Calloc, ZeroesAfterCollect) {
  size_t t = mapalloc_mmap_threshold();
  for (size_t size : {size_t(48), size_t(3000), t + 1, 2 * MiB}) {
    void* p = mapalloc_malloc(size);
    ASSERT_NE(p, nullptr);
    std::memset(p, 0xab, mapalloc_usable_size(p));
    mapalloc_free(p);
    mapalloc_collect();
    auto* q = static_cast<unsigned char*>(mapalloc_calloc(1, size));
    ASSERT_NE(q, nullptr);
    EXPECT_EQ(first_nonzero(q, size), SIZE_MAX) << "size " << size << " ptr " << static_cast<void*>(q);
    mapalloc_free(q);
  }
}

TEST(Calloc, OverflowReturnsNullWithENOMEM) {
  struct Case {
    size_t n, size;
  };
  for (Case c : {Case{SIZE_MAX, 2}, Case{2, SIZE_MAX}, Case{SIZE_MAX / 2 + 1, 2},
                 Case{size_t(1) << 32, size_t(1) << 32}, Case{SIZE_MAX, SIZE_MAX}, Case{1, size_t(PTRDIFF_MAX) + 1},
                 Case{size_t(PTRDIFF_MAX) + 1, 1}, Case{3, SIZE_MAX / 3 + 1}}) {
    errno = 0;
    void* p = mapalloc_calloc(c.n, c.size);
    EXPECT_EQ(p, nullptr) << "calloc(" << c.n << ", " << c.size << ")";
    EXPECT_EQ(errno, ENOMEM) << "calloc(" << c.n << ", " << c.size << ")";
    if (p) mapalloc_free(p);
  }
}

TEST(Calloc, ZeroCountOrSizeReturnsFreeablePointer) {
  for (auto [n, size] : {std::pair<size_t, size_t>{0, 0}, {0, 16}, {16, 0}, {0, SIZE_MAX}, {SIZE_MAX, 0}}) {
    void* p = mapalloc_calloc(n, size);
    ASSERT_NE(p, nullptr) << "calloc(" << n << ", " << size << ")";
    EXPECT_EQ(mapalloc_owns(p), 1);
    mapalloc_free(p);
  }
}

// ---------------------------------------------------------------- realloc

TEST(Realloc, NullPointerActsAsMalloc) {
  size_t t = mapalloc_mmap_threshold();
  for (size_t size : {size_t(0), size_t(1), size_t(100), t + 1}) {
    errno = 1234;
    void* p = mapalloc_realloc(nullptr, size);
    ASSERT_NE(p, nullptr) << "size " << size;
    EXPECT_EQ(errno, 1234);
    EXPECT_EQ(mapalloc_owns(p), 1);
    EXPECT_GE(mapalloc_usable_size(p), size);
    mapalloc_free(p);
  }
}

TEST(Realloc, GrowAndShrinkPreserveContentsAcrossSmallAndLarge) {
  size_t t = mapalloc_mmap_threshold();
  const std::vector<size_t> steps = {1,      15,   16,    17,     100,     1024,    1025,        5000,  64 * KiB,
                                     t - 1,  t,    t + 1, t + 17, 1 * MiB, 4 * MiB, 1 * MiB + 3, t + 1, t,
                                     t - 16, 5000, 17,    1,      2 * t,   3,       4 * MiB + 1, 16};
  uint64_t seed = test_seed();
  size_t size = steps[0];
  auto* p = static_cast<char*>(mapalloc_malloc(size));
  ASSERT_NE(p, nullptr);
  uint64_t key = block_key(nullptr, 0, seed);
  fill_pattern(p, size, key);
  for (size_t i = 1; i < steps.size(); i++) {
    size_t next = steps[i];
    auto* q = static_cast<char*>(mapalloc_realloc(p, next));
    ASSERT_NE(q, nullptr) << "realloc " << size << " -> " << next;
    ASSERT_TRUE(is_aligned(q, 16)) << q;
    ASSERT_GE(mapalloc_usable_size(q), next) << "ptr " << static_cast<void*>(q);
    size_t kept = std::min(size, next);
    size_t bad = check_pattern(q, kept, key);
    ASSERT_EQ(bad, SIZE_MAX) << "realloc " << size << " -> " << next << " (" << static_cast<void*>(p) << " -> "
                             << static_cast<void*>(q) << ") lost byte " << bad << ", seed " << seed;
    key = block_key(q, next, seed + i);
    fill_pattern(q, next, key);
    p = q;
    size = next;
  }
  mapalloc_free(p);
}

// A block of size bytes, filled, reallocated to next: *from and *to get the
// two addresses, and the bytes both sizes share must have come along.
static void realloc_filled(size_t size, size_t next, uint64_t seed, void** from, void** to) {
  void* p = mapalloc_malloc(size);
  ASSERT_NE(p, nullptr);
  uint64_t key = block_key(p, size, seed);
  fill_pattern(p, size, key);
  void* q = mapalloc_realloc(p, next);
  ASSERT_NE(q, nullptr);
  size_t bad = check_pattern(q, std::min(size, next), key);
  ASSERT_EQ(bad, SIZE_MAX) << "realloc " << size << " -> " << next << " (" << p << " -> " << q << ") byte " << bad;
  *from = p;
  *to = q;
}

TEST(Realloc, SmallSizesToNeighbourSizesPreserveContents) {
  uint64_t seed = test_seed();
  for (size_t size = 1; size <= 2048; size += 7) {
    for (size_t next : {size + 1, size * 2, size / 2 + 1, size + 16}) {
      void *p, *q;
      ASSERT_NO_FATAL_FAILURE(realloc_filled(size, next, seed, &p, &q));
      mapalloc_free(q);
    }
  }
}

// Secure builds keep a block's last two bytes for its canary's record, so a
// request of a class's size, or one byte short of it, takes the next class.
// A realloc between sizes on either side of that line moves the block, one
// between sizes that share a class does not, and either way the contents
// and the usable size (the request) follow.
TEST(Realloc, AroundTheClassSizeKeepsContentsAndUsableSize) {
  uint64_t seed = test_seed();
  for (size_t block : {16, 64, 128, 1024, 4096, 40960}) {
    for (size_t first : {block, block - 1, block - 2, block - 7}) {
      for (size_t next : {block, block - 1, block - 2, block - 3}) {
        void *p, *q;
        ASSERT_NO_FATAL_FAILURE(realloc_filled(first, next, seed, &p, &q));
        if (MAPALLOC_TEST_SECURE) {
          EXPECT_EQ(mapalloc_usable_size(q), next) << "realloc " << first << " -> " << next;
          // (At 16, 15 bytes in the 32-byte class are less than half of it: moved.)
          bool first_next_class = first + 2 > block, next_next_class = next + 2 > block;
          if (first_next_class == next_next_class && block > 16) EXPECT_EQ(q, p) << "realloc " << first << " -> " << next;
        } else {
          EXPECT_GE(mapalloc_usable_size(q), next);
        }
        mapalloc_free(q);
      }
    }
  }
}

// realloc keeps every byte malloc_usable_size reported, as glibc does, not
// only the bytes asked for: large blocks, plain and over-aligned, grown.
TEST(Realloc, GrowingALargeBlockKeepsEveryUsableByte) {
  const size_t t = mapalloc_mmap_threshold();
  for (size_t alignment : {size_t(0), size_t(4096), 64 * KiB}) {
    for (size_t size : {t + 1, t + 4001, 3 * t + 17}) {
      void* v = nullptr;
      if (alignment) {
        ASSERT_EQ(mapalloc_posix_memalign(&v, alignment, size), 0);
      } else {
        v = mapalloc_malloc(size);
      }
      auto* p = static_cast<unsigned char*>(v);
      ASSERT_NE(p, nullptr);
      size_t usable = mapalloc_usable_size(p);
      ASSERT_GE(usable, size);
      memset(p, 0xab, usable);
      auto* q = static_cast<unsigned char*>(mapalloc_realloc(p, 2 * usable));
      ASSERT_NE(q, nullptr);
      size_t kept = 0;
      while (kept < usable && q[kept] == 0xab) kept++;
      EXPECT_EQ(kept, usable) << "size " << size << " alignment " << alignment;
      mapalloc_free(q);
    }
  }
}

TEST(Realloc, FailureReturnsNullWithENOMEMAndKeepsOldBlock) {
  size_t t = mapalloc_mmap_threshold();
  for (size_t size : {size_t(100), size_t(5000), t + 1, 1 * MiB}) {
    void* p = mapalloc_malloc(size);
    ASSERT_NE(p, nullptr);
    uint64_t key = block_key(p, size, 7);
    fill_pattern(p, size, key);
    for (size_t huge : {SIZE_MAX, SIZE_MAX - 15, size_t(PTRDIFF_MAX) + 1, size_t(PTRDIFF_MAX)}) {
      errno = 0;
      void* q = mapalloc_realloc(p, huge);
      EXPECT_EQ(q, nullptr) << "realloc(" << p << " of " << size << ", " << huge << ")";
      EXPECT_EQ(errno, ENOMEM) << "realloc(" << p << " of " << size << ", " << huge << ")";
      if (q) {
        p = q;
        continue;
      }
      EXPECT_EQ(mapalloc_owns(p), 1) << "old block " << p << " of " << size << " freed by failed realloc";
      EXPECT_EQ(check_pattern(p, size, key), SIZE_MAX) << "old block " << p << " of " << size << " changed";
    }
    mapalloc_free(p);
  }
}

// A request bigger than all of RAM and swap, yet well inside the address
// space: with vm.overcommit_memory=0 (the default) the kernel refuses it to
// glibc's malloc (ENOMEM). mapalloc must fail it too, with every old block
// intact, not hand out a MAP_NORESERVE range whose pages the kernel never
// promised: the program then meets the OOM killer instead of a NULL.
// (Growable blocks always take that path; guarded large blocks take it
// on kernels without guard markers, before 6.13.)
TEST(Realloc, SizeBeyondRamAndSwapFailsWithENOMEMLikeGlibc) {
  char mode = '0';
  int fd = open("/proc/sys/vm/overcommit_memory", O_RDONLY);
  if (fd >= 0) {
    if (read(fd, &mode, 1) != 1) mode = '0';
    close(fd);
  }
  if (mode == '1') GTEST_SKIP() << "vm.overcommit_memory=1 grants any size, to glibc too";
  struct sysinfo si;
  ASSERT_EQ(sysinfo(&si), 0);
  uint64_t total = (uint64_t(si.totalram) + si.totalswap) * si.mem_unit;
  size_t huge = size_t(4 * total + 1024 * MiB) & ~(1024 * MiB - 1);
  if (huge > (size_t(1) << 43)) GTEST_SKIP() << "RAM and swap too large to find a size the kernel refuses";
  errno = 0;
  void* p = mapalloc_malloc(huge);
  EXPECT_EQ(p, nullptr) << "malloc(" << huge << ")";
  EXPECT_EQ(errno, ENOMEM);
  if (p) mapalloc_free(p);
  errno = 0;
  p = mapalloc_calloc(1, huge);
  EXPECT_EQ(p, nullptr) << "calloc(1, " << huge << ")";
  EXPECT_EQ(errno, ENOMEM);
  if (p) mapalloc_free(p);
  errno = 0;
  p = mapalloc_aligned_alloc(1 * MiB, huge);
  EXPECT_EQ(p, nullptr) << "aligned_alloc(1 MiB, " << huge << ")";
  EXPECT_EQ(errno, ENOMEM);
  if (p) mapalloc_free(p);
  size_t t = mapalloc_mmap_threshold();
  // The last one is grown first: a growable block.
  for (size_t size : {size_t(100), size_t(5000), t + 1, 4 * t}) {
    p = mapalloc_malloc(size < 4 * t ? size : t + 1);
    ASSERT_NE(p, nullptr);
    if (size == 4 * t) p = mapalloc_realloc(p, size);
    ASSERT_NE(p, nullptr);
    uint64_t key = block_key(p, size, 11);
    fill_pattern(p, size, key);
    errno = 0;
    void* q = mapalloc_realloc(p, huge);
    EXPECT_EQ(q, nullptr) << "realloc(" << p << " of " << size << ", " << huge << ")";
    if (q) {
      mapalloc_free(q);  // never touched: no memory behind it
      continue;
    }
    EXPECT_EQ(errno, ENOMEM);
    EXPECT_EQ(mapalloc_owns(p), 1) << "old block " << p << " of " << size << " freed by failed realloc";
    EXPECT_EQ(check_pattern(p, size, key), SIZE_MAX) << "old block " << p << " of " << size << " changed";
    mapalloc_free(p);
  }
}

TEST(Realloc, ZeroSizeFreesAndReturnsNullLikeGlibc) {
  size_t t = mapalloc_mmap_threshold();
  for (size_t size : {size_t(1), size_t(100), size_t(5000), t + 1, 2 * MiB}) {
    void* p = mapalloc_malloc(size);
    ASSERT_NE(p, nullptr);
    mapalloc_stats before = stats();
    errno = 1234;
    EXPECT_EQ(mapalloc_realloc(p, 0), nullptr) << "size " << size << " ptr " << p;
    EXPECT_EQ(errno, 1234);
    EXPECT_EQ(mapalloc_owns(p), 0) << "realloc(p, 0) did not free " << p << " of size " << size;
    mapalloc_stats after = stats();
    if (size > t) {
      EXPECT_EQ(after.large_live_count + 1, before.large_live_count) << "size " << size;
    } else {
      EXPECT_EQ(after.small_live_blocks + 1, before.small_live_blocks) << "size " << size;
    }
  }
}

TEST(Reallocarray, OverflowReturnsNullWithENOMEMAndKeepsOldBlock) {
  void* p = mapalloc_malloc(64);
  ASSERT_NE(p, nullptr);
  fill_pattern(p, 64, 99);
  for (auto [n, size] : {std::pair<size_t, size_t>{SIZE_MAX, 2},
                         {2, SIZE_MAX},
                         {size_t(1) << 33, size_t(1) << 31},
                         {SIZE_MAX / 3 + 1, 3}}) {
    errno = 0;
    void* q = mapalloc_reallocarray(p, n, size);
    EXPECT_EQ(q, nullptr) << "reallocarray(p, " << n << ", " << size << ")";
    EXPECT_EQ(errno, ENOMEM) << "reallocarray(p, " << n << ", " << size << ")";
    EXPECT_EQ(mapalloc_owns(p), 1);
    EXPECT_EQ(check_pattern(p, 64, 99), SIZE_MAX) << "old block " << p << " changed";
  }
  errno = 0;
  EXPECT_EQ(mapalloc_reallocarray(nullptr, SIZE_MAX, 16), nullptr);
  EXPECT_EQ(errno, ENOMEM);
  void* q = mapalloc_reallocarray(p, 100, 10);
  ASSERT_NE(q, nullptr);
  EXPECT_GE(mapalloc_usable_size(q), 1000u);
  EXPECT_EQ(check_pattern(q, 64, 99), SIZE_MAX) << "reallocarray lost contents: " << p << " -> " << q;
  mapalloc_free(q);
  void* r = mapalloc_reallocarray(nullptr, 3, 5);
  ASSERT_NE(r, nullptr);
  EXPECT_GE(mapalloc_usable_size(r), 15u);
  mapalloc_free(r);
}

// ---------------------------------------------------------------- aligned

TEST(PosixMemalign, InvalidAlignmentReturnsEINVALAndLeavesOutputAndErrno) {
  for (size_t alignment : {size_t(0), size_t(1), size_t(2), size_t(3), sizeof(void*) / 2, size_t(12), size_t(24),
                           size_t(48), size_t(4097), size_t(3) << 20, SIZE_MAX}) {
    void* sentinel = &global_int;
    void* out = sentinel;
    errno = 1234;
    EXPECT_EQ(mapalloc_posix_memalign(&out, alignment, 64), EINVAL) << "alignment " << alignment;
    EXPECT_EQ(out, sentinel) << "alignment " << alignment;
    EXPECT_EQ(errno, 1234) << "alignment " << alignment;
  }
}

TEST(PosixMemalign, EveryPowerOfTwo8To4MiBAcrossThreshold) {
  for (size_t alignment : all_alignments()) {
    std::vector<void*> live;
    for (size_t size : alignment_test_sizes(alignment)) {
      void* p = nullptr;
      errno = 1234;
      ASSERT_EQ(mapalloc_posix_memalign(&p, alignment, size), 0) << "alignment " << alignment << " size " << size;
      EXPECT_EQ(errno, 1234);
      check_aligned_block(p, alignment, size, "posix_memalign");
      live.push_back(p);
    }
    for (void* p : live) mapalloc_free(p);
  }
}

TEST(PosixMemalign, HugeSizeOrAlignmentReturnsENOMEM) {
  struct Case {
    size_t alignment, size;
  };
  for (Case c :
       {Case{64, SIZE_MAX}, Case{4096, SIZE_MAX - 100}, Case{2 * MiB, size_t(PTRDIFF_MAX)}, Case{size_t(1) << 63, 1}}) {
    void* out = &global_int;
    EXPECT_EQ(mapalloc_posix_memalign(&out, c.alignment, c.size), ENOMEM)
        << "alignment " << c.alignment << " size " << c.size;
    EXPECT_EQ(out, static_cast<void*>(&global_int));
  }
}

// An alignment above the mmap threshold sends even a tiny request to its own
// mapping. Such a block may start within one page-map slot (16 KiB) of the
// next mapping, which can be another large block: both must stay valid.
TEST(PosixMemalign, TinyBlocksAlignedAboveThresholdLeaveNeighboursValid) {
  size_t t = mapalloc_mmap_threshold();
  for (size_t alignment : {2 * t, 4 * t, 2 * MiB}) {
    for (size_t tiny : {size_t(0), size_t(16), size_t(4096)}) {
      std::vector<void*> large, aligned;
      for (int i = 0; i < 100; i++) {
        large.push_back(mapalloc_malloc(t + 1));
        void* p = nullptr;
        ASSERT_EQ(mapalloc_posix_memalign(&p, alignment, tiny), 0) << "alignment " << alignment << " size " << tiny;
        // Served as for one byte when it asked for none: at least one usable byte.
        size_t usable = mapalloc_usable_size(p);
        ASSERT_GE(usable, tiny ? tiny : 1) << "alignment " << alignment << " size " << tiny;
        memset(p, 0x3c, usable);
        aligned.push_back(p);
      }
      size_t lost = 0;
      void* first_lost = nullptr;
      for (void* p : large) {
        if (mapalloc_owns(p)) continue;
        if (!lost++) first_lost = p;
      }
      for (void* p : aligned) {
        if (mapalloc_owns(p)) continue;
        if (!lost++) first_lost = p;
      }
      // Freeing a block mapalloc no longer recognises aborts: leak them all.
      if (lost)
        ADD_FAILURE() << lost << " of 200 blocks no longer owned, first " << first_lost << " (blocks of " << t + 1
                      << " bytes interleaved with posix_memalign(" << alignment << ", " << tiny
                      << ")): a tiny over-aligned block shares a page-map slot with a neighbouring mapping";
      if (lost) continue;
      for (void* p : aligned) mapalloc_free(p);
      for (void* p : large) mapalloc_free(p);
    }
  }
}

TEST(AlignedAlloc, EveryAlignmentWithThresholdAtMinimumAndMaximum) {
  // At 1 MiB every alignment up to 1 MiB is served from size classes.
  ThresholdGuard restore;
  for (size_t threshold : {size_t(64 * KiB), size_t(1 * MiB)}) {
    ASSERT_EQ(mapalloc_set_mmap_threshold(threshold), 1);
    for (size_t alignment : all_alignments()) {
      std::vector<void*> live;
      for (size_t size : alignment_test_sizes(alignment)) {
        void* p = mapalloc_aligned_alloc(alignment, size);
        SCOPED_TRACE("threshold " + std::to_string(threshold));
        check_aligned_block(p, alignment, size, "aligned_alloc");
        live.push_back(p);
      }
      for (void* p : live) mapalloc_free(p);
    }
  }
}

TEST(Malloc, SizesAroundMaximumThreshold) {
  ThresholdGuard restore;
  ASSERT_EQ(mapalloc_set_mmap_threshold(1 * MiB), 1);
  std::vector<size_t> sizes;
  for (size_t s = 1 * MiB - 64; s <= 1 * MiB + 64; s += 8) sizes.push_back(s);
  for (size_t s = 512 * KiB; s <= 1 * MiB; s += 64 * KiB) sizes.push_back(s + 1);
  check_sizes_all_live(sizes, test_seed());
}

TEST(AlignedAlloc, EveryPowerOfTwo8To4MiBAcrossThreshold) {
  for (size_t alignment : all_alignments()) {
    std::vector<void*> live;
    for (size_t size : alignment_test_sizes(alignment)) {
      errno = 1234;
      void* p = mapalloc_aligned_alloc(alignment, size);
      EXPECT_EQ(errno, 1234);
      check_aligned_block(p, alignment, size, "aligned_alloc");
      live.push_back(p);
    }
    for (void* p : live) mapalloc_free(p);
  }
}

TEST(AlignedAlloc, NonPowerOfTwoAlignmentFailsWithEINVAL) {
  // glibc >= 2.38 semantics (C17 DR 460 leaves it implementation-defined).
  for (size_t alignment : {size_t(0), size_t(3), size_t(24), size_t(4097)}) {
    errno = 0;
    void* p = mapalloc_aligned_alloc(alignment, 64);
    EXPECT_EQ(p, nullptr) << "alignment " << alignment;
    EXPECT_EQ(errno, EINVAL) << "alignment " << alignment;
    if (p) mapalloc_free(p);
  }
}

TEST(AlignedAlloc, SmallAlignmentsBehaveLikeMalloc) {
  for (size_t alignment : {size_t(1), size_t(2), size_t(4), size_t(8), size_t(16)}) {
    void* p = mapalloc_aligned_alloc(alignment, 24);
    check_aligned_block(p, 16, 24, "aligned_alloc");
    mapalloc_free(p);
  }
}

TEST(Memalign, EveryPowerOfTwo8To4MiBAcrossThreshold) {
  for (size_t alignment : all_alignments()) {
    std::vector<void*> live;
    for (size_t size : alignment_test_sizes(alignment)) {
      errno = 1234;
      void* p = mapalloc_memalign(alignment, size);
      EXPECT_EQ(errno, 1234);
      check_aligned_block(p, alignment, size, "memalign");
      live.push_back(p);
    }
    for (void* p : live) mapalloc_free(p);
  }
}

TEST(Memalign, NonPowerOfTwoAlignmentRoundsUpLikeGlibc) {
  struct Case {
    size_t alignment, expect;
  };
  for (Case c : {Case{0, 16}, Case{1, 16}, Case{3, 16}, Case{24, 32}, Case{100, 128}, Case{4097, 8192},
                 Case{(1 << 20) + 1, 2 << 20}}) {
    void* p = mapalloc_memalign(c.alignment, 100);
    check_aligned_block(p, c.expect, 100, "memalign");
    mapalloc_free(p);
  }
}

TEST(Memalign, HugeSizeFailsWithENOMEM) {
  for (size_t alignment : {size_t(16), size_t(4096), 2 * MiB}) {
    errno = 0;
    EXPECT_EQ(mapalloc_memalign(alignment, SIZE_MAX - 100), nullptr) << "alignment " << alignment;
    EXPECT_EQ(errno, ENOMEM) << "alignment " << alignment;
  }
}

TEST(Memalign, AlignmentsUpTo2Pow63FailWithENOMEMAndAboveWithEINVALLikeGlibc) {
  // glibc takes alignments up to SIZE_MAX / 2 + 1 (2^63), rounding others up,
  // and fails those for want of memory; only above 2^63 is EINVAL.
  for (size_t alignment : {(size_t(1) << 62) + 1, size_t(3) << 61, size_t(1) << 63}) {
    errno = 0;
    EXPECT_EQ(mapalloc_memalign(alignment, 10), nullptr) << "alignment " << alignment;
    EXPECT_EQ(errno, ENOMEM) << "alignment " << alignment;
  }
  for (size_t alignment : {(size_t(1) << 63) + 1, SIZE_MAX}) {
    errno = 0;
    EXPECT_EQ(mapalloc_memalign(alignment, 10), nullptr) << "alignment " << alignment;
    EXPECT_EQ(errno, EINVAL) << "alignment " << alignment;
  }
}

TEST(Valloc, PageAligned) {
  size_t t = mapalloc_mmap_threshold();
  std::vector<void*> live;
  for (size_t size :
       {size_t(0), size_t(1), size_t(100), kPage - 1, kPage, kPage + 1, 5 * kPage, t - 1, t, t + 1, 3 * MiB}) {
    void* p = mapalloc_valloc(size);
    check_aligned_block(p, kPage, size, "valloc");
    live.push_back(p);
  }
  for (void* p : live) mapalloc_free(p);
}

TEST(Pvalloc, RoundsUpToWholePages) {
  size_t t = mapalloc_mmap_threshold();
  std::vector<void*> live;
  for (size_t size :
       {size_t(0), size_t(1), size_t(100), kPage - 1, kPage, kPage + 1, 5 * kPage + 3, t - 1, t, t + 1, 3 * MiB + 1}) {
    size_t rounded = (size + kPage - 1) / kPage * kPage;  // glibc: pvalloc(0) may be less than a page
    void* p = mapalloc_pvalloc(size);
    check_aligned_block(p, kPage, rounded, "pvalloc");
    live.push_back(p);
  }
  for (void* p : live) mapalloc_free(p);
}

TEST(Valloc, HugeSizesFailWithENOMEM) {
  for (size_t size : {SIZE_MAX, SIZE_MAX - 100, SIZE_MAX - kPage + 1, size_t(PTRDIFF_MAX) + 1}) {
    errno = 0;
    EXPECT_EQ(mapalloc_valloc(size), nullptr) << "valloc " << size;
    EXPECT_EQ(errno, ENOMEM) << "valloc " << size;
    errno = 0;
    EXPECT_EQ(mapalloc_pvalloc(size), nullptr) << "pvalloc " << size;
    EXPECT_EQ(errno, ENOMEM) << "pvalloc " << size;
  }
  errno = 0;
  EXPECT_EQ(mapalloc_memalign(4096, SIZE_MAX - 100), nullptr);
  EXPECT_EQ(errno, ENOMEM);
}

// ---------------------------------------------------------------- sized free

TEST(FreeSized, ReleasesBlocksOfEverySizeAndAlignment) {
  size_t t = mapalloc_mmap_threshold();
  mapalloc_stats before = stats();
  for (size_t size : {size_t(1), size_t(16), size_t(1000), size_t(5000), t, t + 1, 2 * MiB}) {
    void* p = mapalloc_malloc(size);
    ASSERT_NE(p, nullptr);
    mapalloc_free_sized(p, size);
    EXPECT_EQ(mapalloc_owns(p), 0) << "free_sized left " << p << " of size " << size << " live";
    for (size_t alignment : {size_t(32), size_t(4096), 64 * KiB, 2 * MiB}) {
      size_t asize = (size + alignment - 1) / alignment * alignment;  // aligned_alloc wants a multiple
      void* q = mapalloc_aligned_alloc(alignment, asize);
      check_aligned_block(q, alignment, asize, "aligned_alloc");
      mapalloc_free_aligned_sized(q, alignment, asize);
      EXPECT_EQ(mapalloc_owns(q), 0) << "free_aligned_sized left " << q << " alignment " << alignment;
    }
  }
  mapalloc_stats after = stats();
  EXPECT_EQ(after.small_live_blocks, before.small_live_blocks);
  EXPECT_EQ(after.large_live_count, before.large_live_count);
}

// ---------------------------------------------------------------- owns

TEST(Owns, TrueForLiveBlocksFalseAfterFree) {
  size_t t = mapalloc_mmap_threshold();
  for (size_t size : {size_t(0), size_t(1), size_t(100), size_t(5000), t, t + 1, 3 * MiB}) {
    auto* p = static_cast<char*>(mapalloc_malloc(size));
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(mapalloc_owns(p), 1) << "size " << size << " ptr " << static_cast<void*>(p);
    EXPECT_EQ(mapalloc_owns(p + 16), 0) << "interior pointer, size " << size << " ptr " << static_cast<void*>(p);
    EXPECT_EQ(mapalloc_owns(p + 1), 0) << "interior pointer, size " << size << " ptr " << static_cast<void*>(p);
    mapalloc_free(p);
    EXPECT_EQ(mapalloc_owns(p), 0) << "freed block, size " << size << " ptr " << static_cast<void*>(p);
  }
  void* a = mapalloc_aligned_alloc(2 * MiB, 2 * MiB);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(mapalloc_owns(a), 1) << a;
  mapalloc_free(a);
}

TEST(Owns, FalseForForeignPointers) {
  int on_stack = 0;
  static int static_int;
  void* glibc_small = std::malloc(64);
  void* glibc_large = std::malloc(4 * MiB);  // glibc mmaps this one
  EXPECT_EQ(mapalloc_owns(nullptr), 0);
  EXPECT_EQ(mapalloc_owns(&on_stack), 0);
  EXPECT_EQ(mapalloc_owns(&global_int), 0);
  EXPECT_EQ(mapalloc_owns(&static_int), 0);
  EXPECT_EQ(mapalloc_owns(reinterpret_cast<void*>(&mapalloc_malloc)), 0);
  EXPECT_EQ(mapalloc_owns(glibc_small), 0) << glibc_small;
  EXPECT_EQ(mapalloc_owns(glibc_large), 0) << glibc_large;
  EXPECT_EQ(mapalloc_owns(reinterpret_cast<void*>(uintptr_t(0x1000))), 0);
  EXPECT_EQ(mapalloc_owns(reinterpret_cast<void*>(uintptr_t(1) << 46)), 0);
  EXPECT_EQ(mapalloc_owns(reinterpret_cast<void*>((uintptr_t(1) << 47) - 16)), 0);
  std::free(glibc_small);
  std::free(glibc_large);
}

// ---------------------------------------------------------------- threshold

TEST(MmapThreshold, SetChangesWhichPathServesARequest) {
  ThresholdGuard restore;
  const size_t size = 100 * KiB;
  for (size_t threshold : {size_t(64 * KiB), size_t(1 * MiB), size_t(96 * KiB), size_t(128 * KiB)}) {
    ASSERT_EQ(mapalloc_set_mmap_threshold(threshold), 1) << "threshold " << threshold;
    EXPECT_EQ(mapalloc_mmap_threshold(), threshold_in_effect(threshold));
    mapalloc_stats before = stats();
    void* p = mapalloc_malloc(size);
    ASSERT_NE(p, nullptr);
    mapalloc_stats during = stats();
    bool large = size > threshold;
    EXPECT_EQ(during.large_live_count - before.large_live_count, large ? 1u : 0u)
        << "size " << size << " threshold " << threshold << " ptr " << p;
    EXPECT_EQ(during.large_requests - before.large_requests, large ? 1u : 0u) << "threshold " << threshold;
    EXPECT_EQ(during.small_live_blocks - before.small_live_blocks, large ? 0u : 1u) << "threshold " << threshold;
    fill_pattern(p, size, 5);
    EXPECT_EQ(check_pattern(p, size, 5), SIZE_MAX);
    mapalloc_free(p);
  }
}

TEST(MmapThreshold, BlocksOutliveAThresholdChange) {
  ThresholdGuard restore;
  const size_t size = 100 * KiB;
  ASSERT_EQ(mapalloc_set_mmap_threshold(1 * MiB), 1);
  void* small = mapalloc_malloc(size);
  ASSERT_EQ(mapalloc_set_mmap_threshold(64 * KiB), 1);
  void* large = mapalloc_malloc(size);
  ASSERT_NE(small, nullptr);
  ASSERT_NE(large, nullptr);
  fill_pattern(small, size, 1);
  fill_pattern(large, size, 2);
  ASSERT_EQ(mapalloc_set_mmap_threshold(restore.saved), 1);
  EXPECT_EQ(mapalloc_usable_size(small) >= size && mapalloc_usable_size(large) >= size, true);
  // realloc across the old and new thresholds keeps contents
  void* small2 = mapalloc_realloc(small, size + 10);
  void* large2 = mapalloc_realloc(large, size - 10);
  ASSERT_NE(small2, nullptr);
  ASSERT_NE(large2, nullptr);
  EXPECT_EQ(check_pattern(small2, size, 1), SIZE_MAX) << small << " -> " << small2;
  EXPECT_EQ(check_pattern(large2, size - 10, 2), SIZE_MAX) << large << " -> " << large2;
  mapalloc_free(small2);
  mapalloc_free(large2);
}

TEST(MmapThreshold, OutOfRangeValuesAreRejected) {
  ThresholdGuard restore;
  size_t t = mapalloc_mmap_threshold();
  for (size_t bad :
       {size_t(0), size_t(1), size_t(4096), size_t(64 * KiB - 1), size_t(1 * MiB + 1), size_t(64 * MiB), SIZE_MAX}) {
    EXPECT_EQ(mapalloc_set_mmap_threshold(bad), 0) << "threshold " << bad;
    EXPECT_EQ(mapalloc_mmap_threshold(), t) << "threshold " << bad << " changed the value";
  }
  EXPECT_EQ(mapalloc_set_mmap_threshold(64 * KiB), 1);
  EXPECT_EQ(mapalloc_set_mmap_threshold(1 * MiB), 1);
}

// ---------------------------------------------------------------- stats

TEST(Stats, CountsLiveBlocksAndRequests) {
  const int n = 1000;
  mapalloc_stats before = stats();
  std::vector<void*> ps;
  for (int i = 0; i < n; i++) ps.push_back(mapalloc_malloc(24));
  void* large = mapalloc_malloc(mapalloc_mmap_threshold() + 1);
  mapalloc_stats during = stats();
  EXPECT_EQ(during.small_live_blocks - before.small_live_blocks, uint64_t(n));
  EXPECT_GE(during.small_requests - before.small_requests, uint64_t(n));
  EXPECT_EQ(during.large_live_count - before.large_live_count, 1u);
  EXPECT_EQ(during.large_live_bytes - before.large_live_bytes, mapalloc_mmap_threshold() + 1);
  EXPECT_GT(during.bytes_mapped, 0u);
  EXPECT_GE(during.bytes_mapped, during.bytes_committed);
  EXPECT_GT(during.class_count, 0u);
  EXPECT_LE(during.class_count, unsigned(MAPALLOC_MAX_CLASSES));
  for (void* p : ps) mapalloc_free(p);
  mapalloc_free(large);
  mapalloc_stats after = stats();
  EXPECT_EQ(after.small_live_blocks, before.small_live_blocks);
  EXPECT_EQ(after.large_live_count, before.large_live_count);
}

TEST(Stats, PrintWritesTextAndJson) {
  for (bool json : {false, true}) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    if (json) {
      mapalloc_stats_print_json(fds[1]);
    } else {
      mapalloc_stats_print(fds[1]);
    }
    close(fds[1]);
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof(buf))) > 0) out.append(buf, size_t(n));
    close(fds[0]);
    ASSERT_FALSE(out.empty());
    if (json) {
      EXPECT_EQ(out.front(), '{') << out;
      EXPECT_EQ(out.substr(out.size() - 2), "}\n") << out;
      EXPECT_NE(out.find("\"bytes_mapped\":"), std::string::npos) << out;
    } else {
      EXPECT_NE(out.find("mapalloc"), std::string::npos) << out;
    }
  }
}
