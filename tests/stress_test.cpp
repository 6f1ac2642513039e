// Multi-threaded stress with content verification. Every block carries a
// pattern derived from (pointer, size, seed), checked before it is freed, so
// a block handed out twice, overlapping blocks, or a free list that corrupts
// user data show up as a pattern mismatch with the block, size and seed.
// MAPALLOC_TEST_SEED=<n> replays a run.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "mapalloc.h"
#include "test_util.h"

using namespace mapalloc_test;

namespace {

constexpr size_t KiB = 1024;
constexpr size_t MiB = 1024 * KiB;

// Stop adding work after this long, so a slow machine still ends each test
// well inside its meson timeout (the work done so far is still verified).
constexpr auto kTimeBudget = std::chrono::seconds(20);

mapalloc_stats stats() {
  mapalloc_stats s;
  mapalloc_stats_get(&s);
  return s;
}

// The first failure any thread saw, with everything needed to replay it.
class Failures {
 public:
  void report(const std::string& what) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (first_.empty()) first_ = what;
    count_++;
    failed_.store(true, std::memory_order_relaxed);
  }
  bool any() const { return failed_.load(std::memory_order_relaxed); }
  std::string summary() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return first_.empty() ? "" : first_ + " (" + std::to_string(count_) + " failures in all)";
  }

 private:
  mutable std::mutex mutex_;
  std::string first_;
  size_t count_ = 0;
  std::atomic<bool> failed_{false};
};

class Deadline {
 public:
  Deadline() : end_(std::chrono::steady_clock::now() + kTimeBudget) {}
  bool passed() const { return std::chrono::steady_clock::now() > end_; }

 private:
  std::chrono::steady_clock::time_point end_;
};

// Sizes skewed small, as in real programs, with a few large ones.
size_t random_size(Rng& rng, size_t threshold) {
  uint64_t r = rng.next() % 1000;
  if (r < 700) return rng.range(0, 128);
  if (r < 900) return rng.range(129, 1024);
  if (r < 975) return rng.range(1025, 16 * KiB);
  if (r < 996) return rng.range(16 * KiB + 1, threshold);
  return rng.range(threshold + 1, 2 * MiB);
}

// Blocks up to 64 KiB are patterned whole. Bigger ones get their first and
// last 4 KiB and 64 bytes of every 64 KiB: page faults are the dominant cost
// on these machines and a large block's neighbours can only be reached
// through its ends.
constexpr size_t kFullPatternMax = 64 * KiB;

void fill_block(void* p, size_t size, uint64_t key) {
  auto* b = static_cast<char*>(p);
  if (size <= kFullPatternMax) return fill_pattern(p, size, key);
  fill_pattern(b, 4 * KiB, key);
  fill_pattern(b + size - 4 * KiB, 4 * KiB, key + 1);
  for (size_t off = 64 * KiB; off + 64 <= size - 4 * KiB; off += 64 * KiB) fill_pattern(b + off, 64, key + off);
}

// Offset of the first wrong byte, or SIZE_MAX.
size_t check_block(const void* p, size_t size, uint64_t key) {
  const auto* b = static_cast<const char*>(p);
  if (size <= kFullPatternMax) return check_pattern(p, size, key);
  size_t bad = check_pattern(b, 4 * KiB, key);
  if (bad != SIZE_MAX) return bad;
  bad = check_pattern(b + size - 4 * KiB, 4 * KiB, key + 1);
  if (bad != SIZE_MAX) return size - 4 * KiB + bad;
  for (size_t off = 64 * KiB; off + 64 <= size - 4 * KiB; off += 64 * KiB) {
    bad = check_pattern(b + off, 64, key + off);
    if (bad != SIZE_MAX) return off + bad;
  }
  return SIZE_MAX;
}

struct Block {
  void* p = nullptr;
  size_t size = 0;
  uint64_t key = 0;
};

std::string describe(const char* what, const Block& b, size_t bad, uint64_t seed, unsigned thread) {
  std::ostringstream s;
  s << what << ": block " << b.p << " size " << b.size << " corrupted at offset " << bad << " (seed " << seed
    << ", thread " << thread << ")";
  return s.str();
}

// Checks a block and frees it; reports a mismatch instead of freeing (a
// corrupted block may be one that is still live elsewhere).
void verify_and_free(const Block& b, uint64_t seed, unsigned thread, Failures& failures, const char* what) {
  size_t bad = check_block(b.p, b.size, b.key);
  if (bad != SIZE_MAX) return failures.report(describe(what, b, bad, seed, thread));
  mapalloc_free(b.p);
}

