// Memory behaviour of the allocator as a whole, through the prefixed API:
//   MemoryRss      memory freed goes back to the OS: after the purge delay
//                  (triggered by later allocator activity, there is no
//                  background thread) or at once with mapalloc_collect(),
//                  per category (small, medium, large) from 1 and 4 threads
//   MemorySteady   a steady workload does not purge and re-fault each round
//   MemoryStats    mapalloc_stats counters against known allocation patterns,
//                  and the text and JSON reports
//   MemoryOptions  MAPALLOC_OPTIONS warnings (child processes: options are
//                  read once at start-up) and the mmap threshold setter
//   MemoryRealloc  realloc growing a block past the threshold (growable
//                  layout: mprotect within a reservation, mremap beyond it)
//   MemoryReallocDeathTest  overflow past a grown block: guard or canary
//
// tests/meson.build registers one meson test per case (suite 'memory'),
// not parallel: the RSS cases measure the whole process and fault in 1 GiB.
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdlib>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <random>
#include <vector>

#include "mapalloc.h"
#include "test_util.h"

extern char** environ;

using namespace mapalloc_test;

namespace {

constexpr size_t KiB = 1024;
constexpr size_t MiB = 1024 * KiB;
constexpr size_t GiB = 1024 * MiB;

mapalloc_stats stats() {
  mapalloc_stats s;
  mapalloc_stats_get(&s);
  return s;
}

// Resident set size of this process: the second field of /proc/self/statm
// times the page size. Read with open/read so that it allocates nothing.
int64_t rss_bytes() {
  int fd = ::open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buf[256];
  ssize_t n = ::read(fd, buf, sizeof(buf) - 1);
  ::close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  const char* s = buf;
  while (*s && *s != ' ') s++;
  while (*s == ' ') s++;
  int64_t pages = 0;
  while (*s >= '0' && *s <= '9') pages = pages * 10 + (*s++ - '0');
  return pages * int64_t(sysconf(_SC_PAGESIZE));
}

double mib(int64_t bytes) { return double(bytes) / double(MiB); }

// Minor page faults taken by the calling thread so far.
long thread_minor_faults() {
  rusage ru{};
  getrusage(RUSAGE_THREAD, &ru);
  return ru.ru_minflt;
}

// Index of the size class with this block size in s.classes, or -1.
int class_index(const mapalloc_stats& s, size_t block_size) {
  for (unsigned c = 0; c < s.class_count && c < MAPALLOC_MAX_CLASSES; c++)
    if (s.classes[c].block_size == block_size) return int(c);
  return -1;
}

// Restores the mmap threshold a test changed, even if an assertion fails.
struct ThresholdGuard {
  size_t saved = mapalloc_mmap_threshold();
  ~ThresholdGuard() { mapalloc_set_mmap_threshold(saved); }
};

// ============================================================== RSS return

enum class Category { kSmall, kMedium, kLarge };

const char* category_name(Category c) {
  switch (c) {
    case Category::kSmall: return "small (16..1024 B)";
    case Category::kMedium: return "medium (1 KiB..threshold)";
    case Category::kLarge: return "large (threshold..4 MiB)";
  }
  return "?";
}

size_t pick_size(Category c, Rng& rng, size_t threshold) {
  switch (c) {
    case Category::kSmall: return size_t(rng.range(16, 1024));
    case Category::kMedium: return size_t(rng.range(1 * KiB + 1, threshold));
    case Category::kLarge: return size_t(rng.range(threshold + 1, 4 * MiB));
  }
  return 16;
}

// Blocks of one thread, chained through their first word (no side storage:
// a vector of pointers would be RSS of its own).
struct Chain {
  void* head = nullptr;
  uint64_t bytes = 0;
  uint64_t count = 0;
  bool out_of_memory = false;
};

void allocate_chain(Category c, uint64_t budget, uint64_t seed, size_t threshold, Chain* out) {
  Rng rng(seed);
  Chain chain;
  while (chain.bytes < budget) {
    size_t size = pick_size(c, rng, threshold);
    void* p = mapalloc_malloc(size);
    if (!p) {
      chain.out_of_memory = true;
      break;
    }
    std::memset(p, 0x5a, size);  // every page of the block is resident now
    *static_cast<void**>(p) = chain.head;
    chain.head = p;
    chain.bytes += size;
    chain.count++;
  }
  *out = chain;
}

void free_chain(Chain* chain) {
  for (void* p = chain->head; p;) {
    void* next = *static_cast<void**>(p);
    mapalloc_free(p);
    p = next;
  }
  chain->head = nullptr;
}

enum class Release { kAfterDelay, kCollect };

// Allocator activity after the purge delay, as small as can be so that it
// leaves little resident itself: more 16-byte blocks than two arena pages
// hold (at least one alloc_page, which purges idle free pages, then
// free_page), and one large block just above the threshold (its alloc and
// free purge and unmap idle cached mappings).
void purge_triggering_activity() {
  void* chain = nullptr;
  for (int i = 0; i < 2 * 4096 + 1; i++) {
    void* p = mapalloc_malloc(16);
    if (!p) break;
    *static_cast<void**>(p) = chain;
    chain = p;
  }
  while (chain) {
    void* next = *static_cast<void**>(chain);
    mapalloc_free(chain);
    chain = next;
  }
  const size_t size = mapalloc_mmap_threshold() + 1;
  if (auto* big = static_cast<char*>(mapalloc_malloc(size))) {
    std::memset(big, 1, size);
    mapalloc_free(big);
  }
}

// Allocates `total` bytes of category c from `threads` threads (each frees
// its own blocks), checks that RSS grew by at least 90% of it, frees
// everything, then checks RSS comes back: within 16 MiB after the purge delay
// and some allocator activity, or within 4 MiB right after mapalloc_collect().
void check_rss_returns(Category c, unsigned threads, uint64_t total, Release how) {
  SCOPED_TRACE(std::string(category_name(c)) + ", " + std::to_string(threads) + " thread(s), " +
               std::to_string(total / MiB) + " MiB");
  const size_t threshold = mapalloc_mmap_threshold();
  ASSERT_GE(threshold, 64 * KiB);
  ASSERT_LE(threshold, 1 * MiB);
  // Start from a clean slate (an earlier case in this process may have left
  // dirty pages or cached mappings that this one would reuse).
  mapalloc_collect();
  const mapalloc_stats before = stats();
  const int64_t baseline = rss_bytes();
  ASSERT_GT(baseline, 0);

  std::vector<Chain> chains(threads);
  int64_t peak = 0;
  mapalloc_stats during{};
  auto t0 = std::chrono::steady_clock::now();
  if (threads == 1) {
    allocate_chain(c, total, test_seed(), threshold, &chains[0]);
    peak = rss_bytes();
    during = stats();
    free_chain(&chains[0]);
  } else {
    std::barrier sync(threads + 1);
    std::vector<std::thread> workers;
    for (unsigned t = 0; t < threads; t++) {
      workers.emplace_back([&, t] {
        allocate_chain(c, total / threads, test_seed() + t + 1, threshold, &chains[t]);
        sync.arrive_and_wait();  // all blocks live: the main thread measures
        sync.arrive_and_wait();
        free_chain(&chains[t]);
      });
    }
    sync.arrive_and_wait();
    peak = rss_bytes();
    during = stats();
    sync.arrive_and_wait();
    for (auto& w : workers) w.join();  // exiting threads hand their pages back
  }
  double alloc_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  uint64_t bytes = 0, count = 0;
  for (const Chain& ch : chains) {
    ASSERT_FALSE(ch.out_of_memory);
    bytes += ch.bytes;
    count += ch.count;
  }
  ASSERT_GE(bytes, total);
  // The blocks went where the category says.
  if (c == Category::kLarge) {
    EXPECT_EQ(during.large_live_count - before.large_live_count, count);
    EXPECT_EQ(during.large_live_bytes - before.large_live_bytes, bytes);
    EXPECT_EQ(during.small_live_blocks, before.small_live_blocks);
  } else {
    EXPECT_EQ(during.small_live_blocks - before.small_live_blocks, count);
    EXPECT_EQ(during.large_live_count, before.large_live_count);
  }
  EXPECT_GE(peak - baseline, int64_t(double(bytes) * 0.9))
      << "RSS grew by only " << mib(peak - baseline) << " MiB for " << mib(int64_t(bytes)) << " MiB written";

  const int64_t after_free = rss_bytes();
  int64_t after = 0, after_sleep = 0;
  if (how == Release::kCollect) {
    mapalloc_collect();
    after = rss_bytes();
  } else {
    // Cached large mappings are unmapped after 10 * purge_delay_ms + 100 ms
    // idle (400 ms by default); free arena pages after 10 * purge_delay_ms.
    std::this_thread::sleep_for(std::chrono::milliseconds(600));
    after_sleep = rss_bytes();
    purge_triggering_activity();
    after = rss_bytes();
  }
  const mapalloc_stats end = stats();
  std::printf("[   rss    ] %s, %u thread(s): %.0f MiB in %llu blocks (%.2f s): baseline %.1f MiB, peak +%.1f, "
              "after free +%.1f, %s +%.1f MiB; purges %llu (%.1f MiB), munmap %llu\n",
              category_name(c), threads, mib(int64_t(bytes)), (unsigned long long)count, alloc_s, mib(baseline),
              mib(peak - baseline), mib(after_free - baseline),
              how == Release::kCollect ? "after collect" : "after delay + activity", mib(after - baseline),
              (unsigned long long)(end.purges - before.purges), mib(int64_t(end.purged_bytes - before.purged_bytes)),
              (unsigned long long)(end.munmap_calls - before.munmap_calls));
  if (how == Release::kCollect) {
    EXPECT_LE(after - baseline, int64_t(4 * MiB))
        << "mapalloc_collect() left RSS " << mib(after - baseline) << " MiB above the baseline (peak +"
        << mib(peak - baseline) << " MiB, after free +" << mib(after_free - baseline) << " MiB)";
  } else {
    EXPECT_LE(after - baseline, int64_t(16 * MiB))
        << "RSS " << mib(after - baseline) << " MiB above the baseline after the purge delay and more activity "
        << "(peak +" << mib(peak - baseline) << " MiB, after free +" << mib(after_free - baseline)
        << " MiB, after sleeping +" << mib(after_sleep - baseline) << " MiB)";
  }
  EXPECT_EQ(end.large_live_count, before.large_live_count);
  EXPECT_EQ(end.small_live_blocks, before.small_live_blocks);
}

}  // namespace

