#!/bin/bash
# Every symbol a program may reach through the shim must be exported by it
# (nm -D, defined, default visibility). Usage: check_symbols.sh libmapalloc.so
set -euo pipefail
lib=$1
want=(malloc free calloc realloc reallocarray aligned_alloc posix_memalign memalign valloc pvalloc
      malloc_usable_size free_sized free_aligned_sized
      __libc_malloc __libc_free __libc_calloc __libc_realloc __libc_memalign __libc_valloc __libc_pvalloc cfree
      malloc_trim malloc_stats mallinfo mallinfo2 mallopt malloc_info
      # dlopen without RTLD_DEEPBIND (preload/dlopen.cpp)
      dlopen
      # operator new / delete: plain, array, nothrow, sized, aligned, and their combinations
      _Znwm _Znam _ZnwmRKSt9nothrow_t _ZnamRKSt9nothrow_t
      _ZnwmSt11align_val_t _ZnamSt11align_val_t _ZnwmSt11align_val_tRKSt9nothrow_t _ZnamSt11align_val_tRKSt9nothrow_t
      _ZdlPv _ZdaPv _ZdlPvRKSt9nothrow_t _ZdaPvRKSt9nothrow_t _ZdlPvm _ZdaPvm
      _ZdlPvSt11align_val_t _ZdaPvSt11align_val_t _ZdlPvSt11align_val_tRKSt9nothrow_t _ZdaPvSt11align_val_tRKSt9nothrow_t
      _ZdlPvmSt11align_val_t _ZdaPvmSt11align_val_t)
have=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TWi]$/ {print $3}' | sed 's/@.*//')
missing=0
for s in "${want[@]}"; do
  if ! grep -qx -- "$s" <<<"$have"; then
    echo "missing from $lib: $s"
    missing=$((missing + 1))
  fi
done
# Nothing of the implementation may leak out besides the prefixed API.
leaked=$(grep -v -x -F -f <(printf '%s\n' "${want[@]}") <<<"$have" | grep -v '^mapalloc_' || true)
if [[ -n "$leaked" ]]; then
  echo "exported but not part of the API:"
  echo "$leaked"
  missing=$((missing + 1))
fi
# The shim loads nothing but libc into a process: libstdc++ with libm and
# libgcc_s cost every process half a millisecond at start, C ones too
# (operator new binds the program's runtime weakly, or looks it up when it
# fails: preload/new_delete.cpp).
needed=$(readelf -d "$lib" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
extra=$(grep -v -x -E 'libc\.so\.6|ld-linux.*\.so\.[0-9]+|libdl\.so\.2|libpthread\.so\.0' <<<"$needed" || true)
if [[ -n "$extra" ]]; then
  echo "needs libraries besides libc:" $extra
  missing=$((missing + 1))
fi
echo "${#want[@]} symbols and the needed libraries checked, $missing problems"
((missing == 0))