Block new_block(Rng& rng, size_t size, uint64_t seed, Failures& failures, unsigned thread) {
  Block b;
  b.size = size;
  unsigned how = unsigned(rng.next() % 16);
  if (how == 0) {
    b.p = mapalloc_calloc(1, size);
    if (b.p && size <= kFullPatternMax) {
      size_t bad = first_nonzero(b.p, size);
      if (bad != SIZE_MAX) {
        std::ostringstream s;
        s << "calloc: block " << b.p << " size " << size << " not zero at offset " << bad << " (seed " << seed
          << ", thread " << thread << ")";
        failures.report(s.str());
      }
    }
  } else if (how == 1) {
    size_t alignment = size_t(32) << (rng.next() % 8);  // 32 .. 4096
    b.p = mapalloc_aligned_alloc(alignment, size);
    if (b.p && !is_aligned(b.p, alignment)) {
      std::ostringstream s;
      s << "aligned_alloc(" << alignment << ", " << size << ") returned " << b.p << " (seed " << seed << ")";
      failures.report(s.str());
    }
  } else {
    b.p = mapalloc_malloc(size);
  }
  if (!b.p) {
    std::ostringstream s;
    s << "allocation of " << size << " bytes failed (seed " << seed << ", thread " << thread << ")";
    failures.report(s.str());
    return Block{};
  }
  b.key = block_key(b.p, size, seed);
  fill_block(b.p, size, b.key);
  return b;
}

void expect_no_leaked_blocks(const mapalloc_stats& before) {
  mapalloc_stats after = stats();
  EXPECT_EQ(after.small_live_blocks, before.small_live_blocks) << "small blocks live after every block was freed";
  EXPECT_EQ(after.large_live_count, before.large_live_count) << "large blocks live after every block was freed";
}

}  // namespace

// Each thread churns its own set of slots: malloc/calloc/aligned_alloc,
// realloc (contents kept), free; all blocks verified before they go.
TEST(Stress, RandomSizesPerThreadWithReallocKeepContents) {
  const unsigned threads = 6;
  const unsigned ops = 300000 / kSlowdown;
  const size_t slots = 1000;
  const uint64_t seed = test_seed();
  const size_t threshold = mapalloc_mmap_threshold();
  RecordProperty("seed", std::to_string(seed));
  mapalloc_stats before = stats();
  Failures failures;
  Deadline deadline;
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; t++) {
    pool.emplace_back([&, t] {
      Rng rng(seed + t);
      std::vector<Block> mine(slots);
      for (unsigned op = 0; op < ops && !failures.any(); op++) {
        if (op % 4096 == 0 && deadline.passed()) break;
        Block& slot = mine[rng.next() % slots];
        if (!slot.p) {
          slot = new_block(rng, random_size(rng, threshold), seed + op, failures, t);
        } else if (rng.chance(20)) {
          size_t size = random_size(rng, threshold) + 1;  // realloc(p, 0) frees
          size_t bad = check_block(slot.p, slot.size, slot.key);
          if (bad != SIZE_MAX) {
            failures.report(describe("before realloc", slot, bad, seed, t));
            break;
          }
          void* q = mapalloc_realloc(slot.p, size);
          if (!q) {
            failures.report("realloc to " + std::to_string(size) + " failed (seed " + std::to_string(seed) + ")");
            break;
          }
          // The kept prefix must read back; compare through a fresh check of
          // the old pattern where it is fully patterned.
          size_t kept = size < slot.size ? size : slot.size;
          if (kept <= kFullPatternMax && slot.size <= kFullPatternMax) {
            bad = check_pattern(q, kept, slot.key);
            if (bad != SIZE_MAX) {
              std::ostringstream s;
              s << "realloc " << slot.p << " (" << slot.size << ") -> " << q << " (" << size << ") lost byte " << bad
                << " (seed " << seed << ", thread " << t << ")";
              failures.report(s.str());
              break;
            }
          }
          slot.p = q;
          slot.size = size;
          slot.key = block_key(q, size, seed + op);
          fill_block(q, size, slot.key);
        } else {
          verify_and_free(slot, seed, t, failures, "per-thread free");
          slot = Block{};
        }
      }
      for (Block& b : mine)
        if (b.p) verify_and_free(b, seed, t, failures, "final free");
    });
  }
  for (auto& th : pool) th.join();
  EXPECT_FALSE(failures.any()) << failures.summary();
  expect_no_leaked_blocks(before);
}