TEST(MemoryRss, SmallOneThreadReturnsAfterDelay) { check_rss_returns(Category::kSmall, 1, 1 * GiB, Release::kAfterDelay); }
TEST(MemoryRss, SmallFourThreadsReturnAfterDelay) { check_rss_returns(Category::kSmall, 4, 1 * GiB, Release::kAfterDelay); }
TEST(MemoryRss, MediumOneThreadReturnsAfterDelay) { check_rss_returns(Category::kMedium, 1, 1 * GiB, Release::kAfterDelay); }
TEST(MemoryRss, MediumFourThreadsReturnAfterDelay) { check_rss_returns(Category::kMedium, 4, 1 * GiB, Release::kAfterDelay); }
TEST(MemoryRss, LargeOneThreadReturnsAfterDelay) { check_rss_returns(Category::kLarge, 1, 1 * GiB, Release::kAfterDelay); }
TEST(MemoryRss, LargeFourThreadsReturnAfterDelay) { check_rss_returns(Category::kLarge, 4, 1 * GiB, Release::kAfterDelay); }
TEST(MemoryRss, SmallOneThreadReturnsOnCollect) { check_rss_returns(Category::kSmall, 1, 1 * GiB, Release::kCollect); }
TEST(MemoryRss, SmallFourThreadsReturnOnCollect) { check_rss_returns(Category::kSmall, 4, 1 * GiB, Release::kCollect); }
TEST(MemoryRss, MediumOneThreadReturnsOnCollect) { check_rss_returns(Category::kMedium, 1, 1 * GiB, Release::kCollect); }
TEST(MemoryRss, MediumFourThreadsReturnOnCollect) { check_rss_returns(Category::kMedium, 4, 1 * GiB, Release::kCollect); }
TEST(MemoryRss, LargeOneThreadReturnsOnCollect) { check_rss_returns(Category::kLarge, 1, 1 * GiB, Release::kCollect); }
TEST(MemoryRss, LargeFourThreadsReturnOnCollect) { check_rss_returns(Category::kLarge, 4, 1 * GiB, Release::kCollect); }

// ============================================================== steady workload

// Back-to-back rounds of 20 MiB in 1000-byte blocks, all freed each round:
// the pages freed by one round are reused by the next long before the purge
// delay, so nothing is purged, mapped or re-faulted after the first round.
//
// A round during which this thread is preempted (2 cores, maybe busy) really
// leaves pages idle past the purge delay, and purging them then is the
// policy, not a loop. So purges and faults are counted per round and judged
// in the "quiet" rounds: those for which this round and the one before spent
// under 4 ms together off the CPU (wall time minus thread CPU time). Purging
// and re-faulting cost CPU time, so a purge loop shows in every quiet round.
// 20 quiet rounds are needed.
TEST(MemorySteady, SmallRoundsDoNotPurgeAndRefault) {
  constexpr size_t kBlock = 1000;
  constexpr size_t kPerRound = 20 * MiB / kBlock;
  constexpr int kQuietRoundsNeeded = 20;
  constexpr int kMaxRounds = 400;
  constexpr double kOffCpuMs = 4;
  std::vector<void*> blocks(kPerRound);
  auto round = [&] {
    for (size_t i = 0; i < kPerRound; i++) {
      auto* p = static_cast<char*>(mapalloc_malloc(kBlock));
      ASSERT_NE(p, nullptr);
      // One word per block touches every page (blocks are 1 KiB apart).
      *reinterpret_cast<uint64_t*>(p) = i;
      blocks[i] = p;
    }
    for (size_t i = 0; i < kPerRound; i++) {
      ASSERT_EQ(*static_cast<uint64_t*>(blocks[i]), i);
      mapalloc_free(blocks[i]);
    }
  };
  auto ms_now = [](clockid_t clock) {
    timespec ts;
    clock_gettime(clock, &ts);
    return double(ts.tv_sec) * 1e3 + double(ts.tv_nsec) / 1e6;
  };
  double w0 = ms_now(CLOCK_MONOTONIC), c0 = ms_now(CLOCK_THREAD_CPUTIME_ID);
  round();  // warm-up: maps the chunks and faults the pages in once
  if (HasFatalFailure()) return;
  double prev_off = (ms_now(CLOCK_MONOTONIC) - w0) - (ms_now(CLOCK_THREAD_CPUTIME_ID) - c0);
  uint64_t prev_purges = 0;
  const mapalloc_stats first = stats();
  mapalloc_stats before = first;
  int rounds = 0, quiet = 0;
  uint64_t quiet_purges = 0, quiet_purged = 0;
  long quiet_faults = 0, all_faults = 0;
  double longest_ms = 0;
  std::string purging_rounds;
  while (quiet < kQuietRoundsNeeded && rounds < kMaxRounds) {
    const long f0 = thread_minor_faults();
    const double w = ms_now(CLOCK_MONOTONIC), c = ms_now(CLOCK_THREAD_CPUTIME_ID);
    round();
    if (HasFatalFailure()) return;
    const double ms = ms_now(CLOCK_MONOTONIC) - w;
    const double off = ms - (ms_now(CLOCK_THREAD_CPUTIME_ID) - c);
    const long faults = thread_minor_faults() - f0;
    const mapalloc_stats after = stats();
    const uint64_t purges = after.purges - before.purges;
    const bool is_quiet = prev_off + off < kOffCpuMs;
    if (is_quiet) {
      quiet++;
      quiet_purges += purges;
      quiet_purged += after.purged_bytes - before.purged_bytes;
      // Pages an excused purge in the round before released fault in here.
      if (prev_purges == 0) quiet_faults += faults;
    }
    if (purges && purging_rounds.size() < 2000) {
      purging_rounds += " #" + std::to_string(rounds) + (is_quiet ? "(quiet)" : "") + ": " + std::to_string(purges) +
                        " purges, " + std::to_string(faults) + " faults, " + std::to_string(ms) + " ms (" + std::to_string(off) + " off CPU);";
    }
    all_faults += faults;
    longest_ms = std::max(longest_ms, ms);
    prev_off = off;
    prev_purges = purges;
    before = after;
    rounds++;
  }
  const mapalloc_stats last = stats();
  std::printf("[  steady  ] %d rounds of %zu x %zu B (%d quiet, longest %.2f ms): purges %llu (%.1f MiB), in quiet "
              "rounds %llu; mmap %llu, mprotect %llu, munmap %llu; minor faults %ld, in quiet rounds %ld\n",
              rounds, kPerRound, kBlock, quiet, longest_ms, (unsigned long long)(last.purges - first.purges),
              mib(int64_t(last.purged_bytes - first.purged_bytes)), (unsigned long long)quiet_purges,
              (unsigned long long)(last.mmap_calls - first.mmap_calls),
              (unsigned long long)(last.mprotect_calls - first.mprotect_calls),
              (unsigned long long)(last.munmap_calls - first.munmap_calls), all_faults, quiet_faults);
  SCOPED_TRACE("rounds that purged:" + purging_rounds);
  ASSERT_GE(quiet, kQuietRoundsNeeded) << "the machine is too busy: this thread keeps being preempted for over "
                                       << kOffCpuMs / 2 << " ms per round";
  EXPECT_EQ(quiet_purges, 0u) << "purged " << mib(int64_t(quiet_purged)) << " MiB in rounds well within the delay";
  // 20 rounds x 20 MiB would be 100k faults if every round re-faulted.
  EXPECT_LT(quiet_faults, 200) << "pages re-faulted in rounds well within the purge delay";
  // Purging never unmaps: the chunks stay whatever the timing.
  EXPECT_EQ(last.mmap_calls - first.mmap_calls, 0u);
  EXPECT_EQ(last.mprotect_calls - first.mprotect_calls, 0u);
  EXPECT_EQ(last.munmap_calls - first.munmap_calls, 0u);
  EXPECT_EQ(last.small_live_blocks, first.small_live_blocks);
}

// malloc/free of the same large size: the freed mapping is cached and handed
// out again, no syscall and no fault per round.
TEST(MemorySteady, LargeMallocFreeLoopHitsCache) {
  constexpr size_t kSize = 200 * KiB;
  constexpr int kIterations = 10000;
  ASSERT_GT(kSize, mapalloc_mmap_threshold());
  // Warm-up: the first large block of a process also maps the metadata
  // region and a page-map leaf.
  mapalloc_free(mapalloc_malloc(kSize));
  const mapalloc_stats before = stats();
  const long faults_before = thread_minor_faults();
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kIterations; i++) {
    auto* p = static_cast<char*>(mapalloc_malloc(kSize));
    ASSERT_NE(p, nullptr) << "iteration " << i;
    for (size_t off = 0; off < kSize; off += 4096) p[off] = char(i);
    p[kSize - 1] = char(i);
    mapalloc_free(p);
  }
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const long faults = thread_minor_faults() - faults_before;
  const mapalloc_stats after = stats();
  std::printf("[  steady  ] %d x malloc/free(%zu): %.1f ms; cache hits %llu, mmap %llu, mprotect %llu, munmap %llu, "
              "madvise %llu, purges %llu, minor faults %ld\n",
              kIterations, kSize, ms, (unsigned long long)(after.large_cache_hits - before.large_cache_hits),
              (unsigned long long)(after.mmap_calls - before.mmap_calls),
              (unsigned long long)(after.mprotect_calls - before.mprotect_calls),
              (unsigned long long)(after.munmap_calls - before.munmap_calls),
              (unsigned long long)(after.madvise_calls - before.madvise_calls),
              (unsigned long long)(after.purges - before.purges), faults);
  // Every round should hit; a few misses are allowed for a preemption of over
  // 10 * purge_delay_ms + 100 ms between a free and the next malloc.
  EXPECT_GE(after.large_cache_hits - before.large_cache_hits, uint64_t(kIterations - 10));
  EXPECT_EQ(after.large_requests - before.large_requests, uint64_t(kIterations));
  EXPECT_LE(after.mmap_calls - before.mmap_calls, 2u);
  EXPECT_LE(after.mprotect_calls - before.mprotect_calls, 2u);
  EXPECT_LE(after.munmap_calls - before.munmap_calls, 2u);
  EXPECT_LE(after.purges - before.purges, 2u);
  EXPECT_LE(after.madvise_calls - before.madvise_calls, 2u);
  // 51 pages per round: re-faulting would be ~500k faults.
  EXPECT_LT(faults, 500);
  EXPECT_EQ(after.large_live_count, before.large_live_count);
}

// ============================================================== statistics

namespace {

struct ClassDelta {
  int64_t requests, live_blocks, live_bytes;
};

ClassDelta class_delta(const mapalloc_stats& a, const mapalloc_stats& b, int c) {
  return {int64_t(b.classes[c].requests - a.classes[c].requests),
          int64_t(b.classes[c].live_blocks - a.classes[c].live_blocks),
          int64_t(b.classes[c].live_bytes - a.classes[c].live_bytes)};
}

// The sums over classes agree with the totals.
void check_class_sums(const mapalloc_stats& s) {
  ASSERT_GT(s.class_count, 0u);
  ASSERT_LE(s.class_count, unsigned(MAPALLOC_MAX_CLASSES));
  uint64_t blocks = 0, bytes = 0, requests = 0;
  for (unsigned c = 0; c < s.class_count; c++) {
    const auto& cs = s.classes[c];
    EXPECT_EQ(cs.live_bytes, cs.live_blocks * cs.block_size) << "class " << c;
    EXPECT_LE(cs.live_blocks, cs.requests) << "class " << c;
    if (c > 0) {
      EXPECT_GT(cs.block_size, s.classes[c - 1].block_size) << "class " << c;
    }
    blocks += cs.live_blocks;
    bytes += cs.live_bytes;
    requests += cs.requests;
  }
  EXPECT_EQ(s.small_live_blocks, blocks);
  EXPECT_EQ(s.small_live_bytes, bytes);
  EXPECT_EQ(s.small_requests, requests);
}

}  // namespace

