// Integration helper, run under LD_PRELOAD=libmapalloc.so (and plainly, for
// comparison) by fork_exec.sh and threads.sh. Plain C++ with no link to
// mapalloc: whatever malloc the process has is what it tests.
//
//   fork_exec fork [forks]      worker threads allocate, fill, check and free
//                               (also across threads) while the main thread
//                               forks repeatedly; each child allocates, frees
//                               blocks of its own and blocks the workers made,
//                               then _exit()s, exit()s, starts threads, or
//                               execs /bin/true. A child that hangs is killed
//                               by alarm() and reported.
//   fork_exec threads [count]   count short-lived threads (default 20000), a
//                               few at a time, each allocating small, medium
//                               and large blocks and freeing some of its
//                               predecessors'; resident memory must stay flat.
//
// stdout is deterministic (compared between runs); figures that vary go to
// stderr as "info:" lines. Exit status 0 when every check held.
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace {

// A block: [size][tag] then size-16 bytes of (tag & 0xff).
constexpr std::size_t kHeader = 16;

unsigned char* make_block(std::size_t size, uint64_t tag) {
  if (size < kHeader) size = kHeader;
  auto* p = static_cast<unsigned char*>(std::malloc(size));
  if (!p) {
    std::fprintf(stderr, "malloc(%zu) returned null\n", size);
    std::abort();
  }
  std::memcpy(p, &size, sizeof size);
  std::memcpy(p + 8, &tag, sizeof tag);
  std::memset(p + kHeader, static_cast<int>(tag & 0xff), size - kHeader);
  return p;
}

// Checks the header and the fill (all of it up to 4 KiB, then one byte a page
// and the last 64) and frees the block. Aborts on corruption.
void check_free(unsigned char* p, const char* who) {
  std::size_t size;
  uint64_t tag;
  std::memcpy(&size, p, sizeof size);
  std::memcpy(&tag, p + 8, sizeof tag);
  if (size < kHeader || size > (64u << 20)) {
    std::fprintf(stderr, "%s: corrupt block header at %p (size %zu)\n", who, static_cast<void*>(p), size);
    std::abort();
  }
  const auto fill = static_cast<unsigned char>(tag & 0xff);
  auto bad = [&](std::size_t i) { return p[i] != fill; };
  for (std::size_t i = kHeader; i < size && i < 4096; ++i)
    if (bad(i)) goto corrupt;
  for (std::size_t i = 4096; i < size; i += 4096)
    if (bad(i)) goto corrupt;
  for (std::size_t i = size > 64 + kHeader ? size - 64 : kHeader; i < size; ++i)
    if (bad(i)) goto corrupt;
  std::free(p);
  return;
corrupt:
  std::fprintf(stderr, "%s: block %p of %zu bytes (tag %llx) was overwritten\n", who, static_cast<void*>(p),
               size, static_cast<unsigned long long>(tag));
  std::abort();
}

std::size_t random_size(std::mt19937_64& rng) {
  const unsigned r = rng() % 1000;
  if (r < 700) return 16 + rng() % 241;             // small
  if (r < 950) return 256 + rng() % (16384 - 256);  // medium
  if (r < 995) return 16384 + rng() % (256 << 10);  // up to a quarter MiB
  return (256 << 10) + rng() % (2 << 20);           // large, own mapping
}

// Blocks handed between threads (and taken by fork children).
constexpr int kSlots = 4096;
std::atomic<unsigned char*> g_slots[kSlots];

void put_slot(std::size_t i, unsigned char* p, const char* who) {
  if (auto* old = g_slots[i % kSlots].exchange(p, std::memory_order_acq_rel)) check_free(old, who);
}

void drain_slots(const char* who) {
  for (auto& s : g_slots)
    if (auto* p = s.exchange(nullptr, std::memory_order_acq_rel)) check_free(p, who);
}

long rss_kib() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return -1;
  long pages = 0, resident = 0;
  if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = -1;
  std::fclose(f);
  return resident < 0 ? -1 : resident * (sysconf(_SC_PAGESIZE) / 1024);
}

// ---------------------------------------------------------------- fork ----

std::atomic<bool> g_stop{false};
std::atomic<uint64_t> g_worker_ops{0};