namespace {

// A block that describes itself: its size and key in the first 16 bytes, the
// pattern after. Used wherever a block travels between threads.
struct Header {
  uint64_t size;
  uint64_t key;
};
static_assert(sizeof(Header) == 16, "the pattern starts 16 bytes in");

void write_headed(void* p, size_t size, uint64_t seed) {
  Header h{size, block_key(p, size, seed)};
  std::memcpy(p, &h, sizeof(h));
  fill_block(static_cast<char*>(p) + sizeof(h), size - sizeof(h), h.key);
}

void* new_headed(Rng& rng, size_t threshold, uint64_t seed, Failures& failures) {
  size_t size = random_size(rng, threshold) + sizeof(Header);
  void* p = mapalloc_malloc(size);
  if (!p) {
    failures.report("malloc(" + std::to_string(size) + ") failed (seed " + std::to_string(seed) + ")");
    return nullptr;
  }
  write_headed(p, size, seed);
  return p;
}

// True if the block reads back as written; reports it otherwise.
bool check_headed(void* p, uint64_t seed, Failures& failures, unsigned thread, const char* what) {
  Header h;
  std::memcpy(&h, p, sizeof(h));
  std::ostringstream s;
  if (h.key != block_key(p, h.size, seed)) {
    s << what << ": header of block " << p << " corrupted (size field " << h.size << ", seed " << seed << ", thread "
      << thread << ")";
  } else if (size_t usable = mapalloc_usable_size(p); usable < h.size) {
    s << what << ": block " << p << " of size " << h.size << " has usable size " << usable << " (seed " << seed << ")";
  } else if (size_t bad = check_block(static_cast<char*>(p) + sizeof(h), h.size - sizeof(h), h.key); bad != SIZE_MAX) {
    s << what << ": block " << p << " size " << h.size << " corrupted at offset " << bad + sizeof(h) << " (seed "
      << seed << ", thread " << thread << ")";
  } else {
    return true;
  }
  failures.report(s.str());
  return false;
}

bool check_headed_quiet(void* p) {
  Failures ignored;
  return check_headed(p, 0, ignored, 0, "thread exit");
}

void free_headed(void* p, uint64_t seed, Failures& failures, unsigned thread, const char* what) {
  if (check_headed(p, seed, failures, thread, what)) mapalloc_free(p);
}

// A bounded blocking queue of pointers; pop returns nullptr once closed and empty.
class Queue {
 public:
  explicit Queue(size_t bound) : bound_(bound) {}
  void push(void* p) {
    std::unique_lock<std::mutex> lock(mutex_);
    not_full_.wait(lock, [&] { return items_.size() < bound_; });
    items_.push_back(p);
    not_empty_.notify_one();
  }
  void* pop() {
    std::unique_lock<std::mutex> lock(mutex_);
    not_empty_.wait(lock, [&] { return !items_.empty() || closed_; });
    if (items_.empty()) return nullptr;
    void* p = items_.front();
    items_.pop_front();
    not_full_.notify_one();
    return p;
  }
  void close() {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    not_empty_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable not_full_, not_empty_;
  std::deque<void*> items_;
  size_t bound_;
  bool closed_ = false;
};

}  // namespace

// Threads swap blocks through a shared array of atomic slots, so most blocks
// are freed by a thread other than the one that allocated them.
TEST(Stress, CrossThreadFreesThroughLockFreeExchange) {
  const unsigned threads = 6;
  const unsigned ops = 250000 / kSlowdown;
  const uint64_t seed = test_seed() ^ 0xc055;
  const size_t threshold = mapalloc_mmap_threshold();
  RecordProperty("seed", std::to_string(seed));
  std::vector<std::atomic<void*>> exchange(4096);
  for (auto& e : exchange) e.store(nullptr);
  mapalloc_stats before = stats();
  Failures failures;
  Deadline deadline;
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; t++) {
    pool.emplace_back([&, t] {
      Rng rng(seed + t);
      for (unsigned op = 0; op < ops && !failures.any(); op++) {
        if (op % 4096 == 0 && deadline.passed()) break;
        void* p = new_headed(rng, threshold, seed, failures);
        if (!p) break;
        void* old = exchange[rng.next() % exchange.size()].exchange(p, std::memory_order_acq_rel);
        if (old) free_headed(old, seed, failures, t, "exchange");
      }
    });
  }
  for (auto& th : pool) th.join();
  for (auto& e : exchange) {
    if (void* p = e.exchange(nullptr)) free_headed(p, seed, failures, threads, "exchange drain");
  }
  EXPECT_FALSE(failures.any()) << failures.summary();
  expect_no_leaked_blocks(before);
}