// A cached mapping split for a smaller block, and the split-off front, are
// merged again when a request fits neither: no fresh mapping, no fault on the
// pages still resident. The merged block is whole and writable.
TEST(MemoryLarge, SplitPiecesMergeForABiggerRequest) {
  const size_t big = 2 * MiB;
  mapalloc_free(mapalloc_malloc(big));  // cached
  const mapalloc_stats s0 = stats();
  void* small = mapalloc_malloc(big / 4);  // the mapping's last quarter; the front is cached apart
  ASSERT_NE(small, nullptr);
  mapalloc_free(small);
  void* again = mapalloc_malloc(big);  // neither piece holds it alone
  ASSERT_NE(again, nullptr);
  std::memset(again, 0x7e, big);
  const mapalloc_stats s1 = stats();
  EXPECT_GE(s1.large_coalesced - s0.large_coalesced, 1u);
  EXPECT_EQ(s1.large_cache_hits - s0.large_cache_hits, 2u);
  // No fresh mapping for the block. (Not "no mmap call": when the pieces
  // straddle a 1 GiB boundary, the piece above it takes a new page-map leaf,
  // 512 KiB; this failed once in a fresh-clone run.)
  EXPECT_LT(int64_t(s1.bytes_mapped - s0.bytes_mapped), int64_t(big)) << "a fresh mapping was made";
  mapalloc_free(again);
}

// Lines of /proc/self/maps: the process's mappings (VMAs).
static size_t count_mappings() {
  FILE* f = std::fopen("/proc/self/maps", "r");
  if (!f) ADD_FAILURE() << "cannot read /proc/self/maps";
  if (!f) return 0;
  size_t n = 0;
  for (int c; (c = std::fgetc(f)) != EOF;) n += c == '\n';
  std::fclose(f);
  return n;
}

// Arena chunks open side by side in reserved regions, their guard pages
// markers where the kernel has them (arena.cpp, new_chunk): a heap of many
// chunks is a few mappings. A chunk between guard pages of its own was one
// mapping, three with PROT_NONE guard pages, and the kernel's 65530
// mappings (vm.max_map_count) ran out at a 16 GiB heap, then at 60 GiB.
// 100000-byte blocks: nine to a 1 MiB chunk, each touching a page or two,
// so 80 chunks cost little memory.
TEST(MemoryArena, ChunksShareMappings) {
  if (!kernel_has_guard_markers()) GTEST_SKIP() << "no guard markers in this kernel: chunk guard pages are mprotect'ed";
  if (mapalloc_mmap_threshold() < 100000) GTEST_SKIP() << "100000-byte blocks are large blocks with this threshold";
  std::vector<void*> blocks;
  blocks.reserve(720);
  const mapalloc_stats stats_before = stats();
  size_t before = count_mappings();
  for (int i = 0; i < 720; i++) {
    void* p = mapalloc_malloc(100000);
    ASSERT_NE(p, nullptr);
    blocks.push_back(p);
  }
  size_t after = count_mappings();
  // Arena blocks, not large ones (a lowered mmap threshold would make them so).
  const mapalloc_stats stats_after = stats();
  ASSERT_EQ(stats_after.small_live_blocks - stats_before.small_live_blocks, 720u);
  ASSERT_EQ(stats_after.large_live_count, stats_before.large_live_count);
  std::set<uintptr_t> chunks;
  for (void* p : blocks) chunks.insert(reinterpret_cast<uintptr_t>(p) >> 20);
  ASSERT_GE(chunks.size(), 64u);
  // A few mappings a region (a floor page, its open chunks, the rest
  // reserved; their descriptors), regions doubling as the heap grows: 8
  // regions for 90 chunks from none. Not a mapping per chunk.
  EXPECT_LE(after - before, 32u)
      << before << " mappings before, " << after << " after, " << chunks.size() << " chunks";
  for (void* p : blocks) mapalloc_free(p);
}

// A program may free memory it mlock()ed part of. Purged free memory becomes
// guard markers, and the kernel stops such an install at the locked page,
// with markers already on the pages before it: the allocator must take them
// back, or its own writes into those pages (carving small blocks, a large
// block's canary) and the program's fault when the memory is used again.
TEST(MemoryPurge, FreedMemoryWithALockedPageIsUsableAfterAPurge) {
  mapalloc_collect();
  // Small blocks: their pages go back to the arena and are purged.
  void* keep = mapalloc_malloc(100);  // keeps the chunk mapped
  static char* p[2000];
  for (char*& q : p) {
    q = static_cast<char*>(mapalloc_malloc(256));
    memset(q, 1, 256);
  }
  void* keep_after = mapalloc_malloc(3000);
  char* locked = reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(p[1000]) & ~uintptr_t(4095));
  if (mlock(locked, 4096) != 0) GTEST_SKIP() << "mlock refused (RLIMIT_MEMLOCK)";
  for (char* q : p) mapalloc_free(q);
  mapalloc_collect();
  for (char*& q : p) {
    q = static_cast<char*>(mapalloc_malloc(256));
    memset(q, 2, 256);
  }
  for (char* q : p) EXPECT_EQ(q[255], 2);
  for (char* q : p) mapalloc_free(q);
  munlock(locked, 4096);
  mapalloc_free(keep);
  mapalloc_free(keep_after);

  // A large block: purged at once when three freed 48 MiB blocks pass the
  // 128 MiB of resident cache allowed after it, then reused.
  mapalloc_collect();
  const size_t size = 1 * MiB + 16;
  auto* big = static_cast<char*>(mapalloc_malloc(size));
  memset(big, 1, size);
  char* big_locked = reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(big + size / 2) & ~uintptr_t(4095));
  ASSERT_EQ(mlock(big_locked, 4096), 0);
  mapalloc_free(big);
  char* filler[3];
  for (char*& q : filler) {
    q = static_cast<char*>(mapalloc_malloc(48 * MiB));
    memset(q, 1, 48 * MiB);
  }
  for (char* q : filler) mapalloc_free(q);
  auto* again = static_cast<char*>(mapalloc_malloc(size));
  ASSERT_NE(again, nullptr);
  memset(again, 2, size);
  EXPECT_EQ(again[size - 1], 2);
  mapalloc_free(again);
  munlock(big_locked, 4096);
  mapalloc_collect();
}

// A live block's slack record (its requested size, for its canary) is in
// the block: a purge of the free slots around it must leave it alone. Every
// eighth slot stays live, full of 10-byte blocks, the others go free.
TEST(MemoryPurge, LiveBlocksKeepTheirSlackRecordsThroughAPurge) {
  mapalloc_collect();
  void* probe = mapalloc_malloc(10);
  bool records = mapalloc_usable_size(probe) == 10;  // secure builds only
  mapalloc_free(probe);
  if (!records) GTEST_SKIP() << "built without canaries (-Dsecure=false)";
  static char* blocks[64 * 800];
  for (char*& b : blocks) b = static_cast<char*>(mapalloc_malloc(10));
  auto slot_of = [](const char* b) { return (reinterpret_cast<uintptr_t>(b) >> 14) & 63; };
  size_t live = 0;
  for (char*& b : blocks) {
    if (slot_of(b) % 8 == 7) {
      live++;
    } else {
      mapalloc_free(b);
      b = nullptr;
    }
  }
  // About one block in ten: the last slot of every other 4-slot run, less
  // its guard page (768 of a run's 3840 blocks).
  ASSERT_GT(live, size_t(4000));
  mapalloc_collect();
  size_t wrong = 0;
  for (char* b : blocks)
    if (b && mapalloc_usable_size(b) != 10) wrong++;
  EXPECT_EQ(wrong, size_t(0)) << wrong << " of " << live << " live blocks lost their slack record";
  for (char* b : blocks)
    if (b) mapalloc_free(b);
}

// A program that frees a few hundred large blocks at once and then builds
// them again gets them from the cache, not from fresh mappings that fault on
// every page; and the blocks handed out again do not overlap.
TEST(MemoryLarge, HundredsOfFreedBlocksAreReused) {
  constexpr int kBlocks = 300;
  const size_t threshold = mapalloc_mmap_threshold();
  std::vector<size_t> sizes;
  for (int i = 0; i < kBlocks; i++) sizes.push_back(threshold + 4096 + size_t(i % 75) * 4096 + size_t(i) * 16);
  std::vector<char*> blocks(kBlocks);
  for (int i = 0; i < kBlocks; i++) {
    blocks[i] = static_cast<char*>(mapalloc_malloc(sizes[i]));
    ASSERT_NE(blocks[i], nullptr);
    std::memset(blocks[i], 0x11, sizes[i]);
  }
  std::mt19937 rng(7);
  std::shuffle(blocks.begin(), blocks.end(), rng);
  for (char* p : blocks) mapalloc_free(p);
  std::shuffle(sizes.begin(), sizes.end(), rng);
  const mapalloc_stats s0 = stats();
  for (int i = 0; i < kBlocks; i++) {
    blocks[i] = static_cast<char*>(mapalloc_malloc(sizes[i]));
    ASSERT_NE(blocks[i], nullptr);
    std::memset(blocks[i], i & 0xff, sizes[i]);
  }
  const mapalloc_stats s1 = stats();
  for (int i = 0; i < kBlocks; i++) {
    for (size_t off = 0; off < sizes[i]; off += 512) ASSERT_EQ(blocks[i][off], char(i & 0xff)) << "block " << i;
    ASSERT_EQ(blocks[i][sizes[i] - 1], char(i & 0xff)) << "block " << i;
    mapalloc_free(blocks[i]);
  }
  // Each size fits the mapping it had before; a preemption past the purge
  // delay may cost a few.
  EXPECT_GE(s1.large_cache_hits - s0.large_cache_hits, uint64_t(kBlocks - 10));
  EXPECT_LE(s1.mmap_calls - s0.mmap_calls, 10u);
}

