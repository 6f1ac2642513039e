// old_kernel PROGRAM [ARGS...]: runs PROGRAM as on an older kernel, such as
// Debian 12's own (6.1): madvise(MADV_GUARD_INSTALL / MADV_GUARD_REMOVE),
// new in 6.13, fails with EINVAL, and every mremap with EFAULT (before 6.17
// a move of a range spanning several mappings does; refusing them all is
// stricter). A seccomp filter, inherited by every child and exec.
// old_kernel --no-process-madvise PROGRAM [ARGS...]: only process_madvise
// fails (ENOSYS), as before 6.15 gave it PIDFD_SELF: guard markers one range
// per call.
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char** argv) {
  bool only_process_madvise = argc > 1 && strcmp(argv[1], "--no-process-madvise") == 0;
  if (only_process_madvise) argv++, argc--;
  if (argc < 2) {
    fprintf(stderr, "usage: old_kernel [--no-process-madvise] PROGRAM [ARGS...]\n");
    return 2;
  }
  constexpr unsigned kGuardInstall = 102, kGuardRemove = 103;
  sock_filter filter[] = {
      /* 0 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      /* 1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      /* 2 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      /* 3 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      /* 4 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mremap, 0, 1),
      /* 5 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EFAULT),
      /* 6 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_madvise, 0, 3),
      /* 7 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[2])),  // advice, low half
      /* 8 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kGuardInstall, 2, 0),
      /* 9 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kGuardRemove, 1, 0),
      /* 10 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      /* 11 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EINVAL),
  };
  sock_filter process_madvise_only[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_process_madvise, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog program = {static_cast<unsigned short>(sizeof filter / sizeof filter[0]), filter};
  if (only_process_madvise)
    program = {static_cast<unsigned short>(sizeof process_madvise_only / sizeof process_madvise_only[0]),
               process_madvise_only};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) != 0) {
    perror("old_kernel: seccomp");
    return 2;
  }
  execvp(argv[1], argv + 1);
  perror("old_kernel: exec");
  return 127;
}