void worker(int id) {
  std::mt19937_64 rng(1000 + id);
  std::vector<unsigned char*> live;
  uint64_t ops = 0;
  while (!g_stop.load(std::memory_order_relaxed)) {
    const unsigned r = rng() % 100;
    if (r < 45 || live.empty()) {
      if (live.size() < 128) live.push_back(make_block(random_size(rng), rng()));
    } else if (r < 80) {
      std::size_t i = rng() % live.size();
      check_free(live[i], "worker");
      live[i] = live.back();
      live.pop_back();
    } else if (r < 90) {
      // Hand one to the slots (a fork child or another worker frees it).
      std::size_t i = rng() % live.size();
      put_slot(rng(), live[i], "worker");
      live[i] = live.back();
      live.pop_back();
    } else if (r < 95) {
      // realloc keeping the contents.
      std::size_t i = rng() % live.size();
      std::size_t old_size;
      uint64_t tag;
      std::memcpy(&old_size, live[i], 8);
      std::memcpy(&tag, live[i] + 8, 8);
      std::size_t new_size = random_size(rng);
      auto* q = static_cast<unsigned char*>(std::realloc(live[i], new_size));
      if (!q) std::abort();
      if (new_size > old_size) std::memset(q + old_size, static_cast<int>(tag & 0xff), new_size - old_size);
      std::memcpy(q, &new_size, 8);
      live[i] = q;
    } else {
      // C++ containers and aligned blocks.
      std::vector<std::string> v;
      for (int k = 0; k < 20; ++k) v.emplace_back(static_cast<std::size_t>(rng() % 200), 'a' + k);
      void* a = nullptr;
      if (posix_memalign(&a, std::size_t{64} << (rng() % 8), 100 + rng() % 5000) != 0) std::abort();
      std::free(a);
      auto u = std::make_unique<uint64_t[]>(1 + rng() % 3000);
      u[0] = v.size();
    }
    // Leave the 2 cores some room for the forking thread and its children.
    if (++ops % 64 == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  for (auto* p : live) check_free(p, "worker");
  g_worker_ops.fetch_add(ops);
}

// What a child does after fork(); never returns.
[[noreturn]] void child_main(int i) {
  alarm(30);  // a deadlocked child dies of SIGALRM and is reported
  std::mt19937_64 rng(77 + i);
  std::vector<unsigned char*> mine;
  for (int k = 0; k < 200; ++k) mine.push_back(make_block(k % 50 ? 16 + rng() % 2000 : random_size(rng), rng()));
  // Blocks the parent's worker threads made: freed here, where those threads
  // do not exist.
  for (int k = 0; k < 64; ++k)
    if (auto* p = g_slots[rng() % kSlots].exchange(nullptr, std::memory_order_acq_rel)) check_free(p, "child");
  for (int k = 0; k < 200; k += 2) check_free(mine[k], "child");
  for (int k = 0; k < 100; ++k) {
    void* p = std::realloc(nullptr, 10 + k * 37);
    p = std::realloc(p, 100000 + k);
    std::free(p);
  }
  std::string s;
  for (int k = 0; k < 1000; ++k) s += std::to_string(k);
  switch (i % 5) {
    case 0:
      std::_Exit(s.size() == 2890 ? 0 : 3);
    case 1:
      for (int k = 1; k < 200; k += 2) check_free(mine[k], "child");
      std::exit(0);  // atexit handlers and static destructors run
    case 2: {
      // Threads started in the child allocate too.
      std::vector<std::thread> ts;
      for (int t = 0; t < 3; ++t)
        ts.emplace_back([t, i] {
          std::mt19937_64 r(i * 10 + t);
          std::vector<unsigned char*> v;
          for (int k = 0; k < 300; ++k) v.push_back(make_block(random_size(r), r()));
          for (auto* p : v) check_free(p, "child thread");
        });
      for (auto& t : ts) t.join();
      std::exit(0);
    }
    case 3: {
      // A grandchild: fork again from the child.
      pid_t g = fork();
      if (g == 0) {
        void* p = std::malloc(12345);
        std::free(p);
        std::_Exit(0);
      }
      int st = 0;
      if (g < 0 || waitpid(g, &st, 0) != g || !WIFEXITED(st) || WEXITSTATUS(st) != 0) std::_Exit(4);
      std::_Exit(0);
    }
    default:
      execl("/bin/true", "true", static_cast<char*>(nullptr));
      std::_Exit(127);
  }
}

int run_fork(int forks) {
  const int nworkers = 3;
  std::vector<std::thread> workers;
  for (int i = 0; i < nworkers; ++i) workers.emplace_back(worker, i);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));

  std::fflush(stdout);
  std::fflush(stderr);
  int ok = 0, failed = 0, spawned_ok = 0;
  std::mt19937_64 rng(5);
  std::vector<unsigned char*> main_blocks;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < forks; ++i) {
    main_blocks.push_back(make_block(random_size(rng), rng()));
    pid_t pid = fork();
    if (pid < 0) {
      std::fprintf(stderr, "fork %d: %s\n", i, std::strerror(errno));
      ++failed;
      continue;
    }
    if (pid == 0) child_main(i);
    int st = 0;
    if (waitpid(pid, &st, 0) != pid) {
      std::fprintf(stderr, "waitpid %d: %s\n", i, std::strerror(errno));
      ++failed;
    } else if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
      ++ok;
    } else {
      ++failed;
      if (WIFSIGNALED(st))
        std::fprintf(stderr, "child %d (mode %d) killed by signal %d (%s)%s\n", i, i % 5, WTERMSIG(st),
                     strsignal(WTERMSIG(st)), WTERMSIG(st) == SIGALRM ? ": hung for 30 s, deadlock?" : "");
      else
        std::fprintf(stderr, "child %d (mode %d) exited with %d\n", i, i % 5, WEXITSTATUS(st));
    }
    if (main_blocks.size() > 50) {
      for (auto* p : main_blocks) check_free(p, "main");
      main_blocks.clear();
    }
    if (i % 50 == 0) {
      // posix_spawn (vfork-like clone) from the multi-threaded parent.
      pid_t sp;
      char arg0[] = "true";
      char* argv[] = {arg0, nullptr};
      if (posix_spawn(&sp, "/bin/true", nullptr, nullptr, argv, environ) == 0 && waitpid(sp, &st, 0) == sp &&
          WIFEXITED(st) && WEXITSTATUS(st) == 0)
        ++spawned_ok;
      else
        std::fprintf(stderr, "posix_spawn /bin/true at %d failed\n", i);
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  g_stop = true;
  for (auto& t : workers) t.join();
  for (auto* p : main_blocks) check_free(p, "main");
  drain_slots("main");
  std::printf("fork: %d forks, %d children ok, %d failed, %d posix_spawn ok\n", forks, ok, failed, spawned_ok);
  std::fprintf(stderr, "info: %d forks in %.2f s while %d threads allocated (%llu operations)\n", forks, secs,
               nworkers, static_cast<unsigned long long>(g_worker_ops.load()));
  return failed == 0 && spawned_ok == (forks + 49) / 50 ? 0 : 1;
}