TEST(MemoryStats, SmallClassCountersExactForSameThreadPattern) {
  const size_t t = mapalloc_mmap_threshold();
  for (size_t block : {size_t(16), size_t(48), size_t(128), size_t(1024), size_t(5120), size_t(40960), t}) {
    SCOPED_TRACE("block size " + std::to_string(block));
    const mapalloc_stats s0 = stats();
    int c = class_index(s0, block);
    ASSERT_GE(c, 0) << "no class of that size";
    const size_t n = block <= 1024 ? 5000 : block <= 8192 ? 500 : 40;
    std::vector<void*> blocks;
    for (size_t i = 0; i < n; i++) {
      // Half the most the class takes, half a little less.
      size_t size = i % 2 ? request_for_block(block) : block - 15;
      void* p = mapalloc_malloc(size);
      ASSERT_NE(p, nullptr);
      ASSERT_GE(mapalloc_usable_size(p), size);
      ASSERT_LE(mapalloc_usable_size(p), block) << "size " << size;
      std::memset(p, 0x11, size);
      blocks.push_back(p);
    }
    const mapalloc_stats s1 = stats();
    ClassDelta d = class_delta(s0, s1, c);
    EXPECT_EQ(d.requests, int64_t(n));
    EXPECT_EQ(d.live_blocks, int64_t(n));
    EXPECT_EQ(d.live_bytes, int64_t(n * block));
    EXPECT_EQ(s1.small_live_blocks - s0.small_live_blocks, n);
    EXPECT_EQ(s1.small_live_bytes - s0.small_live_bytes, n * block);
    EXPECT_EQ(s1.small_requests - s0.small_requests, n);
    EXPECT_EQ(s1.large_live_count, s0.large_live_count);
    EXPECT_GE(s1.classes[c].pages, 1u);
    check_class_sums(s1);
    // Free every other one.
    for (size_t i = 0; i < n; i += 2) mapalloc_free(blocks[i]);
    const mapalloc_stats s2 = stats();
    d = class_delta(s0, s2, c);
    EXPECT_EQ(d.requests, int64_t(n));
    EXPECT_EQ(d.live_blocks, int64_t(n / 2));
    EXPECT_EQ(d.live_bytes, int64_t(n / 2 * block));
    for (size_t i = 1; i < n; i += 2) mapalloc_free(blocks[i]);
    const mapalloc_stats s3 = stats();
    d = class_delta(s0, s3, c);
    EXPECT_EQ(d.requests, int64_t(n));
    EXPECT_EQ(d.live_blocks, 0);
    EXPECT_EQ(d.live_bytes, 0);
    EXPECT_EQ(s3.small_live_blocks, s0.small_live_blocks);
    // Empty pages go back to the arena: their counts must survive that.
    mapalloc_collect();
    const mapalloc_stats s4 = stats();
    d = class_delta(s0, s4, c);
    EXPECT_EQ(d.requests, int64_t(n));
    EXPECT_EQ(d.live_blocks, 0);
    if (s4.classes[c].live_blocks == 0) {
      EXPECT_EQ(s4.classes[c].pages, 0u) << "collect kept pages of a class with no live block";
    }
    check_class_sums(s4);
  }
}

// A page emptied by its owner's frees goes back to the arena at the free
// that empties it, not at the next collect: whatever the order of the frees
// (pages go from the full list to their class queue and out), only the
// current page of the class stays.
TEST(MemoryStats, PagesEmptiedByFreesGoBackAtOnce) {
  for (int order = 0; order < 3; order++) {
    SCOPED_TRACE("order " + std::to_string(order));
    mapalloc_collect();
    const mapalloc_stats s0 = stats();
    int c = class_index(s0, 1024);
    ASSERT_GE(c, 0);
    std::vector<void*> blocks(4000);
    for (void*& p : blocks) {
      p = mapalloc_malloc(1000);
      ASSERT_NE(p, nullptr);
    }
    ASSERT_GT(stats().classes[c].pages, 30u);
    if (order == 1) std::reverse(blocks.begin(), blocks.end());
    if (order == 2) std::shuffle(blocks.begin(), blocks.end(), std::mt19937_64(7));
    for (void* p : blocks) mapalloc_free(p);
    const mapalloc_stats s1 = stats();
    EXPECT_EQ(s1.classes[c].live_blocks, s0.classes[c].live_blocks);
    EXPECT_LE(s1.classes[c].pages, s0.classes[c].pages + 1) << "emptied pages stayed with the heap";
  }
}

// Statistics read while another thread's pages come and go are a moment's
// approximation, but never absurd: a page released between the reader's
// look at the heaps and at the arena once made live_blocks wrap to 2^64 - n.
TEST(MemoryStats, ReadsDuringPageChurnNeverWrap) {
  std::atomic<bool> stop{false};
  std::thread churner([&] {
    std::vector<void*> blocks(3 * 64);  // three or more pages of 1000-byte blocks
    while (!stop.load(std::memory_order_relaxed)) {
      for (void*& p : blocks) p = mapalloc_malloc(1000);
      for (void* p : blocks) mapalloc_free(p);
    }
  });
  int c = class_index(stats(), 1024);
  uint64_t worst = 0;
  for (int i = 0; i < 100000 && c >= 0; i++) {
    mapalloc_stats s;
    mapalloc_stats_get(&s);
    worst = std::max(worst, s.classes[c].live_blocks);
  }
  stop = true;
  churner.join();
  ASSERT_GE(c, 0);
  EXPECT_LT(worst, uint64_t(1) << 20) << "live_blocks wrapped below 0";
}

// Blocks allocated by one thread and freed by another: after the freeing
// thread has run and mapalloc_collect(), the counts are exact again.
TEST(MemoryStats, CrossThreadFreesExactAfterCollect) {
  constexpr size_t kBlock = 48, kCount = 3000;
  // freer_has_heap: the freeing thread allocated something itself first.
  for (bool freer_has_heap : {false, true}) {
    SCOPED_TRACE(freer_has_heap ? "freeing thread has a heap" : "freeing thread never allocated");
    mapalloc_collect();
    const mapalloc_stats s0 = stats();
    int c = class_index(s0, kBlock);
    ASSERT_GE(c, 0);
    std::vector<void*> blocks;
    for (size_t i = 0; i < kCount; i++) {
      void* p = mapalloc_malloc(request_for_block(kBlock));
      ASSERT_NE(p, nullptr);
      blocks.push_back(p);
    }
    std::thread([&] {
      if (freer_has_heap) mapalloc_free(mapalloc_malloc(4000));  // another class
      for (void* p : blocks) mapalloc_free(p);
    }).join();
    mapalloc_collect();
    const mapalloc_stats s1 = stats();
    ClassDelta d = class_delta(s0, s1, c);
    EXPECT_EQ(d.requests, int64_t(kCount));
    EXPECT_EQ(d.live_blocks, 0);
    EXPECT_EQ(d.live_bytes, 0);
    EXPECT_EQ(s1.small_live_blocks, s0.small_live_blocks);
    EXPECT_EQ(s1.small_requests - s0.small_requests, kCount + (freer_has_heap ? 1 : 0));
    check_class_sums(s1);
  }
  // The other way round: a thread allocates and exits (its heap is abandoned
  // with live blocks), this thread frees them.
  {
    SCOPED_TRACE("allocating thread exited before the frees");
    mapalloc_collect();
    const mapalloc_stats s0 = stats();
    int c = class_index(s0, kBlock);
    std::vector<void*> blocks(kCount);
    std::thread([&] {
      for (auto& p : blocks) p = mapalloc_malloc(request_for_block(kBlock));
    }).join();
    for (void* p : blocks) ASSERT_NE(p, nullptr);
    const mapalloc_stats s1 = stats();
    ClassDelta d = class_delta(s0, s1, c);
    EXPECT_EQ(d.requests, int64_t(kCount));
    EXPECT_EQ(d.live_blocks, int64_t(kCount));
    for (void* p : blocks) mapalloc_free(p);
    mapalloc_collect();
    const mapalloc_stats s2 = stats();
    d = class_delta(s0, s2, c);
    EXPECT_EQ(d.requests, int64_t(kCount));
    EXPECT_EQ(d.live_blocks, 0);
    EXPECT_EQ(d.live_bytes, 0);
    EXPECT_EQ(s2.small_live_blocks, s0.small_live_blocks);
    check_class_sums(s2);
  }
}

TEST(MemoryStats, LargeLiveCountersExact) {
  const size_t t = mapalloc_mmap_threshold();
  const mapalloc_stats s0 = stats();
  struct Big {
    void* p;
    size_t size;
  };
  std::vector<Big> big;
  for (size_t size : {t + 1, t + 4096, 1 * MiB, 3 * MiB + 5, 20 * MiB}) {
    void* p = mapalloc_malloc(size);
    ASSERT_NE(p, nullptr) << "size " << size;
    big.push_back({p, size});
  }
  void* z = mapalloc_calloc(1, 600 * KiB);
  ASSERT_NE(z, nullptr);
  big.push_back({z, 600 * KiB});
  void* a = mapalloc_aligned_alloc(64 * KiB, t + 64 * KiB);
  ASSERT_NE(a, nullptr);
  big.push_back({a, t + 64 * KiB});
  uint64_t sum = 0;
  for (const Big& b : big) sum += b.size;
  const mapalloc_stats s1 = stats();
  EXPECT_EQ(s1.large_live_count - s0.large_live_count, big.size());
  EXPECT_EQ(s1.large_live_bytes - s0.large_live_bytes, sum);
  EXPECT_EQ(s1.large_requests - s0.large_requests, big.size());
  EXPECT_EQ(s1.small_live_blocks, s0.small_live_blocks);
  // realloc to another large size: the live bytes follow the requested size.
  void* r = mapalloc_realloc(big[2].p, 2 * MiB + 7);
  ASSERT_NE(r, nullptr);
  sum = sum - big[2].size + (2 * MiB + 7);
  big[2] = {r, 2 * MiB + 7};
  const mapalloc_stats s2 = stats();
  EXPECT_EQ(s2.large_live_count - s0.large_live_count, big.size());
  EXPECT_EQ(s2.large_live_bytes - s0.large_live_bytes, sum);
  // Free one at a time.
  size_t left = big.size();
  for (const Big& b : big) {
    mapalloc_free(b.p);
    left--;
    sum -= b.size;
    const mapalloc_stats s = stats();
    EXPECT_EQ(s.large_live_count - s0.large_live_count, left) << "after freeing size " << b.size;
    EXPECT_EQ(s.large_live_bytes - s0.large_live_bytes, sum) << "after freeing size " << b.size;
  }
}

TEST(MemoryStats, ThreadsSeenCountsAllocatingThreads) {
  constexpr unsigned kThreads = 3;
  const mapalloc_stats s0 = stats();
  std::barrier sync(kThreads + 1);
  std::vector<std::thread> threads;
  for (unsigned i = 0; i < kThreads; i++) {
    threads.emplace_back([&] {
      void* p = mapalloc_malloc(100);
      sync.arrive_and_wait();  // all alive at once: each needs its own heap
      sync.arrive_and_wait();
      mapalloc_free(p);
    });
  }
  sync.arrive_and_wait();
  const mapalloc_stats s1 = stats();
  sync.arrive_and_wait();
  for (auto& th : threads) th.join();
  EXPECT_EQ(s1.threads_seen - s0.threads_seen, kThreads);
  EXPECT_GE(s1.heaps, s0.heaps);
  EXPECT_GE(s1.heaps, kThreads);  // three heaps live at once
  EXPECT_GE(s1.small_live_blocks - s0.small_live_blocks, kThreads);
  // Threads started after those exited reuse their heaps.
  const mapalloc_stats s2 = stats();
  for (unsigned i = 0; i < kThreads; i++) std::thread([] { mapalloc_free(mapalloc_malloc(100)); }).join();
  const mapalloc_stats s3 = stats();
  EXPECT_EQ(s3.threads_seen - s2.threads_seen, kThreads);
  EXPECT_EQ(s3.heaps, s2.heaps) << "a thread started after another exited got a new heap";
}

