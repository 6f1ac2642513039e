// Heap misuse of every kind mapalloc claims to catch, done by a plain program
// through the standard names, as a program run under the shim would do it.
// shim_misuse.sh runs each case with LD_PRELOAD=libmapalloc.so and checks
// that it dies the expected way. A case that survives prints "not caught".
// Built with -O0 -fno-builtin so that the compiler keeps every misuse.
#include <malloc.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

static volatile char sink;
static int global_int;

static char* alloc(size_t n) { return static_cast<char*>(std::malloc(n)); }

// A write that always changes the byte. Where a check compares with a value
// derived from a random secret (canaries, a freed block's words), a write of
// a constant leaves the byte as it was 1 time in 256 and goes unseen: that
// made write-after-free-large fail once in a fresh-clone test run.
static void poke(char* q) { *q = char(~*q); }

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const char* c = argv[1];
  char* p;
  auto is = [c](const char* name) { return std::strcmp(c, name) == 0; };
  if (is("probe-guard-markers")) {  // exit 0 when the kernel has guard markers (Linux 6.13+)
    void* page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return page != MAP_FAILED && madvise(page, 4096, 102 /* MADV_GUARD_INSTALL */) == 0 ? 0 : 1;
  }
  else if (is("small-overflow-1")) { p = alloc(24); std::memset(p, 1, 24); poke(p + 24); std::free(p); }
  else if (is("small-overflow-class-size")) { p = alloc(64); std::memset(p, 1, 64); poke(p + 64); std::free(p); }
  else if (is("small-overflow-20")) { p = alloc(100); std::memset(p, 1, 120); std::free(p); }
  else if (is("small-overflow-realloc")) { p = alloc(40); poke(p + 40); p = static_cast<char*>(std::realloc(p, 44)); }
  else if (is("large-overflow-1")) { p = alloc(200000); p[200000] = 1; std::free(p); }
  else if (is("large-overflow-odd")) { p = alloc(200001); p[200001] = 1; std::free(p); }
  else if (is("large-overflow-aligned")) {
    void* v = nullptr;
    if (posix_memalign(&v, 4096, 300000) != 0) return 2;
    p = static_cast<char*>(v);
    p[300000] = 1;
    std::free(p);
  }
  else if (is("large-overflow-linear")) { p = alloc(300000); std::memset(p, 1, 300000 + 8192); std::free(p); }
  else if (is("large-underflow-1")) { p = alloc(200000); p[-1] = 1; std::free(p); }
  else if (is("large-underflow-page")) { p = alloc(256 * 1024); p[-1] = 1; std::free(p); }
  else if (is("large-underflow-gap")) {
    // The only cached mapping is 3 pages wider than the second block needs:
    // its guard stays, the block starts 96 bytes into its first page, and
    // the 256 bytes below it, some in the page below, are canary.
    std::free(alloc(600 * 1024 + 16));
    p = alloc(600 * 1024 - 96 - 3 * 4096);
    p[-256] = 1;
    std::free(p);
  }
  else if (is("read-after-free-large-purged")) {
    // Three freed 48 MiB blocks pass the resident cap: the oldest is purged.
    char* b[3];
    for (char*& q : b) { q = alloc(48 << 20); std::memset(q, 1, 48 << 20); }
    for (char* q : b) std::free(q);
    sink = b[0][4096];
  }
  else if (is("small-underflow-first-block")) {
    // The 5120-byte class's first block: its run's first (only slot-aligned) block.
    p = alloc(5000);
    if (reinterpret_cast<unsigned long>(p) % 16384 != 0) return 3;  // not a fresh run's first block
    p[-1] = 1;
    std::free(p);
  }
  else if (is("small-underflow-first-block-after-others")) {
    // As a program that has made other small blocks first: the 4096-byte
    // class's first run goes into free slots above the runs those took, where
    // the slot below it held no run.
    for (int i = 0; i < 40; i++) alloc(8 + (i % 5) * 24);
    p = alloc(4000);
    if (reinterpret_cast<unsigned long>(p) % 32768 != 0) return 3;  // not a run's first block
    poke(p - 1);
    std::free(p);
  }
  else if (is("small-underflow-1") || is("small-underflow-word") || is("small-underflow-freed-neighbour")) {
    // Not a run's first block (its run's guard page lies below that one).
    char* before = alloc(40);
    p = alloc(40);
    while (reinterpret_cast<unsigned long>(p) % 16384 == 0) before = p, p = alloc(40);
    if (is("small-underflow-freed-neighbour")) std::free(before);  // the block below, if it is this one
    for (int k = 1; k <= (is("small-underflow-word") ? 8 : 1); k++) poke(p - k);
    std::free(p);
  }
  // Below a medium block, bytes of 'A' (xored, so that each changes): the
  // record there is checked with the whole end of the block below.
  else if (is("medium-underflow-word-20000") || is("medium-underflow-word-100000")) {
    size_t n = is("medium-underflow-word-20000") ? 20000 : 100000;
    char* before = alloc(n);
    p = alloc(n);
    while (p < before || size_t(p - before) >= 2 * n || reinterpret_cast<unsigned long>(p) % 16384 == 0)
      before = p, p = alloc(n);
    for (int k = 1; k <= 8; k++) p[-k] ^= 'A';
    std::free(p);
  }
  // A thread writes below a block and exits; the main thread frees it.
  else if (is("thread-underflow-freed-after-exit")) {
    static char* q;
    std::thread([] {
      char* before = alloc(100);
      q = alloc(100);
      while (q < before || q - before >= 200 || reinterpret_cast<unsigned long>(q) % 16384 == 0)
        before = q, q = alloc(100);
      for (int k = 1; k <= 8; k++) q[-k] ^= 'A';
    }).join();
    std::free(q);
  }
  // A thread overflows a block it never frees and exits; then the process.
  else if (is("thread-overflow-at-exit")) {
    std::thread([] {
      char* q = alloc(24);
      for (int k = 0; k < 8; k++) q[24 + k] ^= 'A';
    }).join();
  }
  else if (is("read-after-free-small-purged")) {
    p = alloc(3000);
    std::memset(p, 1, 3000);
    auto chunk = [](const void* q) { return reinterpret_cast<unsigned long>(q) >> 20; };
    for (int i = 0; i < 4096 && chunk(alloc(2000)) != chunk(p); i++) {}  // a live neighbour keeps the chunk
    std::free(p);
    malloc_trim(0);  // its page back to the arena, and purged
    sink = p[100];
  }
  else if (is("double-free-small")) { p = alloc(40); std::free(p); std::free(p); }
  else if (is("double-free-aligned")) { p = static_cast<char*>(aligned_alloc(256, 256)); std::free(p); std::free(p); }
  else if (is("double-free-large")) { p = alloc(400000); std::free(p); std::free(p); }
  else if (is("invalid-free-stack")) { char x[32]; sink = x[0]; std::free(x + 16); }
  else if (is("invalid-free-global")) { std::free(&global_int); }
  else if (is("invalid-free-interior")) { p = alloc(64); std::free(p + 16); }
  else if (is("invalid-free-interior-large")) { p = alloc(400000); std::free(p + 4096); }
  else if (is("invalid-free-wild")) { std::free(reinterpret_cast<void*>(0x7f0000001000)); }
  else if (is("write-after-free-small")) { p = alloc(40); std::free(p); poke(p); poke(p + 8); sink = *alloc(40); }
  // Misuse that no later call reaches: caught at exit (main returns below).
  else if (is("small-overflow-1-at-exit")) { p = alloc(24); std::memset(p, 1, 24); poke(p + 24); }
  else if (is("small-underflow-1-at-exit")) { alloc(40); p = alloc(40); poke(p - 1); }
  else if (is("write-after-free-small-at-exit")) { p = alloc(40); std::free(p); std::strcpy(p, "dangling"); }
  else if (is("write-after-free-large-at-exit")) { p = alloc(400000); std::free(p); poke(p); }
  else if (is("large-underflow-1-at-exit")) { p = alloc(200000); poke(p - 1); }
  else if (is("write-after-free-small-last-byte")) { p = alloc(46); std::free(p); poke(p + 45); }  // at exit
  else if (is("small-overflow-1-at-exit-inherited-block")) {  // the parent's block (a sample by default), the child's write
    p = alloc(40);
    if (fork() == 0) { poke(p + 40); std::exit(0); }
    int status = 0;
    wait(&status);
    if (WIFSIGNALED(status)) raise(WTERMSIG(status));
  }
  else if (is("small-overflow-1-at-exit-forked-child")) {  // the child's own block, at the child's exit
    for (int i = 0; i < 200; i++) sink = alloc(24)[0];    // the parent's samples, live at the fork
    if (fork() == 0) { p = alloc(24); std::memset(p, 1, 24); poke(p + 24); std::exit(0); }
    int status = 0;
    wait(&status);
    if (WIFSIGNALED(status)) raise(WTERMSIG(status));  // dies as the child did
  }
  else if (is("write-after-free-small-first-byte")) { p = alloc(128); std::free(p); poke(p); std::free(alloc(128)); }
  else if (is("write-after-free-large")) { p = alloc(400000); std::free(p); poke(p); sink = *alloc(400000); }
  else if (is("realloc-freed")) { p = alloc(40); std::free(p); p = static_cast<char*>(std::realloc(p, 80)); }
  else if (is("realloc-foreign")) { p = static_cast<char*>(std::realloc(&global_int, 80)); }
  else if (is("usable-size-freed")) { p = alloc(40); std::free(p); sink = char(malloc_usable_size(p)); }
  // Caught only in a guarded sample (sample.h): the first blocks of a
  // program are, with the default options.
  else if (is("read-after-free-small")) { p = alloc(32); std::strcpy(p, "secret"); std::free(p); sink = p[0]; }
  else if (is("write-after-free-small-middle")) { p = alloc(64); std::free(p); p[24] = 1; std::free(alloc(64)); }
  else if (is("read-after-free-medium")) { p = alloc(20000); std::free(p); sink = p[10000]; }
  else if (is("read-after-free-large")) { p = alloc(1 << 20); std::memset(p, 1, 1 << 20); std::free(p); sink = p[100]; }
  else if (is("write-after-free-large-middle")) { p = alloc(1 << 20); std::free(p); p[5000] = 1; std::free(alloc(1 << 20)); }
  // Over-aligned blocks are samples too (alignments up to 32 KiB).
  else if (is("read-after-free-aligned-8k")) { p = static_cast<char*>(aligned_alloc(8192, 100)); std::free(p); sink = p[0]; }
  else if (is("read-after-free-aligned-32k")) { p = static_cast<char*>(aligned_alloc(32768, 4096)); std::free(p); sink = p[4000]; }
  // Too big or too aligned for a sample's slot: a sample of its own mapping.
  else if (is("read-after-free-small-100k")) { p = alloc(100000); std::free(p); sink = p[50000]; }
  else if (is("write-after-free-small-100k")) { p = alloc(100000); std::free(p); p[99999] = 1; std::free(alloc(100000)); }
  else if (is("read-after-free-small-100k-size-reused")) {  // the next request of the size gets another mapping
    p = alloc(100000);
    std::free(p);
    char* q = alloc(100000);
    q[0] = 1;
    sink = p[50000];
  }
  else if (is("read-after-free-aligned-64k")) { p = static_cast<char*>(aligned_alloc(65536, 100)); std::free(p); sink = p[0]; }
  else if (is("small-overflow-100k-faults")) { p = alloc(100000); sink = p[100008]; }
  // A sample ends as near its guard page as its request's alignment (16)
  // allows, not its class's (8 KiB for the 40 KiB class).
  else if (is("small-overread-40000-faults")) { p = alloc(40000); sink = p[40000]; }
  else if (is("small-overflow-1-faults")) { p = alloc(64); std::memset(p, 1, 64); sink = p[64]; }
  else if (is("read-after-free-small-forked-child")) {  // the parent used up its samples; a child starts over
    for (int i = 0; i < 200; i++) std::free(alloc(32));
    if (fork() == 0) { p = alloc(32); std::free(p); sink = p[0]; std::_Exit(0); }
    int status = 0;
    wait(&status);
    if (WIFSIGNALED(status)) raise(WTERMSIG(status));  // dies as the child did
  }
  // Run with sample=20: the program's 17th to 20th blocks are samples in the
  // region's second chunk, of 4 slots (slots 16-19), whose guard pages must
  // be in place: past the end of its first slot's block, and the page below
  // its last slot's.
  else if (is("small-overflow-sample-17")) {
    for (int i = 0; i < 16; i++) sink = alloc(32)[0];
    p = alloc(32);
    p[32] = 1;
  }
  else if (is("small-underflow-sample-20")) {
    for (int i = 0; i < 19; i++) sink = alloc(32)[0];
    p = alloc(32);
    sink = p[-4096];
  }
  else if (is("zero-size-read")) { p = alloc(0); sink = p[0]; }
  else if (is("zero-size-write")) { p = alloc(0); p[0] = 1; }
  else return 2;
  std::puts("not caught");
  return 0;
}
