// Layer 1: a small lock for slow paths (arena, large cache, heap pool).
// Spins briefly, then yields. No allocation, safe to re-initialise after fork.
#pragma once
#include <sched.h>
#include <time.h>

#include <atomic>

namespace mapalloc {

class SpinLock {
 public:
  void lock() {
    for (unsigned spins = 0; locked_.exchange(true, std::memory_order_acquire); spins++) {
      while (locked_.load(std::memory_order_relaxed)) {
        if (spins++ < 64) {
#if defined(__x86_64__) || defined(__i386__)
          __builtin_ia32_pause();
#endif
        } else {
          sched_yield();
        }
      }
    }
  }
  bool try_lock() { return !locked_.load(std::memory_order_relaxed) && !locked_.exchange(true, std::memory_order_acquire); }
  // Tries about once a millisecond for `ms` milliseconds. For the checks at
  // exit: exit may run in a signal handler that interrupted its own thread
  // inside the lock, where lock() would spin for ever.
  bool try_lock_for_ms(unsigned ms) {
    for (unsigned tries = 0; !try_lock(); tries++) {
      if (tries == ms) return false;
      struct timespec one = {0, 1000000};
      nanosleep(&one, nullptr);
    }
    return true;
  }
  void unlock() { locked_.store(false, std::memory_order_release); }
  // Child side of fork: the child has one thread, whoever held this is gone.
  void reset_after_fork() { locked_.store(false, std::memory_order_relaxed); }

 private:
  std::atomic<bool> locked_{false};
};

class LockGuard {
 public:
  explicit LockGuard(SpinLock& l) : lock_(l) { lock_.lock(); }
  ~LockGuard() { lock_.unlock(); }
  LockGuard(const LockGuard&) = delete;
  LockGuard& operator=(const LockGuard&) = delete;

 private:
  SpinLock& lock_;
};

}  // namespace mapalloc