namespace {

std::string read_fd_from_start(int fd) {
  std::string out;
  if (lseek(fd, 0, SEEK_SET) != 0) return out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) out.append(buf, size_t(n));
  return out;
}

// The number after the label in the text report: "  <label>   <n>" or
// "  <label>   12.3 MiB (<n>)". -1 if the label is missing.
int64_t report_value(const std::string& text, const std::string& label) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("  " + label + " ", 0) != 0) continue;
    // The label is followed by padding and the value ("small live" must not
    // match "small live blocks").
    size_t value = line.find_first_not_of(' ', 2 + label.size());
    if (value == std::string::npos || !std::isdigit(static_cast<unsigned char>(line[value]))) continue;
    size_t open = line.find('(', value);
    if (open != std::string::npos) return std::strtoll(line.c_str() + open + 1, nullptr, 10);
    return std::strtoll(line.c_str() + value, nullptr, 10);
  }
  return -1;
}

}  // namespace

TEST(MemoryStats, TextReportHasEveryKeyAndMatchesStats) {
  // Some live blocks of a known class and a large block.
  std::vector<void*> blocks;
  for (int i = 0; i < 333; i++) blocks.push_back(mapalloc_malloc(request_for_block(48)));
  void* big = mapalloc_malloc(1 * MiB);
  ASSERT_NE(big, nullptr);
  int fd = memfd_create("mapalloc-stats", MFD_CLOEXEC);
  ASSERT_GE(fd, 0) << strerror(errno);
  mapalloc_stats_print(fd);
  const mapalloc_stats s = stats();  // nothing allocates in between
  const std::string text = read_fd_from_start(fd);
  close(fd);
  SCOPED_TRACE("report:\n" + text);
  EXPECT_EQ(text.rfind("mapalloc statistics\n", 0), 0u);
  ASSERT_EQ(text.back(), '\n');
  struct Row {
    const char* label;
    uint64_t value;
  };
  const Row rows[] = {
      {"mapped", s.bytes_mapped},
      {"committed", s.bytes_committed},
      {"small live", s.small_live_bytes},
      {"small live blocks", s.small_live_blocks},
      {"small requests", s.small_requests},
      {"arena pages", s.arena_pages},
      {"arena free resident", s.arena_free_bytes},
      {"large live", s.large_live_bytes},
      {"large live blocks", s.large_live_count},
      {"large requests", s.large_requests},
      {"large cache hits", s.large_cache_hits},
      {"large cached", s.large_cache_bytes},
      {"large cached blocks", s.large_cache_count},
      {"large coalesced", s.large_coalesced},
      {"purges", s.purges},
      {"purged", s.purged_bytes},
      {"mmap calls", s.mmap_calls},
      {"munmap calls", s.munmap_calls},
      {"mprotect calls", s.mprotect_calls},
      {"madvise calls", s.madvise_calls},
      {"mremap calls", s.mremap_calls},
      {"threads seen", s.threads_seen},
      {"heaps", s.heaps},
  };
  for (const Row& r : rows) EXPECT_EQ(report_value(text, r.label), int64_t(r.value)) << "row '" << r.label << "'";
  EXPECT_GT(report_value(text, "resident (process)"), 0);
  // The class table: one row per class in use, matching the counters.
  size_t header = text.find("block size");
  ASSERT_NE(header, std::string::npos);
  std::istringstream in(text.substr(text.find('\n', header) + 1));
  std::string line;
  std::set<unsigned> listed;
  while (std::getline(in, line)) {
    unsigned long long c, bs, req, live, bytes, pages;
    ASSERT_EQ(std::sscanf(line.c_str(), "%llu %llu %llu %llu %llu %llu", &c, &bs, &req, &live, &bytes, &pages), 6)
        << "class row: " << line;
    ASSERT_LT(c, s.class_count);
    const auto& cs = s.classes[c];
    EXPECT_EQ(bs, cs.block_size) << line;
    EXPECT_EQ(req, cs.requests) << line;
    EXPECT_EQ(live, cs.live_blocks) << line;
    EXPECT_EQ(bytes, cs.live_bytes) << line;
    EXPECT_EQ(pages, cs.pages) << line;
    listed.insert(unsigned(c));
  }
  for (unsigned c = 0; c < s.class_count; c++) {
    if (s.classes[c].requests || s.classes[c].pages) {
      EXPECT_TRUE(listed.count(c)) << "class " << c << " missing";
    }
  }
  int c48 = class_index(s, 48);
  ASSERT_GE(c48, 0);
  EXPECT_TRUE(listed.count(unsigned(c48)));
  EXPECT_GE(s.classes[c48].live_blocks, 333u);
  for (void* p : blocks) mapalloc_free(p);
  mapalloc_free(big);
}

namespace {

// Every key the JSON report has at the top level.
const char* const kJsonKeys[] = {
    "bytes_mapped",     "bytes_committed",   "bytes_resident",    "small_live_bytes", "small_live_blocks",
    "small_requests",   "arena_pages",       "arena_free_bytes",  "large_live_count", "large_live_bytes",
    "large_requests",   "large_cache_hits",  "large_cache_count", "large_cache_bytes", "large_coalesced", "purges",
    "purged_bytes",     "mmap_calls",        "munmap_calls",      "mprotect_calls",   "madvise_calls",
    "mremap_calls",     "threads_seen",      "heaps",             "classes",
};

uint64_t stats_field(const mapalloc_stats& s, const std::string& key) {
  static const std::map<std::string, uint64_t mapalloc_stats::*> fields = {
      {"bytes_mapped", &mapalloc_stats::bytes_mapped},
      {"bytes_committed", &mapalloc_stats::bytes_committed},
      {"small_live_bytes", &mapalloc_stats::small_live_bytes},
      {"small_live_blocks", &mapalloc_stats::small_live_blocks},
      {"small_requests", &mapalloc_stats::small_requests},
      {"arena_pages", &mapalloc_stats::arena_pages},
      {"arena_free_bytes", &mapalloc_stats::arena_free_bytes},
      {"large_live_count", &mapalloc_stats::large_live_count},
      {"large_live_bytes", &mapalloc_stats::large_live_bytes},
      {"large_requests", &mapalloc_stats::large_requests},
      {"large_cache_hits", &mapalloc_stats::large_cache_hits},
      {"large_cache_count", &mapalloc_stats::large_cache_count},
      {"large_cache_bytes", &mapalloc_stats::large_cache_bytes},
      {"large_coalesced", &mapalloc_stats::large_coalesced},
      {"purges", &mapalloc_stats::purges},
      {"purged_bytes", &mapalloc_stats::purged_bytes},
      {"mmap_calls", &mapalloc_stats::mmap_calls},
      {"munmap_calls", &mapalloc_stats::munmap_calls},
      {"mprotect_calls", &mapalloc_stats::mprotect_calls},
      {"madvise_calls", &mapalloc_stats::madvise_calls},
      {"mremap_calls", &mapalloc_stats::mremap_calls},
      {"threads_seen", &mapalloc_stats::threads_seen},
      {"heaps", &mapalloc_stats::heaps},
  };
  auto it = fields.find(key);
  return it == fields.end() ? UINT64_MAX : s.*(it->second);
}

// Runs a shell command, returns its stdout and exit status.
std::string run_command(const std::string& cmd, int* status) {
  FILE* f = popen(cmd.c_str(), "r");
  if (!f) {
    *status = -1;
    return "";
  }
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  *status = pclose(f);
  return out;
}

}  // namespace

TEST(MemoryStats, JsonReportParsesAndMatchesStats) {
  std::vector<void*> blocks;
  for (int i = 0; i < 77; i++) blocks.push_back(mapalloc_malloc(5000));
  void* big = mapalloc_malloc(2 * MiB);
  ASSERT_NE(big, nullptr);
  const char* tmpdir = std::getenv("TMPDIR");
  std::string dir = tmpdir && *tmpdir ? tmpdir : "/tmp";
  std::string path_s = dir + "/mapalloc-stats-XXXXXX", script_s = dir + "/mapalloc-json-check-XXXXXX";
  char* path = path_s.data();
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0) << strerror(errno);
  mapalloc_stats_print_json(fd);
  const mapalloc_stats s = stats();
  const std::string json = read_fd_from_start(fd);
  close(fd);
  SCOPED_TRACE("json: " + json);
  // Structure without a parser: one object, braces and brackets balanced.
  ASSERT_FALSE(json.empty());
  EXPECT_EQ(json.front(), '{');
  EXPECT_EQ(json.substr(json.size() - 2), "}\n");
  int depth = 0;
  bool in_string = false, balanced = true;
  for (size_t i = 0; i < json.size(); i++) {
    char ch = json[i];
    if (in_string) {
      if (ch == '\\') i++;
      else if (ch == '"') in_string = false;
      continue;
    }
    if (ch == '"') in_string = true;
    else if (ch == '{' || ch == '[') depth++;
    else if (ch == '}' || ch == ']') balanced = balanced && --depth >= 0;
    if (depth == 0 && i + 2 < json.size()) balanced = false;  // closed before the end
  }
  EXPECT_TRUE(balanced && depth == 0 && !in_string);
  for (const char* key : kJsonKeys) EXPECT_NE(json.find(std::string("\"") + key + "\":"), std::string::npos) << key;

  // A real parser: python3's json module; its view of every value.
  const std::string script =
      "import json, sys\n"
      "d = json.load(open(sys.argv[1]))\n"
      "assert isinstance(d, dict)\n"
      "for k, v in d.items():\n"
      "    if k == 'classes':\n"
      "        for c in v:\n"
      "            print('class', c['block_size'], c['requests'], c['live_blocks'], c['live_bytes'], c['pages'])\n"
      "    else:\n"
      "        assert isinstance(v, int), k\n"
      "        print(k, v)\n";
  char* script_path = script_s.data();
  int sfd = mkstemp(script_path);
  ASSERT_GE(sfd, 0);
  ASSERT_EQ(write(sfd, script.data(), script.size()), ssize_t(script.size()));
  close(sfd);
  int status = 0;
  std::string parsed = run_command(std::string("python3 ") + script_path + " " + path + " 2>&1", &status);
  unlink(script_path);
  unlink(path);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "python3 could not parse the JSON:\n" << parsed;
  std::istringstream in(parsed);
  std::string line;
  std::set<std::string> seen;
  size_t class_rows = 0;
  bool have_5k = false;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string key;
    fields >> key;
    if (key == "class") {
      unsigned long long bs, req, live, bytes, pages;
      ASSERT_TRUE(fields >> bs >> req >> live >> bytes >> pages) << line;
      int c = class_index(s, bs);
      ASSERT_GE(c, 0) << line;
      EXPECT_EQ(req, s.classes[c].requests) << line;
      EXPECT_EQ(live, s.classes[c].live_blocks) << line;
      EXPECT_EQ(bytes, s.classes[c].live_bytes) << line;
      EXPECT_EQ(pages, s.classes[c].pages) << line;
      if (bs == 5120 && live >= 77) have_5k = true;
      class_rows++;
      continue;
    }
    unsigned long long v;
    ASSERT_TRUE(fields >> v) << line;
    seen.insert(key);
    if (key == "bytes_resident") {
      EXPECT_GT(v, 0u);
    } else {
      EXPECT_EQ(v, stats_field(s, key)) << "key " << key;
    }
  }
  for (const char* key : kJsonKeys) {
    if (std::string(key) != "classes") {
      EXPECT_TRUE(seen.count(key)) << key;
    }
  }
  size_t in_use = 0;
  for (unsigned c = 0; c < s.class_count; c++) in_use += s.classes[c].requests || s.classes[c].pages;
  EXPECT_EQ(class_rows, in_use);
  EXPECT_TRUE(have_5k) << "the 5120-byte class with the 77 live blocks is missing";
  for (void* p : blocks) mapalloc_free(p);
  mapalloc_free(big);
}

