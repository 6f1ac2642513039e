// The process's first nothrow operator new, made while another thread is
// inside dlopen: that thread holds the loader's lock and waits, in a
// library's constructor, for a lock this thread holds. A nothrow new that
// called into the loader (dlsym, dladdr) would wait for that thread, which
// waits for this one. Usage: loader_busy <libloader_busy_module.so>; prints
// "ok", or is stopped by alarm() after 5 s.
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

#include <atomic>
#include <new>

#ifdef REPLACE_NEW
// Built a second time replacing the basic forms: the nothrow forms then
// call these (and catch), with nothing to look up either.
#include <stdlib.h>
void* operator new(size_t size) {
  if (void* p = malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { free(p); }
#endif

pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
std::atomic<int> constructor_started{0};

static void* load(void* path) {
  if (!dlopen(static_cast<const char*>(path), RTLD_NOW)) printf("dlopen: %s\n", dlerror());
  return nullptr;
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  alarm(5);
  pthread_mutex_lock(&registry_lock);
  pthread_t loader;
  pthread_create(&loader, nullptr, load, argv[1]);
  while (!constructor_started) usleep(1000);
  usleep(10000);  // the constructor is now waiting for registry_lock
  void* p = ::operator new(64, std::nothrow);
  void* q = ::operator new[](64, std::nothrow);
  void* r = ::operator new(64, std::align_val_t(128), std::nothrow);
  pthread_mutex_unlock(&registry_lock);
  pthread_join(loader, nullptr);
  ::operator delete(p);
  ::operator delete[](q);
  ::operator delete(r, std::align_val_t(128));
  puts(p && q && r ? "ok" : "FAILED: null");
  return p && q && r ? 0 : 1;
}
