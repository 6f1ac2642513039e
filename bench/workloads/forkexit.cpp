// Forked children of a process with a big heap, as a shell's subshells and a
// preforking server's workers are: builds a heap of `blocks` small blocks
// (kept live), then forks `procs` children one after another. Each child
// allocates and frees a little, reads some of the heap, writes a hash to a
// pipe and exits normally (exit: atexit handlers and library destructors
// run, as a subshell's do). So every child starts with its parent's heap and
// whatever the allocator does at fork and at exit is paid per child.
//   forkexit blocks=<live blocks in the parent> procs=<children>
#include "common.h"
#include <sys/wait.h>
#include <vector>

namespace {

struct Block { void* p; size_t n; };

// The child's work: a few blocks of its own, and a read of 1000 of the
// parent's. Its hash goes to fd.
[[noreturn]] void child(const std::vector<Block>& heap, long i, int fd) {
    wl::Rng r(uint64_t(i) + 1);
    uint64_t h = uint64_t(i);
    void* own[64];
    for (int k = 0; k < 64; ++k) {
        size_t n = r.range(16, 512);
        if (!(own[k] = std::malloc(n))) std::abort();
        wl::fill(own[k], n, h + uint64_t(k));
        h = wl::mix(h ^ wl::digest(own[k], n));
    }
    for (int k = 0; k < 1000; ++k) {
        const Block& b = heap[r.below(heap.size())];
        h = wl::mix(h ^ wl::digest(b.p, b.n));
    }
    for (void* p : own) std::free(p);
    if (write(fd, &h, sizeof h) != sizeof h) std::abort();
    std::exit(0);
}

}  // namespace

int main(int argc, char** argv) {
    wl::Args a{argc, argv};
    long blocks = a.get("blocks", 300000), procs = a.get("procs", 300);
    wl::Rng r(5000);
    std::vector<Block> heap(static_cast<size_t>(blocks));
    for (long i = 0; i < blocks; ++i) {
        Block& b = heap[size_t(i)];
        b.n = r.range(16, 128);
        if (!(b.p = std::malloc(b.n))) std::abort();
        wl::fill(b.p, b.n, uint64_t(i));
    }
    std::fflush(stdout);  // nothing buffered for the children to print again
    uint64_t h = 0;
    for (long i = 0; i < procs; ++i) {
        int out[2];
        if (pipe(out) != 0) std::abort();
        pid_t pid = fork();
        if (pid < 0) std::abort();
        if (pid == 0) {
            close(out[0]);
            child(heap, i, out[1]);
        }
        close(out[1]);
        uint64_t got = 0;
        if (read(out[0], &got, sizeof got) != sizeof got) std::abort();
        close(out[0]);
        int status = 0;
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) std::abort();
        h += got;
    }
    for (const Block& b : heap) {
        h = wl::mix(h ^ wl::digest(b.p, b.n));
        std::free(b.p);
    }
    wl::report_rss("end");
    wl::print_checksum(h);
}