// ============================================================== options

namespace {

// What the child reports on stdout (see options_child below).
struct ChildResult {
  int status = -1;
  std::string out, err;
  size_t threshold = 0;
  long long cache_hits = -1, first_guard_calls = -1;
};

std::string self_exe() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "";
  return std::string(buf, size_t(n));
}

// Runs this executable as the options child with MAPALLOC_OPTIONS set to
// `options` (unset when null); stdout and stderr are captured separately.
ChildResult run_options_child(const char* options) {
  ChildResult r;
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; e++) {
    if (std::strncmp(*e, "MAPALLOC_OPTIONS=", 17) != 0) env_strings.push_back(*e);
  }
  if (options) env_strings.push_back(std::string("MAPALLOC_OPTIONS=") + options);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string exe = self_exe();
  std::string flag = "--mapalloc-options-child";
  char* argv[] = {exe.data(), flag.data(), nullptr};
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0) return r;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err_pipe[1], 2);
  pid_t pid;
  int rc = posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&fa);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (rc != 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    return r;
  }
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&r.out, &r.err};
  int open_fds = 2;
  while (open_fds > 0) {
    if (poll(fds, 2, 20000) <= 0) break;  // a hung child: give up after 20 s
    for (int i = 0; i < 2; i++) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[4096];
      ssize_t n = read(fds[i].fd, buf, sizeof(buf));
      if (n > 0) {
        sinks[i]->append(buf, size_t(n));
      } else {
        close(fds[i].fd);
        fds[i].fd = -1;
        open_fds--;
      }
    }
  }
  for (auto& f : fds)
    if (f.fd >= 0) close(f.fd), kill(pid, SIGKILL);
  waitpid(pid, &r.status, 0);
  unsigned long long t = 0;
  if (std::sscanf(r.out.c_str(), "threshold=%llu cache_hits=%lld first_guard_calls=%lld", &t, &r.cache_hits,
                  &r.first_guard_calls) == 3) {
    r.threshold = size_t(t);
  }
  return r;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

std::string describe(const ChildResult& r) {
  return "child status " + std::to_string(r.status) + "\n--- stdout:\n" + r.out + "--- stderr:\n" + r.err + "---";
}

// The default threshold, as a child without MAPALLOC_OPTIONS sees it.
size_t default_threshold() {
  static size_t t = [] { return run_options_child(nullptr).threshold; }();
  return t;
}

// Runs the child with a MAPALLOC_OPTIONS holding bad items (and maybe good
// ones): stderr must have exactly one line per bad item, naming mapalloc and
// the item's key, and nothing else.
ChildResult expect_warnings(const char* options, const std::vector<std::string>& bad_keys) {
  SCOPED_TRACE(std::string("MAPALLOC_OPTIONS=") + options);
  ChildResult r = run_options_child(options);
  EXPECT_TRUE(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0) << describe(r);
  EXPECT_NE(r.threshold, 0u) << describe(r);
  std::vector<std::string> lines = lines_of(r.err);
  EXPECT_EQ(lines.size(), bad_keys.size()) << describe(r);
  for (const std::string& line : lines) EXPECT_NE(line.find("mapalloc"), std::string::npos) << line;
  for (const std::string& key : bad_keys) {
    size_t naming = 0;
    for (const std::string& line : lines) naming += line.find(key) != std::string::npos;
    EXPECT_EQ(naming, 1u) << "lines naming '" << key << "'\n" << describe(r);
  }
  return r;
}

}  // namespace

// The options child: initialises mapalloc (which reads MAPALLOC_OPTIONS) and
// reports the effective threshold, whether a freed large block is cached
// (large_cache), and how many guard-page calls (mprotect, or madvise for guard
// markers) a fresh large block costs (guard).
static int options_child() {
  mapalloc_free(mapalloc_malloc(64));
  const size_t t = mapalloc_mmap_threshold();
  const mapalloc_stats s0 = stats();
  void* p = mapalloc_malloc(2 * MiB);
  const mapalloc_stats s1 = stats();
  mapalloc_free(p);
  p = mapalloc_malloc(2 * MiB);
  mapalloc_free(p);
  const mapalloc_stats s2 = stats();
  std::printf("threshold=%zu cache_hits=%llu first_guard_calls=%llu\n", t,
              (unsigned long long)(s2.large_cache_hits - s0.large_cache_hits),
              (unsigned long long)((s1.mprotect_calls - s0.mprotect_calls) + (s1.madvise_calls - s0.madvise_calls) -
                                   (s1.purges - s0.purges)));
  std::fflush(stdout);
  return 0;
}

TEST(MemoryOptions, DefaultsAreSilent) {
  ChildResult r = run_options_child(nullptr);
  ASSERT_TRUE(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0) << describe(r);
  EXPECT_EQ(r.err, "");
  EXPECT_GE(r.threshold, 64 * KiB) << describe(r);
  EXPECT_LE(r.threshold, 1 * MiB) << describe(r);
  EXPECT_EQ(r.cache_hits, 1) << describe(r);
  EXPECT_GE(r.first_guard_calls, 1) << "guard pages are on by default: " << describe(r);
}

TEST(MemoryOptions, UnknownKeyWarnsOnceAndParsingGoesOn) {
  const size_t def = default_threshold();
  ASSERT_NE(def, 0u);
  ChildResult r = expect_warnings("frobnicate=1", {"frobnicate"});
  EXPECT_EQ(r.threshold, def);
  // The items after an unknown one still apply.
  r = expect_warnings("no_such_option=7,mmap_threshold=256k", {"no_such_option"});
  EXPECT_EQ(r.threshold, 256 * KiB);
  r = expect_warnings("mmap_threshold=512k,mmap_treshold=1m", {"mmap_treshold"});  // a typo
  EXPECT_EQ(r.threshold, 512 * KiB);
  // An item without '=' is named too.
  r = expect_warnings("verbose", {"verbose"});
  EXPECT_EQ(r.threshold, def);
}

TEST(MemoryOptions, BadValueWarnsOnceAndKeepsDefault) {
  const size_t def = default_threshold();
  ASSERT_NE(def, 0u);
  const char* bad_thresholds[] = {
      "mmap_threshold=12x",      "mmap_threshold=",        "mmap_threshold=-1",        "mmap_threshold=65535",
      "mmap_threshold=1048577",  "mmap_threshold=2m",      "mmap_threshold=1k",        "mmap_threshold=0",
      "mmap_threshold=128kk",    "mmap_threshold=99999999999999999999999",             "mmap_threshold=0x20000",
  };
  for (const char* opt : bad_thresholds) {
    ChildResult r = expect_warnings(opt, {"mmap_threshold"});
    EXPECT_EQ(r.threshold, def) << opt;
  }
  for (const char* opt : {"guard=2", "guard=yes", "stats=true", "madv_free=-1", "verbose=10", "purge_delay_ms=abc",
                          "large_cache=12q", "purge_delay_ms="}) {
    std::string key(opt, std::strchr(opt, '=') - opt);
    ChildResult r = expect_warnings(opt, {key});
    EXPECT_EQ(r.threshold, def) << opt;
  }
  // guard=2 keeps the guard on: a fresh large block still costs a guard call.
  ChildResult r = expect_warnings("guard=2", {"guard"});
  EXPECT_GE(r.first_guard_calls, 1) << describe(r);
  // Several bad items: one line each, good items still applied.
  r = expect_warnings("mmap_threshold=zz,large_cache=0,guard=3,bogus=1,stats=2",
                      {"mmap_threshold", "guard=3", "bogus", "stats"});
  EXPECT_EQ(r.threshold, def);
  EXPECT_EQ(r.cache_hits, 0) << "large_cache=0 was not applied: " << describe(r);
}

TEST(MemoryOptions, ValidSetsAreSilentAndApplied) {
  struct Case {
    const char* options;
    size_t threshold;
    long long cache_hits;     // -1: don't check
    long long guard_calls_max;  // -1: don't check
  };
  const Case cases[] = {
      {"mmap_threshold=256k,purge_delay_ms=20,large_cache=0,guard=1,madv_free=0,stats=0,verbose=0", 256 * KiB, 0, -1},
      {"mmap_threshold=64k", 64 * KiB, 1, -1},
      {"mmap_threshold=1m,guard=0", 1 * MiB, 1, 0},
      {"mmap_threshold=1MB", 1 * MiB, 1, -1},
      {"mmap_threshold=200000,madv_free=1", 200000, 1, -1},
      {"mmap_threshold=65536,,large_cache=64m,", 64 * KiB, 1, -1},
      {"purge_delay_ms=0,large_cache=1G", default_threshold(), 1, -1},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string("MAPALLOC_OPTIONS=") + c.options);
    ChildResult r = run_options_child(c.options);
    ASSERT_TRUE(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0) << describe(r);
    EXPECT_EQ(r.err, "") << describe(r);
    EXPECT_EQ(r.threshold, threshold_in_effect(c.threshold)) << describe(r);
    if (c.cache_hits >= 0) {
      EXPECT_EQ(r.cache_hits, c.cache_hits) << describe(r);
    }
    if (c.guard_calls_max >= 0) {
      EXPECT_LE(r.first_guard_calls, c.guard_calls_max) << describe(r);
    }
  }
  // stats=1: the report at exit on stderr, and no warning.
  ChildResult r = run_options_child("stats=1");
  ASSERT_TRUE(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0) << describe(r);
  EXPECT_NE(r.err.find("mapalloc statistics"), std::string::npos) << describe(r);
  EXPECT_EQ(r.err.find("warning"), std::string::npos) << describe(r);
}