// A three-stage pipeline: producers allocate, middle threads realloc blocks
// they do not own (contents must survive), sinks verify and free.
TEST(Stress, ProducerConsumerPipelineWithRemoteRealloc) {
  const unsigned producers = 2, middles = 2, sinks = 2;
  const unsigned per_producer = 150000 / kSlowdown;
  const uint64_t seed = test_seed() ^ 0x9196;
  const size_t threshold = mapalloc_mmap_threshold();
  RecordProperty("seed", std::to_string(seed));
  mapalloc_stats before = stats();
  Failures failures;
  Deadline deadline;
  Queue first(1024), second(1024);
  std::vector<std::thread> producer_threads, middle_threads, sink_threads;
  for (unsigned t = 0; t < producers; t++) {
    producer_threads.emplace_back([&, t] {
      Rng rng(seed + t);
      for (unsigned i = 0; i < per_producer && !failures.any(); i++) {
        if (i % 4096 == 0 && deadline.passed()) break;
        void* p = new_headed(rng, threshold, seed, failures);
        if (!p) break;
        first.push(p);
      }
    });
  }
  for (unsigned t = 0; t < middles; t++) {
    middle_threads.emplace_back([&, t] {
      Rng rng(seed + 100 + t);
      while (void* p = first.pop()) {
        if (failures.any() || !check_headed(p, seed, failures, producers + t, "before remote realloc")) continue;
        if (rng.chance(50)) {
          second.push(p);
          continue;
        }
        Header h;
        std::memcpy(&h, p, sizeof(h));
        size_t size = random_size(rng, threshold) + sizeof(Header);
        void* q = mapalloc_realloc(p, size);
        if (!q) {
          failures.report("remote realloc to " + std::to_string(size) + " failed");
          continue;
        }
        size_t kept = (size < h.size ? size : h.size) - sizeof(Header);
        if (h.size <= kFullPatternMax) {
          size_t bad = check_pattern(static_cast<char*>(q) + sizeof(Header), kept, h.key);
          if (bad != SIZE_MAX) {
            std::ostringstream s;
            s << "remote realloc " << p << " (" << h.size << ") -> " << q << " (" << size << ") lost byte "
              << bad + sizeof(Header) << " (seed " << seed << ")";
            failures.report(s.str());
            continue;
          }
        }
        write_headed(q, size, seed);
        second.push(q);
      }
    });
  }
  for (unsigned t = 0; t < sinks; t++) {
    sink_threads.emplace_back([&, t] {
      while (void* p = second.pop()) free_headed(p, seed, failures, producers + middles + t, "sink");
    });
  }
  for (auto& th : producer_threads) th.join();
  first.close();
  for (auto& th : middle_threads) th.join();
  second.close();
  for (auto& th : sink_threads) th.join();
  EXPECT_FALSE(failures.any()) << failures.summary();
  if (!failures.any()) expect_no_leaked_blocks(before);
}

