#include "meta.h"

#include "base/bits.h"
#include "base/lock.h"
#include "os/os.h"

namespace mapalloc::meta {

static SpinLock lock;
static char* cursor = nullptr;  // guarded by lock
static char* limit = nullptr;
constexpr size_t kRegion = 1 * MiB;

void* allocate(size_t size) {
  size = align_up(size, 64);
  LockGuard guard(lock);
  if (size_t(limit - cursor) < size || !cursor) {
    size_t region = size > kRegion ? align_up(size, os::kPageSize) : kRegion;
    char* fresh = static_cast<char*>(os::map(region));
    if (!fresh) return nullptr;
    cursor = fresh;
    limit = fresh + region;
  }
  void* p = cursor;
  cursor += size;
  return p;
}

void lock_for_fork() { lock.lock(); }
void unlock_for_fork() { lock.unlock(); }
void reset_after_fork() { lock.reset_after_fork(); }

}  // namespace mapalloc::meta