// verbose=1 prints the values in effect, once, on stderr. A purge delay too
// big for the purges' arithmetic (10 x delay + 100) is capped at 2^40 ms
// (35 years) rather than wrapping around to a few milliseconds.
TEST(MemoryOptions, VerboseLineShowsTheValuesInEffect) {
  ChildResult r = run_options_child("verbose=1,large_cache=0,purge_delay_ms=1844674407370955162,random=1");
  ASSERT_TRUE(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0) << describe(r);
  EXPECT_NE(r.err.find("mapalloc: options: mmap_threshold="), std::string::npos) << describe(r);
  EXPECT_NE(r.err.find(",purge_delay_ms=1099511627776,large_cache=0,"), std::string::npos) << describe(r);
  EXPECT_NE(r.err.find(",random=1,"), std::string::npos) << describe(r);
  EXPECT_EQ(r.err.find("warning"), std::string::npos) << describe(r);
}

TEST(MemoryOptions, ThresholdSetterRoundTripsAndRejectsOutOfRange) {
  ThresholdGuard restore;
  // src/options.cpp accepts [64 KiB, 1 MiB] (kMinThreshold .. kMaxThreshold).
  for (size_t ok : {size_t(64 * KiB), size_t(1 * MiB), size_t(200000), size_t(128 * KiB), size_t(64 * KiB + 1),
                    size_t(1 * MiB - 1)}) {
    ASSERT_EQ(mapalloc_set_mmap_threshold(ok), 1) << ok;
    const size_t in_effect = threshold_in_effect(ok);
    EXPECT_EQ(mapalloc_mmap_threshold(), in_effect);
    // The threshold decides: that many bytes are small, one more is large.
    const mapalloc_stats s0 = stats();
    void* a = mapalloc_malloc(in_effect);
    void* b = mapalloc_malloc(in_effect + 1);
    ASSERT_TRUE(a && b);
    const mapalloc_stats s1 = stats();
    EXPECT_EQ(s1.large_live_count - s0.large_live_count, 1u) << "threshold " << ok;
    EXPECT_EQ(s1.small_live_blocks - s0.small_live_blocks, 1u) << "threshold " << ok;
    mapalloc_free(a);
    mapalloc_free(b);
  }
  ASSERT_EQ(mapalloc_set_mmap_threshold(300000), 1);
  for (size_t bad : {size_t(0), size_t(1), size_t(4096), size_t(64 * KiB - 1), size_t(1 * MiB + 1), size_t(2 * MiB),
                     size_t(1) << 40, SIZE_MAX}) {
    EXPECT_EQ(mapalloc_set_mmap_threshold(bad), 0) << bad;
    EXPECT_EQ(mapalloc_mmap_threshold(), 300000u) << "rejected value " << bad << " changed the threshold";
  }
}

// ============================================================== growable realloc

namespace {

// Reference bytes: thread t's block must equal ref + shift(t) byte for byte.
// Not periodic, and different per thread, so misplaced or swapped pages show.
constexpr size_t kRefSize = 64 * MiB + 64 * KiB;
const unsigned char* reference() {
  static const unsigned char* ref = [] {
    auto* r = static_cast<unsigned char*>(std::malloc(kRefSize));  // glibc: not under test
    fill_pattern(r, kRefSize, test_seed() ^ 0x7e57);
    return r;
  }();
  return ref;
}
size_t ref_shift(unsigned id) { return id * 4099 + 1; }

size_t first_difference(const unsigned char* a, const unsigned char* b, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (a[i] != b[i]) return i;
  return SIZE_MAX;
}

// Grows a block from 100 B to `top`: +256 B per step up to `fine_until`, then
// doubling. After every step the old bytes must be intact (and the new ones
// are written). Then shrinks it a little and a lot, and frees it. Returns ""
// or the first failure; `steps` gets the number of reallocs.
std::string grow_and_shrink(unsigned id, size_t fine_until, size_t top, bool end_with_realloc_zero, size_t* steps) {
  const unsigned char* ref = reference() + ref_shift(id);
  const size_t t = mapalloc_mmap_threshold();
  size_t size = 100;
  auto* p = static_cast<unsigned char*>(mapalloc_malloc(size));
  if (!p) return "malloc(100) failed";
  std::memcpy(p, ref, size);
  *steps = 0;
  auto fail = [&](const std::string& what) {
    return "thread " + std::to_string(id) + ": " + what + " (ptr " + std::to_string(uintptr_t(p)) + ")";
  };
  auto resize = [&](size_t next) -> std::string {
    auto* q = static_cast<unsigned char*>(mapalloc_realloc(p, next));
    ++*steps;
    if (!q) return fail("realloc " + std::to_string(size) + " -> " + std::to_string(next) + " failed");
    p = q;
    size_t keep = std::min(size, next);
    if (std::memcmp(p, ref, keep) != 0) {
      size_t at = first_difference(p, ref, keep);
      return fail("realloc " + std::to_string(size) + " -> " + std::to_string(next) + " changed byte " +
                  std::to_string(at));
    }
    if (mapalloc_usable_size(p) < next) return fail("usable size below " + std::to_string(next));
    if (next > size) std::memcpy(p + size, ref + size, next - size);  // every new byte
    size = next;
    return "";
  };
  while (size < top) {
    size_t next = size < fine_until ? size + 256 : std::min(size * 2, top);
    if (std::string e = resize(next); !e.empty()) return e;
  }
  if (std::memcmp(p, ref, size) != 0) return fail("contents wrong at the top");
  if (size <= t) return fail("never went past the threshold");
  // Shrink a little (stays in place), grow a little again, shrink a lot
  // (still large), then below the threshold, then past it again.
  for (size_t next : {top - 1000, top - 1, top / 16 + 5, t + 3, size_t(1000), t + 5 * 4096 + 7}) {
    if (std::string e = resize(next); !e.empty()) return e;
  }
  if (end_with_realloc_zero) {
    void* q = mapalloc_realloc(p, 0);
    if (q) {
      mapalloc_free(q);
      return fail("realloc(p, 0) returned a block");
    }
  } else {
    mapalloc_free(p);
  }
  return "";
}

}  // namespace

TEST(MemoryRealloc, GrowFrom100BytesTo64MiBKeepsEveryByte) {
  reference();
  const mapalloc_stats s0 = stats();
  size_t steps = 0;
  auto t0 = std::chrono::steady_clock::now();
  std::string error = grow_and_shrink(0, 2 * MiB, 64 * MiB, false, &steps);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(error, "");
  const mapalloc_stats s1 = stats();
  std::printf("[ realloc  ] %zu reallocs in %.2f s: mremap %llu, mprotect %llu, mmap %llu\n", steps, secs,
              (unsigned long long)(s1.mremap_calls - s0.mremap_calls),
              (unsigned long long)(s1.mprotect_calls - s0.mprotect_calls),
              (unsigned long long)(s1.mmap_calls - s0.mmap_calls));
  EXPECT_GT(s1.mremap_calls, s0.mremap_calls) << "growth never moved pages with mremap";
  // The reservation doubles: a logarithmic number of moves, not one per step.
  EXPECT_LE(s1.mremap_calls - s0.mremap_calls, 40u);
  EXPECT_LE(s1.mmap_calls - s0.mmap_calls, 60u);
  EXPECT_EQ(s1.large_live_count, s0.large_live_count);
  EXPECT_EQ(s1.large_live_bytes, s0.large_live_bytes);
}

// The live byte count follows a growable block's requested size exactly.
TEST(MemoryRealloc, GrowableBlockStatsFollowItsSize) {
  const size_t t = mapalloc_mmap_threshold();
  const mapalloc_stats s0 = stats();
  void* p = mapalloc_malloc(1000);
  ASSERT_NE(p, nullptr);
  for (size_t size : {t + 1, t + 4096 + 3, 3 * t, 5 * MiB + 1, 5 * MiB - 4000, 2 * t, t + 1}) {
    p = mapalloc_realloc(p, size);
    ASSERT_NE(p, nullptr) << size;
    EXPECT_GE(mapalloc_usable_size(p), size);
    EXPECT_EQ(mapalloc_owns(p), 1);
    const mapalloc_stats s = stats();
    EXPECT_EQ(s.large_live_count - s0.large_live_count, 1u) << size;
    EXPECT_EQ(s.large_live_bytes - s0.large_live_bytes, size) << size;
  }
  void* q = mapalloc_realloc(p, 0);
  EXPECT_EQ(q, nullptr);
  const mapalloc_stats s = stats();
  EXPECT_EQ(s.large_live_count, s0.large_live_count);
  EXPECT_EQ(s.large_live_bytes, s0.large_live_bytes);
}

// A freed growable block's mapping is kept and serves the next block that
// realloc grows past the threshold: no mapping, no move, the same address,
// and its pages still resident (as many page faults as pages the growth
// had not touched before). The cache gives it back on collect.
TEST(MemoryRealloc, AFreedGrowableMappingServesTheNextGrowth) {
  const size_t t = mapalloc_mmap_threshold();
  const unsigned char* ref = reference();
  auto grow = [&](size_t top) {
    auto* p = static_cast<unsigned char*>(mapalloc_malloc(100));
    for (size_t size = 2 * t; p; size *= 2) {
      p = static_cast<unsigned char*>(mapalloc_realloc(p, std::min(size, top)));
      if (!p || size >= top) break;
    }
    if (p) std::memcpy(p, ref, top);  // every page resident
    return p;
  };
  unsigned char* first = grow(4 * MiB);
  ASSERT_NE(first, nullptr);
  mapalloc_free(first);
  const mapalloc_stats s0 = stats();
  EXPECT_GE(s0.large_cache_count, 1u);
  struct rusage r0, r1;
  getrusage(RUSAGE_SELF, &r0);
  unsigned char* second = grow(4 * MiB);
  getrusage(RUSAGE_SELF, &r1);
  ASSERT_NE(second, nullptr);
  const mapalloc_stats s1 = stats();
  EXPECT_EQ(second, first) << "the cached mapping was not reused";
  EXPECT_EQ(std::memcmp(second, ref, 4 * MiB), 0);
  EXPECT_EQ(s1.mmap_calls, s0.mmap_calls);
  EXPECT_EQ(s1.mremap_calls, s0.mremap_calls);
  EXPECT_GE(s1.large_cache_hits, s0.large_cache_hits + 1);
  // Reused at 2 * t, the pages past that were given back: they fault again,
  // the first 2 * t do not (fresh, all 1024 pages would).
  EXPECT_LT(r1.ru_minflt - r0.ru_minflt, long(4 * MiB / 4096) - 8) << "every page faulted again";
  mapalloc_free(second);
  mapalloc_collect();
  const mapalloc_stats s2 = stats();
  EXPECT_EQ(s2.large_cache_count, 0u);
  EXPECT_LT(s2.bytes_mapped + 4 * MiB, s1.bytes_mapped) << "collect kept the growable mapping";
}