// 2000 threads that live for a few hundred allocations each, at most 8 at a
// time. Every fourth thread leaves blocks behind; later threads and finally
// the main thread free them after their owner has exited. Dead threads'
// heaps must be reused, so memory stays bounded.
TEST(Stress, TwoThousandShortLivedThreadsKeepMemoryBounded) {
  const unsigned total = 2000, concurrent = 8;
  const unsigned per_thread = 150 / kSlowdown;
  const uint64_t seed = test_seed() ^ 0x5407;
  const size_t threshold = mapalloc_mmap_threshold();
  RecordProperty("seed", std::to_string(seed));
  mapalloc_stats before = stats();
  Failures failures;
  std::mutex stash_mutex;
  std::vector<void*> stash;  // blocks whose allocating thread has (or will have) exited
  unsigned started = 0;
  for (; started < total && !failures.any(); started += concurrent) {
    std::vector<std::thread> batch;
    for (unsigned i = started; i < started + concurrent; i++) {
      batch.emplace_back([&, i] {
        Rng rng(seed + i);
        std::vector<void*> mine;
        for (unsigned k = 0; k < per_thread; k++) {
          void* p = new_headed(rng, threshold, seed, failures);
          if (!p) return;
          mine.push_back(p);
          if (rng.chance(30)) {  // free a random one now
            size_t j = rng.next() % mine.size();
            free_headed(mine[j], seed, failures, i, "short-lived thread");
            mine[j] = mine.back();
            mine.pop_back();
          }
        }
        size_t keep = i % 4 == 0 ? std::min<size_t>(10, mine.size()) : 0;
        for (size_t j = keep; j < mine.size(); j++) free_headed(mine[j], seed, failures, i, "short-lived thread");
        std::vector<void*> adopted;
        {
          std::lock_guard<std::mutex> lock(stash_mutex);
          stash.insert(stash.end(), mine.begin(), mine.begin() + long(keep));
          for (int n = 0; n < 5 && stash.size() > 40; n++) {
            size_t j = size_t(rng.next() % stash.size());
            adopted.push_back(stash[j]);
            stash[j] = stash.back();
            stash.pop_back();
          }
        }
        for (void* p : adopted) free_headed(p, seed, failures, i, "block of an exited thread");
      });
    }
    for (auto& th : batch) th.join();
  }
  for (void* p : stash) free_headed(p, seed, failures, total, "main thread freeing blocks of exited threads");
  EXPECT_FALSE(failures.any()) << failures.summary();
  mapalloc_collect();
  mapalloc_stats after = stats();
  std::ostringstream numbers;
  numbers << "threads_seen " << after.threads_seen << ", heaps " << after.heaps << " (before " << before.heaps
          << "), bytes_mapped " << after.bytes_mapped << " (before " << before.bytes_mapped << "), committed "
          << after.bytes_committed;
  RecordProperty("memory", numbers.str());
  EXPECT_GE(after.threads_seen - before.threads_seen, uint64_t(started)) << numbers.str();
  // Growth over the test, not the absolute figure: earlier tests in the same
  // process may have reserved address space that stays (the malloc(0)
  // region's blocks, page-map leaves).
  EXPECT_LT(after.bytes_mapped, before.bytes_mapped + 256 * MiB) << numbers.str();
  // At most 8 workers are alive at once; thread exit hands heaps on.
  EXPECT_LE(after.heaps, before.heaps + 4 * concurrent) << numbers.str();
  if (!failures.any()) expect_no_leaked_blocks(before);
}

