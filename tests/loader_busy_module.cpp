// Loaded by loader_busy.cpp: a library whose constructor registers itself
// with the program under the program's lock, as plugin factories do.
#include <pthread.h>

#include <atomic>

extern pthread_mutex_t registry_lock;         // the program's
extern std::atomic<int> constructor_started;  // the program's

static struct Register {
  Register() {
    constructor_started = 1;
    pthread_mutex_lock(&registry_lock);
    pthread_mutex_unlock(&registry_lock);
  }
} registration;