TEST(MemoryRealloc, FourThreadsGrowAtOnce) {
  constexpr unsigned kThreads = 4;
  reference();
  const mapalloc_stats s0 = stats();
  std::vector<std::string> errors(kThreads);
  std::vector<size_t> steps(kThreads);
  std::vector<std::thread> threads;
  auto t0 = std::chrono::steady_clock::now();
  for (unsigned i = 0; i < kThreads; i++) {
    threads.emplace_back([&, i] {
      // Also small-block traffic in between, so arena pages and large
      // mappings interleave in the address space and the page map.
      std::vector<void*> small;
      for (int k = 0; k < 200; k++) small.push_back(mapalloc_malloc(size_t(32 + 97 * k)));
      errors[i] = grow_and_shrink(i + 1, 1 * MiB, 64 * MiB, i % 2 == 0, &steps[i]);
      for (void* p : small) mapalloc_free(p);
    });
  }
  for (auto& th : threads) th.join();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const mapalloc_stats s1 = stats();
  std::printf("[ realloc  ] %u threads, %zu reallocs each, %.2f s: mremap %llu\n", kThreads, steps[0], secs,
              (unsigned long long)(s1.mremap_calls - s0.mremap_calls));
  for (unsigned i = 0; i < kThreads; i++) EXPECT_EQ(errors[i], "") << "thread " << i;
  EXPECT_GE(s1.mremap_calls - s0.mremap_calls, kThreads);
  EXPECT_EQ(s1.large_live_count, s0.large_live_count);
  EXPECT_EQ(s1.large_live_bytes, s0.large_live_bytes);
}

// ------------------------------------------------ overflow past a grown block

namespace {

// A block grown by realloc from a small one to `size`.
unsigned char* grown_block(size_t size) {
  void* p = mapalloc_malloc(100);
  for (size_t s = 1000; s < size; s *= 4) p = mapalloc_realloc(p, s);
  return static_cast<unsigned char*>(mapalloc_realloc(p, size));
}

}  // namespace

// Past the 16-byte-rounded end, inside the last page: the canary, checked on
// free (abort naming mapalloc).
TEST(MemoryReallocDeathTest, WriteOnePastGrownBlockIsCaughtOnFree) {
  const size_t t = mapalloc_mmap_threshold();
  // Grown in place (mprotect), and moved to a bigger reservation (mremap).
  for (size_t size : {t + 100, t + 4096 * 3 + 1, 3 * MiB + 40, 9 * MiB + 8}) {
    EXPECT_DEATH(
        {
          unsigned char* p = grown_block(size);
          size_t usable = mapalloc_usable_size(p);
          if (usable % 4096 == 0) std::abort();  // not this test's case: fails the regex
          poke(p + usable - 1);
          poke(p + usable);
          mapalloc_free(p);
        },
        "mapalloc")
        << "size " << size;
  }
}

// The same, caught by the next realloc of the block.
TEST(MemoryReallocDeathTest, WriteOnePastGrownBlockIsCaughtOnRealloc) {
  const size_t t = mapalloc_mmap_threshold();
  EXPECT_DEATH(
      {
        unsigned char* p = grown_block(t + 1000);
        poke(p + mapalloc_usable_size(p));
        p = static_cast<unsigned char*>(mapalloc_realloc(p, 4 * MiB));
        mapalloc_free(p);
      },
      "mapalloc");
}

// After shrinking by a little, the bytes the block gave up are canary too.
TEST(MemoryReallocDeathTest, WriteOnePastShrunkGrowableBlockIsCaught) {
  const size_t t = mapalloc_mmap_threshold();
  EXPECT_DEATH(
      {
        unsigned char* p = grown_block(t + 50000);
        p = static_cast<unsigned char*>(mapalloc_realloc(p, t + 49000));
        poke(p + mapalloc_usable_size(p));
        mapalloc_free(p);
      },
      "mapalloc");
}

// A grown block whose end is a page boundary: the next byte is either the
// PROT_NONE headroom of its reservation (the write faults) or, when growth
// opened more pages ahead, its canary (free aborts).
TEST(MemoryReallocDeathTest, WriteOnePastPageAlignedGrownBlockIsCaught) {
  auto faulted_or_aborted = [](int status) {
    return WIFSIGNALED(status) && (WTERMSIG(status) == SIGSEGV || WTERMSIG(status) == SIGABRT);
  };
  for (size_t size : {size_t(1 * MiB), size_t(1 * MiB + 4096), size_t(6 * MiB)}) {
    EXPECT_EXIT(
        {
          unsigned char* p = grown_block(size);
          size_t usable = mapalloc_usable_size(p);
          poke(p + usable - 1);
          poke(p + usable);
          mapalloc_free(p);
          std::_Exit(0);  // not caught: the wrong exit
        },
        faulted_or_aborted, "")
        << "size " << size;
  }
}

// A cached growable mapping reused for a smaller block: the read-write part
// ends with that block's pages again, so the next byte faults at once.
TEST(MemoryReallocDeathTest, WritePastABlockInABiggerCachedGrowableMappingFaults) {
  const size_t t = mapalloc_mmap_threshold();
  EXPECT_EXIT(
      {
        unsigned char* big = grown_block(8 * MiB);
        std::memset(big, 1, 8 * MiB);
        mapalloc_free(big);
        auto* p = static_cast<unsigned char*>(mapalloc_realloc(mapalloc_malloc(100), 2 * t + 4096));
        if (p != big) std::_Exit(3);  // not reused: not this test's case
        size_t usable = mapalloc_usable_size(p);
        poke(p + usable - 1);
        poke(p + (usable + 4095) / 4096 * 4096);  // first byte past its pages
        std::_Exit(0);
      },
      ::testing::KilledBySignal(SIGSEGV), "");
}

// A second free of a growable block whose mapping waits in the cache.
TEST(MemoryReallocDeathTest, DoubleFreeOfACachedGrowableBlockIsReported) {
  EXPECT_DEATH(
      {
        unsigned char* p = grown_block(1 * MiB);
        mapalloc_free(p);
        mapalloc_free(p);
      },
      "mapalloc: double free of large block 0x");
}

// A write after free into the first 16 bytes of a cached growable block is
// reported when its mapping is taken again.
TEST(MemoryReallocDeathTest, WriteAfterFreeIntoACachedGrowableBlockIsReported) {
  const size_t t = mapalloc_mmap_threshold();
  EXPECT_DEATH(
      {
        unsigned char* p = grown_block(1 * MiB);
        mapalloc_free(p);
        poke(p + 3);
        mapalloc_realloc(mapalloc_malloc(100), 2 * t);
      },
      "mapalloc: write after free into large block 0x");
}

// ------------------------------------- moves on kernels before Linux 6.17

// memory_test is linked with --wrap=mremap --wrap=uname (tests/meson.build):
// once a case sets emulate_old_mremap, uname reports 6.1 and mremap behaves
// as before 6.17: a source range spanning several mappings is refused with
// EFAULT after the destination was unmapped (tests/old_kernel refuses every
// mremap before unmapping anything, so it cannot show this).
static bool emulate_old_mremap = false;
static unsigned old_mremap_refusals = 0;

extern "C" int __real_uname(struct utsname* u);
extern "C" int __wrap_uname(struct utsname* u) {
  int r = __real_uname(u);
  if (r == 0 && emulate_old_mremap) std::strcpy(u->release, "6.1.0");
  return r;
}

// Whether [p, p + n) lies in one mapping of /proc/self/maps.
static bool one_mapping(uintptr_t p, size_t n) {
  FILE* f = std::fopen("/proc/self/maps", "r");
  if (!f) return true;
  char line[512];
  bool one = false;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    if (std::sscanf(line, "%lx-%lx", &lo, &hi) == 2 && lo <= p && p < hi) {
      one = p + n <= hi;
      break;
    }
  }
  std::fclose(f);
  return one;
}

extern "C" void* __real_mremap(void* old, size_t old_size, size_t new_size, int flags, ...);
extern "C" void* __wrap_mremap(void* old, size_t old_size, size_t new_size, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  void* dest = (flags & MREMAP_FIXED) ? va_arg(ap, void*) : nullptr;
  va_end(ap);
  if (emulate_old_mremap && !one_mapping(reinterpret_cast<uintptr_t>(old), old_size)) {
    old_mremap_refusals++;
    if (dest) munmap(dest, new_size);  // as mremap_to() did before 6.17
    errno = EFAULT;
    return MAP_FAILED;
  }
  return __real_mremap(old, old_size, new_size, flags, dest);
}

// A block moved by mremap has the headroom opened for it at the destination
// as a mapping of its own (the moved pages do not merge with it). Growing it
// past its new reservation at once (more than twice its size) must not try
// another move of both on a kernel that cannot move them: realloc failed
// with ENOMEM there.
TEST(MemoryRealloc, GrowthPastTheReservationRightAfterAMoveWorksOnOldKernels) {
  // The kernel's version is read once, at the first move: alone in its
  // process (as meson test runs it), or nothing moved yet.
  if (stats().mremap_calls != 0) GTEST_SKIP() << "run it alone: blocks moved already in this process";
  emulate_old_mremap = true;
  const size_t t = mapalloc_mmap_threshold();
  const unsigned char* ref = reference();
  auto* p = static_cast<unsigned char*>(mapalloc_malloc(100));
  std::memcpy(p, ref, 100);
  size_t have = 100;
  for (size_t size = 2 * t; size <= 64 * MiB; size *= 3) {
    auto* q = static_cast<unsigned char*>(mapalloc_realloc(p, size));
    ASSERT_NE(q, nullptr) << "realloc to " << size << ": " << std::strerror(errno) << ", mremap refused "
                          << old_mremap_refusals << " times";
    ASSERT_EQ(std::memcmp(q, ref, have), 0) << size;
    std::memcpy(q, ref, size);
    p = q;
    have = size;
  }
  EXPECT_EQ(old_mremap_refusals, 0u) << "moves of ranges spanning mappings were tried";
  mapalloc_free(p);
  // A freed moved mapping, reused from the growable cache for a block that
  // takes more than the moved pages, then grown at once.
  p = static_cast<unsigned char*>(mapalloc_realloc(mapalloc_malloc(100), 2 * t));
  p = static_cast<unsigned char*>(mapalloc_realloc(p, 6 * t));  // moved
  ASSERT_NE(p, nullptr);
  mapalloc_free(p);
  auto* q = static_cast<unsigned char*>(mapalloc_realloc(mapalloc_malloc(100), 5 * t));
  ASSERT_EQ(q, p) << "the cached mapping was not reused";
  std::memcpy(q, ref, 5 * t);
  q = static_cast<unsigned char*>(mapalloc_realloc(q, 16 * t));
  ASSERT_NE(q, nullptr) << std::strerror(errno);
  EXPECT_EQ(std::memcmp(q, ref, 5 * t), 0);
  mapalloc_free(q);
  EXPECT_EQ(old_mremap_refusals, 0u);
}

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "--mapalloc-options-child") == 0) return options_child();
  // No core files from the processes the death tests kill on purpose.
  struct rlimit no_core = {0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  ::testing::InitGoogleTest(&argc, argv);
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  return RUN_ALL_TESTS();
}
