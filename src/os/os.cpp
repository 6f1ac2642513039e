#include "os/os.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "base/bits.h"

namespace mapalloc::os {

Counters counters;
bool use_madv_free = false;

static void count(std::atomic<uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }

// mmap/munmap must not clobber errno on success paths of malloc.
struct ErrnoGuard {
  int saved = errno;
  ~ErrnoGuard() { errno = saved; }
};

static void* do_map(void* hint, size_t size, int prot, int extra_flags) {
  ErrnoGuard guard;
  count(counters.mmap_calls);
  void* p = ::mmap(hint, size, prot, MAP_PRIVATE | MAP_ANONYMOUS | extra_flags, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  counters.mapped.fetch_add(size, std::memory_order_relaxed);
  return p;
}

void* map(size_t size) { return do_map(nullptr, size, PROT_READ | PROT_WRITE, 0); }

// Without MAP_NORESERVE: a PROT_NONE range is not charged anyway, and the
// parts later made read-write must be, so that the kernel's overcommit check
// refuses (as it does glibc's mmap) a size no RAM and swap can back.
void* reserve(size_t size) { return do_map(nullptr, size, PROT_NONE, 0); }

void unmap(void* p, size_t size) {
  if (!p || !size) return;
  ErrnoGuard guard;
  count(counters.munmap_calls);
  if (::munmap(p, size) == 0) counters.mapped.fetch_sub(size, std::memory_order_relaxed);
}

void* map_aligned(size_t size, size_t alignment, bool rw, size_t offset) {
  int prot = rw ? PROT_READ | PROT_WRITE : PROT_NONE;
  auto misalignment = [&](const char* q) { return (reinterpret_cast<uintptr_t>(q) + offset) & (alignment - 1); };
  // Try the cheap way first: the kernel often returns aligned addresses.
  char* p = static_cast<char*>(do_map(nullptr, size, prot, 0));
  if (!p) return nullptr;
  if (misalignment(p) == 0) return p;
  // Else extend it to the alignment below it (the kernel maps top-down, so
  // the pages below are usually free) or, failing that, above it (a
  // bottom-up layout: setarch -L), and trim its other end: three calls,
  // where mapping again with room to align took five. The parts merge.
  auto map_exactly = [&](char* at, size_t bytes) {
    void* q = do_map(at, bytes, prot, MAP_FIXED_NOREPLACE);
    if (q == at) return true;
    unmap(q, bytes);  // (a kernel before 4.17 took the flag as a hint)
    return false;
  };
  size_t down = misalignment(p), up = alignment - down;
  if (map_exactly(p - down, down)) {
    unmap(p + size - down, down);
    return p - down;
  }
  if (map_exactly(p + size, up)) {
    unmap(p, up);
    return p + up;
  }
  unmap(p, size);
  size_t over = size + alignment - kPageSize;
  p = static_cast<char*>(do_map(nullptr, over, prot, 0));
  if (!p) return nullptr;
  char* aligned = misalignment(p) ? p + (alignment - misalignment(p)) : p;
  unmap(p, size_t(aligned - p));
  unmap(aligned + size, size_t(p + over - (aligned + size)));
  return aligned;
}

static bool protect(void* p, size_t size, int prot) {
  ErrnoGuard guard;
  count(counters.mprotect_calls);
  return ::mprotect(p, size, prot) == 0;
}

bool protect_none(void* p, size_t size) { return protect(p, size, PROT_NONE); }
bool protect_rw(void* p, size_t size) { return protect(p, size, PROT_READ | PROT_WRITE); }

bool decommit(void* p, size_t size) {
  ErrnoGuard guard;
  count(counters.mmap_calls);  // (a replacement: the bytes mapped stay as they are)
  return ::mmap(p, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == p;
}

static bool advise(void* p, size_t size, int advice) {
  ErrnoGuard guard;
  count(counters.madvise_calls);
  return ::madvise(p, size, advice) == 0;
}

// Not in Debian 12's headers yet.
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#define MADV_GUARD_REMOVE 103
#endif

// 1: the kernel has markers, 0: it does not (older kernel, or a tool that
// rejects the advice), -1: not asked yet. Settled by the first call; a race
// between two first calls settles it the same way twice. The probe is one
// call on an empty range: the kernel checks the advice before the range,
// and returns 0 for an empty one (the earlier probe, a page mapped, marked
// and unmapped, was three calls in every process). It does not tell whether
// the kernel takes markers in this process's memory: it refuses them in
// locked memory (markers_refused, below).
static std::atomic<int> markers{-1};

bool guard_markers() {
  int m = markers.load(std::memory_order_relaxed);
  if (m >= 0) return m;
  ErrnoGuard guard;
  count(counters.madvise_calls);
  m = ::madvise(reinterpret_cast<void*>(kPageSize), 0, MADV_GUARD_INSTALL) == 0;
  markers.store(m, std::memory_order_relaxed);
  return m;
}

// Set once the kernel refused a guard marker (guard_marker: a guard, or a
// run's end guard) although it has them: it refuses them in locked mappings
// (mlockall(MCL_FUTURE)). From then on guards take their fallbacks without a
// refused call first (markers_usable), and unguard() also makes its range
// read-write again (guard() may have used mprotect). A purge into markers
// that a locked page refuses counts for its range only (purge_to_guard).
static std::atomic<bool> markers_refused{false};

bool markers_usable() { return guard_markers() && !markers_refused.load(std::memory_order_relaxed); }

bool guard_marker(void* p, size_t size) {
  if (advise(p, size, MADV_GUARD_INSTALL)) return true;
  markers_refused.store(true, std::memory_order_relaxed);
  return false;
}

#ifndef SYS_process_madvise
#define SYS_process_madvise 440
#endif
// PIDFD_SELF_THREAD (Linux 6.15): the calling thread, whose memory is the
// process's. (PIDFD_SELF_THREAD_GROUP fails with ESRCH once the main thread
// has called pthread_exit.)
constexpr int kPidfdSelf = -10000;
static std::atomic<bool> batch_refused{false};

static_assert(sizeof(Range) == sizeof(iovec) && offsetof(Range, base) == offsetof(iovec, iov_base) &&
              offsetof(Range, size) == offsetof(iovec, iov_len));

bool guard_ranges(const Range* ranges, unsigned n) {
  if (n > kMaxGuardRanges || batch_refused.load(std::memory_order_relaxed) || !markers_usable()) return false;
  size_t total = 0;
  for (unsigned i = 0; i < n; i++) total += ranges[i].size;
  ErrnoGuard guard;
  count(counters.madvise_calls);
  long done = syscall(SYS_process_madvise, kPidfdSelf, ranges, n, MADV_GUARD_INSTALL, 0);
  if (done == long(total)) return true;
  // Refused outright: ENOSYS, EBADF (no PIDFD_SELF), EINVAL (an advice not
  // taken for the calling process before 6.13), EPERM (a seccomp filter):
  // not again. But the kernel also refuses the first range itself (EINVAL
  // in locked memory, ENOMEM), which madvise on it tells apart; the caller's
  // fallback records a refusal. (A short count is such a range further on.)
  if (done < 0 && advise(ranges[0].base, ranges[0].size, MADV_GUARD_INSTALL))
    batch_refused.store(true, std::memory_order_relaxed);
  return false;
}

bool guard_each(const Range* ranges, unsigned n) {
  if (guard_ranges(ranges, n)) return true;
  for (unsigned i = 0; i < n; i++)
    if (!guard(ranges[i].base, ranges[i].size)) return false;
  return true;
}

bool guard_pages(char* first, size_t stride, unsigned n) {
  if (n > kMaxGuardRanges) return false;
  Range pages[kMaxGuardRanges];
  for (unsigned i = 0; i < n; i++) pages[i] = {first + i * stride, kPageSize};
  return guard_ranges(pages, n);
}

bool unguard_markers(void* p, size_t size) { return advise(p, size, MADV_GUARD_REMOVE); }

bool guard(void* p, size_t size) {
  if (markers_usable() && guard_marker(p, size)) return true;
  return protect_none(p, size);
}

bool unguard(void* p, size_t size) {
  if (!guard_markers()) return protect_rw(p, size);
  bool ok = unguard_markers(p, size);
  if (markers_refused.load(std::memory_order_relaxed)) ok = protect_rw(p, size) && ok;
  return ok;
}

bool purge(void* p, size_t size) {
  if (!size) return true;
  ErrnoGuard guard;
  count(counters.madvise_calls);
  count(counters.purges);
  counters.purged_bytes.fetch_add(size, std::memory_order_relaxed);
  if (use_madv_free && ::madvise(p, size, MADV_FREE) == 0) return false;
  return ::madvise(p, size, MADV_DONTNEED) == 0;
}

bool purge_to_guard(void* p, size_t size, bool* took_back) {
  if (took_back) *took_back = false;
  if (!size) return true;
  if (!markers_usable()) return false;
  // (Not guard_marker: a page locked in the range refuses this range only.)
  if (!advise(p, size, MADV_GUARD_INSTALL)) {
    // A locked part (mlock) stops the install partway, with markers already
    // on the pages before it: take them back, as the caller counts on none.
    unguard_markers(p, size);
    if (took_back) *took_back = true;
    return false;
  }
  count(counters.purges);
  counters.purged_bytes.fetch_add(size, std::memory_order_relaxed);
  return true;
}

void purge_and_close(void* p, size_t size) {
  if (purge_to_guard(p, size)) return;
  purge(p, size);
  guard(p, size);
}

// mremap moves a range that spans several mappings since Linux 6.17; before,
// it refuses, and only after unmapping the destination.
bool moves_across_mappings() {
  static std::atomic<int> known{-1};
  int k = known.load(std::memory_order_relaxed);
  if (k >= 0) return k;
  utsname u;
  unsigned major = 0, minor = 0;
  if (uname(&u) == 0) {
    const char* r = u.release;
    while (*r >= '0' && *r <= '9') major = major * 10 + unsigned(*r++ - '0');
    if (*r == '.') r++;
    while (*r >= '0' && *r <= '9') minor = minor * 10 + unsigned(*r++ - '0');
  }
  k = major > 6 || (major == 6 && minor >= 17);
  known.store(k, std::memory_order_relaxed);
  return k;
}

bool move_pages(void* old_p, size_t size, void* dest) {
  ErrnoGuard guard;
  count(counters.mremap_calls);
  // dest was mapped (and counted) already; the source range becomes a hole.
  if (::mremap(old_p, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, dest) == MAP_FAILED) return false;
  counters.mapped.fetch_sub(size, std::memory_order_relaxed);
  return true;
}

// The coarse clock (the kernel's last tick, read from the vDSO without the
// TSC) is precise enough for purge delays of milliseconds, and large blocks
// read it on every malloc and free: on bench large, the precise clock's
// 30 ns a call were 3 % of mapalloc's time.
uint64_t now_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1000000;
}

// Field `index` (0: size, 1: resident) of /proc/self/statm, in bytes; 0 if
// it cannot be read.
static uint64_t statm_bytes(int index) {
  ErrnoGuard guard;
  int fd = ::open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[128];
  ssize_t n = ::read(fd, buf, sizeof(buf) - 1);
  ::close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  const char* s = buf;
  for (int i = 0; i < index; i++) {
    while (*s && *s != ' ') s++;
    while (*s == ' ') s++;
  }
  uint64_t pages = 0;
  while (*s >= '0' && *s <= '9') pages = pages * 10 + uint64_t(*s++ - '0');
  return pages * kPageSize;
}

uint64_t resident_bytes() { return statm_bytes(1); }
uint64_t address_space_bytes() { return statm_bytes(0); }

void random_words(uint64_t* words, size_t n) {
  ErrnoGuard guard;
  // One call for all of them: a process start draws five (thread.cpp).
  ssize_t got = ::getrandom(words, n * sizeof(uint64_t), GRND_NONBLOCK);
  for (size_t i = 0; i < n; i++) {
    if (got == ssize_t(n * sizeof(uint64_t)) && words[i]) continue;
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t v = (uint64_t(ts.tv_nsec) + i) * 0x9E3779B97F4A7C15ull ^ uint64_t(reinterpret_cast<uintptr_t>(words));
    v ^= v >> 31;
    words[i] = v | 1;
  }
}

}  // namespace mapalloc::os