// ------------------------------------------------------------- threads ----

struct ThreadLocalCache {
  std::vector<std::string> names;
  ~ThreadLocalCache() {
    // Allocates and frees while the thread is being torn down.
    std::string s;
    for (auto& n : names) s += n;
    names.clear();
    names.shrink_to_fit();
    std::vector<char> tmp(s.begin(), s.end());
  }
};
thread_local ThreadLocalCache t_cache;

void short_thread(int id) {
  std::mt19937_64 rng(id);
  std::vector<unsigned char*> v;
  for (int k = 0; k < 40; ++k) v.push_back(make_block(16 + rng() % 240, rng()));
  for (int k = 0; k < 4; ++k) v.push_back(make_block(1024 + rng() % 30000, rng()));
  if (id % 10 == 0) v.push_back(make_block((200 << 10) + rng() % (800 << 10), rng()));  // above the mmap threshold
  for (int k = 0; k < 5; ++k) t_cache.names.push_back(std::string(20 + k * 10, 'x'));
  // Two small ones outlive the thread in the slots; the next threads free them.
  put_slot(static_cast<std::size_t>(id) * 2, make_block(64 + rng() % 900, rng()), "thread");
  put_slot(static_cast<std::size_t>(id) * 2 + 1, make_block(64 + rng() % 900, rng()), "thread");
  for (auto* p : v) check_free(p, "thread");
}

int run_threads(int count) {
  const int wave = 16;
  const int warm = count / 10;
  long rss_warm = -1, rss_peak = 0;
  std::vector<long> marks;
  const auto start = std::chrono::steady_clock::now();
  for (int done = 0; done < count;) {
    std::vector<std::thread> ts;
    for (int k = 0; k < wave && done < count; ++k, ++done) ts.emplace_back(short_thread, done);
    for (auto& t : ts) t.join();
    if (done >= warm && rss_warm < 0) rss_warm = rss_kib();
    if (done >= warm) rss_peak = std::max(rss_peak, rss_kib());
    if (done % (count / 4) < wave) marks.push_back(rss_kib());
  }
  const long rss_end = rss_kib();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  drain_slots("main");
  std::string m;
  for (long k : marks) m += " " + std::to_string(k / 1024);
  std::fprintf(stderr,
               "info: %d threads in %.2f s; RSS after %d threads %ld KiB, at the end %ld KiB (growth %ld KiB, "
               "peak %ld KiB); MiB at quarters:%s\n",
               count, secs, warm, rss_warm, rss_end, rss_end - rss_warm, rss_peak, m.c_str());
  // Flat: what 9/10 of the threads added on top of the warmed-up process.
  const long limit_kib = 32 * 1024;
  if (rss_warm < 0 || rss_end < 0) {
    std::printf("threads: cannot read /proc/self/statm\n");
    return 1;
  }
  if (rss_end - rss_warm > limit_kib) {
    std::printf("threads: %d threads done; RSS grew by %ld KiB after warm-up (limit %ld KiB)\n", count,
                rss_end - rss_warm, limit_kib);
    return 1;
  }
  std::printf("threads: %d threads done; RSS flat after warm-up (within %ld MiB)\n", count, limit_kib / 1024);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "fork") return run_fork(argc > 2 ? std::atoi(argv[2]) : 150);
  if (mode == "threads") return run_threads(argc > 2 ? std::atoi(argv[2]) : 20000);
  std::fprintf(stderr, "usage: %s fork [forks] | threads [count]\n", argv[0]);
  return 2;
}