// Large and over-aligned blocks from several threads at once: the large
// cache, guard pages and the page map under contention, with blocks
// sometimes freed or realloc'ed by another thread.
TEST(Stress, LargeAndAlignedBlocksFromManyThreads) {
  const unsigned threads = 4;
  const unsigned ops = 2500 / kSlowdown;
  const size_t slots = 12;
  const uint64_t seed = test_seed() ^ 0x1a26e;
  const size_t threshold = mapalloc_mmap_threshold();
  RecordProperty("seed", std::to_string(seed));
  mapalloc_stats before = stats();
  Failures failures;
  Deadline deadline;
  std::mutex shared_mutex;
  std::vector<Block> shared;  // handed to whichever thread comes next
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; t++) {
    pool.emplace_back([&, t] {
      Rng rng(seed + t);
      std::vector<Block> mine(slots);
      for (unsigned op = 0; op < ops && !failures.any(); op++) {
        if (op % 64 == 0 && deadline.passed()) break;
        Block& slot = mine[rng.next() % slots];
        if (!slot.p) {
          Block b;
          if (rng.chance(30)) {
            size_t alignment = (64 * KiB) << (rng.next() % 6);  // 64 KiB .. 2 MiB
            b.size = rng.range(1, 3 * MiB);
            int rc = mapalloc_posix_memalign(&b.p, alignment, b.size);
            if (rc != 0 || !is_aligned(b.p, alignment)) {
              std::ostringstream s;
              s << "posix_memalign(" << alignment << ", " << b.size << ") = " << rc << ", " << b.p << " (seed " << seed
                << ")";
              failures.report(s.str());
              break;
            }
          } else {
            b.size = rng.range(threshold + 1, 4 * MiB);
            b.p = mapalloc_malloc(b.size);
            if (!b.p) {
              failures.report("malloc(" + std::to_string(b.size) + ") failed");
              break;
            }
          }
          b.key = block_key(b.p, b.size, seed + op);
          fill_block(b.p, b.size, b.key);
          slot = b;
        } else if (rng.chance(25)) {
          size_t size = rng.chance(80) ? rng.range(threshold + 1, 4 * MiB) : rng.range(1, threshold);
          size_t bad = check_block(slot.p, slot.size, slot.key);
          if (bad != SIZE_MAX) {
            failures.report(describe("before large realloc", slot, bad, seed, t));
            break;
          }
          // The first 4 KiB are patterned in every block: they must survive.
          size_t head = std::min({size, slot.size, size_t(4 * KiB)});
          void* q = mapalloc_realloc(slot.p, size);
          if (!q) {
            failures.report("realloc to " + std::to_string(size) + " failed");
            break;
          }
          bad = check_pattern(q, head, slot.key);
          if (bad != SIZE_MAX) {
            std::ostringstream s;
            s << "realloc " << slot.p << " (" << slot.size << ") -> " << q << " (" << size << ") lost byte " << bad
              << " (seed " << seed << ")";
            failures.report(s.str());
            break;
          }
          slot.p = q;
          slot.size = size;
          slot.key = block_key(q, size, seed + op);
          fill_block(q, size, slot.key);
        } else if (rng.chance(30)) {
          Block other;
          {
            std::lock_guard<std::mutex> lock(shared_mutex);
            shared.push_back(slot);
            if (shared.size() > 8) {
              other = shared.front();
              shared.erase(shared.begin());
            }
          }
          slot = Block{};
          if (other.p) verify_and_free(other, seed, t, failures, "large block from another thread");
        } else {
          verify_and_free(slot, seed, t, failures, "large block");
          slot = Block{};
        }
      }
      for (Block& b : mine)
        if (b.p) verify_and_free(b, seed, t, failures, "final large free");
    });
  }
  for (auto& th : pool) th.join();
  for (Block& b : shared) verify_and_free(b, seed, threads, failures, "shared large drain");
  EXPECT_FALSE(failures.any()) << failures.summary();
  mapalloc_collect();
  mapalloc_stats after = stats();
  EXPECT_LT(after.bytes_mapped, before.bytes_mapped + 256 * MiB)
      << "bytes_mapped " << after.bytes_mapped << " (before " << before.bytes_mapped << ")";
  if (!failures.any()) expect_no_leaked_blocks(before);
}

namespace {

pthread_key_t exit_key;
std::atomic<unsigned> destructor_failures{0};

// Runs at thread exit, possibly after mapalloc's own exit handler: frees the
// thread's block, allocates and frees again, and re-arms itself twice.
void exit_destructor(void* p) {
  if (!check_headed_quiet(p)) destructor_failures++;
  mapalloc_free(p);
  for (size_t size : {size_t(24), size_t(3000), size_t(300000)}) {
    void* q = mapalloc_malloc(size);
    if (!q) {
      destructor_failures++;
      continue;
    }
    fill_pattern(q, size, size);
    if (check_pattern(q, size, size) != SIZE_MAX) destructor_failures++;
    mapalloc_free(q);
  }
  static thread_local int rearmed = 0;
  if (rearmed++ < 2) {
    void* again = mapalloc_malloc(64);
    write_headed(again, 64, 0);
    pthread_setspecific(exit_key, again);
  }
}

struct ExitFreer {
  void* p = nullptr;
  ~ExitFreer() {
    if (p && !check_headed_quiet(p)) destructor_failures++;
    mapalloc_free(p);
    mapalloc_free(mapalloc_malloc(48));
  }
};
thread_local ExitFreer exit_freer;

}  // namespace

// Thread-exit code that allocates: pthread key destructors (which may run
// after mapalloc's) and C++ thread_local destructors.
TEST(Stress, ThreadExitDestructorsAllocateAndFree) {
  ASSERT_EQ(pthread_key_create(&exit_key, exit_destructor), 0);
  mapalloc_stats before = stats();
  const unsigned rounds = 60 / kSlowdown, per_round = 8;
  for (unsigned r = 0; r < rounds; r++) {
    std::vector<std::thread> batch;
    for (unsigned i = 0; i < per_round; i++) {
      batch.emplace_back([] {
        void* p = mapalloc_malloc(48);
        write_headed(p, 48, 0);
        pthread_setspecific(exit_key, p);
        exit_freer.p = mapalloc_malloc(5000);
        write_headed(exit_freer.p, 5000, 0);
        mapalloc_free(mapalloc_malloc(100));
      });
    }
    for (auto& th : batch) th.join();
  }
  pthread_key_delete(exit_key);
  EXPECT_EQ(destructor_failures.load(), 0u) << "blocks corrupted or allocations failed in thread-exit destructors";
  expect_no_leaked_blocks(before);
}

