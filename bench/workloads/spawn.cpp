// Process start-up under the allocator, as a shell script sees it: runs
// `sh -c 'echo <i> | cat'` procs times, one after another, with stdout to a
// pipe it reads back. Every process (sh, cat) inherits LD_PRELOAD and so
// starts, allocates a little and exits under the allocator measured. The
// shells are C programs: what an LD_PRELOAD allocator loads with itself
// (a C++ runtime) and does at start is what this measures.
//   spawn procs=<processes>
#include "common.h"
#include <spawn.h>
#include <sys/wait.h>

extern char** environ;

namespace {

// Runs one pipeline and hashes what it printed.
uint64_t run_one(long i) {
    char script[64];
    std::snprintf(script, sizeof script, "echo %ld | cat", i);
    int out[2];
    if (pipe(out) != 0) std::abort();
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_addclose(&actions, out[0]);
    posix_spawn_file_actions_addclose(&actions, out[1]);
    char* argv[] = {const_cast<char*>("sh"), const_cast<char*>("-c"), script, nullptr};
    pid_t pid;
    if (posix_spawn(&pid, "/bin/sh", &actions, nullptr, argv, environ) != 0) std::abort();
    posix_spawn_file_actions_destroy(&actions);
    close(out[1]);
    uint64_t h = uint64_t(i);
    char buf[64];
    for (ssize_t n; (n = read(out[0], buf, sizeof buf)) > 0;)
        for (ssize_t k = 0; k < n; ++k) h = wl::mix(h ^ uint8_t(buf[k]));
    close(out[0]);
    int status = 0;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) std::abort();
    return h;
}

}  // namespace

int main(int argc, char** argv) {
    wl::Args a{argc, argv};
    long procs = a.get("procs", 300);
    uint64_t h = 0;
    for (long i = 0; i < procs; ++i) h += run_one(i);
    wl::print_checksum(h);
}