// mapalloc_collect (malloc_trim) walks the abandoned heaps of exited
// threads while new threads adopt them. It once waited for the first heap of
// its walk to come round again: when a new thread adopted that heap, the
// walk went on for as long as that thread lived. A race, so the scenario
// runs several times; each collector must keep returning.
TEST(Stress, CollectReturnsWhileNewThreadsAdoptAbandonedHeaps) {
  constexpr int kRounds = 6, kLeavers = 64, kAdopters = 40, kCollectors = 2;
  for (int round = 0; round < kRounds; round++) {
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, nullptr, kLeavers);
    std::vector<std::thread> leavers;
    for (int i = 0; i < kLeavers; i++) {
      leavers.emplace_back([&] {
        pthread_barrier_wait(&barrier);  // all alive at once: one heap each
        void* keep = mapalloc_malloc(64);  // a live block: the heap stays abandoned, not emptied
        (void)keep;
        pthread_barrier_wait(&barrier);
      });
    }
    for (auto& t : leavers) t.join();
    pthread_barrier_destroy(&barrier);
    std::atomic<bool> stop{false};
    std::atomic<long> collects[kCollectors] = {};
    std::vector<std::thread> threads;
    for (int k = 0; k < kCollectors; k++) {
      threads.emplace_back([&, k] {
        while (!stop.load()) {
          mapalloc_collect();
          collects[k]++;
        }
      });
    }
    for (int i = 0; i < kAdopters; i++) {
      threads.emplace_back([&] {
        mapalloc_free(mapalloc_malloc(64));  // adopts an abandoned heap
        while (!stop.load()) usleep(1000);
      });
      usleep(2000);
    }
    long before[kCollectors];
    for (int k = 0; k < kCollectors; k++) before[k] = collects[k].load();
    usleep(1000 * 1000);
    for (int k = 0; k < kCollectors; k++) {
      if (collects[k].load() == before[k]) {
        ADD_FAILURE() << "round " << round << ": a mapalloc_collect did not return in 1 s while threads adopted "
                      << "abandoned heaps";
        std::fflush(stdout);
        std::_Exit(1);  // that collector would never join
      }
    }
    stop = true;
    for (auto& t : threads) t.join();
  }
}

// Waits up to `seconds` for child pid; false (the child killed) if it is
// still running then.
static bool wait_or_kill(pid_t pid, int seconds, int* status) {
  for (int w = 0; w < seconds * 100; w++) {
    if (waitpid(pid, status, WNOHANG) == pid) return true;
    usleep(10000);
  }
  kill(pid, SIGKILL);
  waitpid(pid, status, 0);
  return false;
}

// fork() while other threads allocate: the child must be able to allocate
// (small, large, and, except under TSan, from a new thread) and exit; a child that deadlocks on a
// lock held at fork time is killed after 10 s and reported.
TEST(Stress, ForkWhileOtherThreadsAllocate) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> busy;
  const size_t threshold = mapalloc_mmap_threshold();
  for (unsigned t = 0; t < 3; t++) {
    busy.emplace_back([&, t] {
      Rng rng(test_seed() + t);
      while (!stop.load(std::memory_order_relaxed)) {
        void* p = mapalloc_malloc(random_size(rng, threshold));
        void* q = mapalloc_malloc(threshold + rng.range(1, 300000));
        mapalloc_free(p);
        mapalloc_free(q);
        if (rng.chance(5)) mapalloc_collect();
      }
    });
  }
  const unsigned forks = 100 / kSlowdown;
  unsigned failed = 0;
  std::string first;
  for (unsigned i = 0; i < forks; i++) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      int rc = 0;
      for (size_t k = 0; k < 100; k++) {
        void* p = mapalloc_malloc(k * 100);
        void* q = mapalloc_malloc(threshold + k * 1000);
        if (!p || !q) rc = 1;
        mapalloc_free(q);
        mapalloc_free(p);
      }
#ifndef MAPALLOC_TEST_TSAN
      std::thread child_thread([&] {
        void* p = mapalloc_malloc(10);
        if (!p) rc = 1;
        mapalloc_free(p);
      });
      child_thread.join();
#endif
      _exit(rc);
    }
    int status = 0;
    bool exited = wait_or_kill(pid, 10, &status);
    if (!exited || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      if (!failed++) {
        first = "fork " + std::to_string(i) + ": child " +
                (exited ? "ended with status " + std::to_string(status) : std::string("hung for 10 s"));
      }
    }
  }
  stop = true;
  for (auto& th : busy) th.join();
  EXPECT_EQ(failed, 0u) << first;
}

// fork() while another thread reads the statistics: that thread held the
// statistics' locks at the fork, and in the child nobody ever released them,
// so the child's own mapalloc_stats_get (mallinfo, malloc_stats, the report
// that stats=1 prints at exit) never returned. A child still running after
// 5 s is reported.
TEST(Stress, ForkWhileAnotherThreadReadsStatistics) {
  mapalloc_free(mapalloc_malloc(1));  // started, as under the shim (its fork handlers registered)
  int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
  ASSERT_GE(devnull, 0);
  std::atomic<bool> stop{false};
  std::thread reader([&] {
    mapalloc_stats s;
    while (!stop.load(std::memory_order_relaxed)) {
      mapalloc_stats_get(&s);
      mapalloc_stats_print(devnull);
      mapalloc_stats_print_json(devnull);
    }
  });
  const unsigned forks = 40 / kSlowdown;
  std::string failure;
  for (unsigned i = 0; i < forks && failure.empty(); i++) {
    pid_t pid = fork();
    if (pid == 0) {
      mapalloc_stats s;
      mapalloc_stats_get(&s);
      mapalloc_stats_print(devnull);
      mapalloc_stats_print_json(devnull);
      _exit(0);
    }
    if (pid < 0) {
      failure = "fork failed";
      break;
    }
    int status = 0;
    if (!wait_or_kill(pid, 5, &status)) {
      failure = "fork " + std::to_string(i) + ": the child's statistics did not return in 5 s";
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      failure = "fork " + std::to_string(i) + ": child ended with status " + std::to_string(status);
    }
  }
  stop = true;
  reader.join();
  close(devnull);
  EXPECT_TRUE(failure.empty()) << failure;
}

namespace {

pthread_key_t every_round_key;

// Allocates in every destructor round glibc runs, the last one too: it
// re-arms itself until PTHREAD_DESTRUCTOR_ITERATIONS (as libraries do that
// want their destructor to run after the others).
void every_round_destructor(void* p) {
  static thread_local unsigned rounds = 0;
  mapalloc_free(p);
  void* q = mapalloc_malloc(100);
  if (++rounds < PTHREAD_DESTRUCTOR_ITERATIONS) {
    pthread_setspecific(every_round_key, q);
  } else {
    mapalloc_free(q);
  }
}

}  // namespace

// A key destructor that allocates after mapalloc's exit handler ran for the
// last time (the last destructor round): the heap that allocation took was
// never abandoned again, so every such thread kept a heap and a page (about
// 15 KiB) for ever.
TEST(Stress, AllocationInTheLastDestructorRoundKeepsHeapsBounded) {
#ifdef MAPALLOC_TEST_TSAN
  GTEST_SKIP() << "ThreadSanitizer ends its own thread state in the last destructor round (instrumented code there crashes)";
#endif
  mapalloc_free(mapalloc_malloc(1));  // mapalloc's exit key first, as under the shim
  ASSERT_EQ(pthread_key_create(&every_round_key, every_round_destructor), 0);
  mapalloc_collect();  // that block out of this thread's quarantine (quarantine=)
  mapalloc_stats before = stats();
  const unsigned threads = 400 / kSlowdown;
  for (unsigned i = 0; i < threads; i++) {
    std::thread([] { pthread_setspecific(every_round_key, mapalloc_malloc(100)); }).join();
  }
  pthread_key_delete(every_round_key);
  mapalloc_collect();
  mapalloc_stats after = stats();
  EXPECT_LE(after.heaps, before.heaps + 2) << "heaps " << after.heaps << " (before " << before.heaps << ") after "
                                           << threads << " threads, one at a time";
  expect_no_leaked_blocks(before);
}
