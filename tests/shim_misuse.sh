#!/bin/bash
# shim_misuse.sh <libmapalloc.so> <shim_misuse binary> <secure: true|false>
# Runs every misuse case of shim_misuse.cpp under LD_PRELOAD and checks that
# it aborts with mapalloc's one-line message, or faults on a guard page.
set -u
shim=$1 prog=$2 secure=$3
fail=0
# case : expected ("SIGSEGV", or a regular expression for the stderr line)
cases=(
  "large-overflow-1:SIGSEGV"
  "large-overflow-linear:SIGSEGV"
  "large-underflow-1:^mapalloc: heap underflow before the start of large block 0x"
  "large-underflow-page:SIGSEGV"
  "large-underflow-gap:^mapalloc: heap underflow before the start of large block 0x"
  "double-free-small:^mapalloc: double free of 0x"
  "double-free-aligned:^mapalloc: double free of 0x"
  "double-free-large:^mapalloc: double free of large block 0x"
  "invalid-free-stack:^mapalloc: invalid free"
  "invalid-free-global:^mapalloc: invalid free"
  "invalid-free-interior:^mapalloc: invalid free"
  "invalid-free-interior-large:^mapalloc: invalid free"
  "invalid-free-wild:^mapalloc: invalid free"
  "write-after-free-large:^mapalloc: write after free into large block 0x"
  "realloc-freed:^mapalloc: use of freed block 0x"
  "realloc-foreign:^mapalloc: realloc of pointer not allocated by mapalloc"
  "usable-size-freed:^mapalloc: use of freed block 0x"
  "zero-size-read:SIGSEGV"
  "zero-size-write:SIGSEGV"
)
# Purged memory becomes guard markers only where the kernel has them.
if "$prog" probe-guard-markers; then
  cases+=(
    "read-after-free-large-purged:SIGSEGV"
    "read-after-free-small-purged:SIGSEGV"
    "small-underflow-first-block:SIGSEGV"
  )
else
  echo "skip read-after-free-*-purged: the kernel has no guard markers"
fi
if [ "$secure" = true ]; then
  cases+=(
    "small-overflow-1:^mapalloc: heap overflow: canary after the end of block broken, block 0x"
    "small-overflow-class-size:^mapalloc: heap overflow: canary after the end of block broken, block 0x"
    "small-overflow-20:^mapalloc: heap overflow: canary after the end of block broken, block 0x"
    "small-overflow-realloc:^mapalloc: heap overflow: canary after the end of block broken, block 0x"
    "small-underflow-1:^mapalloc: heap underflow \\(or overflow of the block before it\\) at block 0x"
    "small-underflow-word:^mapalloc: heap underflow \\(or overflow of the block before it\\) at block 0x"
    "small-underflow-freed-neighbour:^mapalloc: heap underflow \\(or overflow of the block before it\\) at block 0x"
    "write-after-free-small:^mapalloc: heap corruption: free block overwritten"
    "write-after-free-small-first-byte:^mapalloc: heap corruption: free block overwritten"
    "write-after-free-small-last-byte:^mapalloc: heap corruption: free block overwritten"
    "small-overflow-1-at-exit:^mapalloc: heap overflow: canary after the end of block broken, block 0x"
    "small-underflow-1-at-exit:^mapalloc: heap (overflow: canary after the end of block broken, block|corruption: free block overwritten .*at) 0x"
    "write-after-free-small-at-exit:^mapalloc: heap corruption: free block overwritten"
    "write-after-free-large-at-exit:^mapalloc: write after free into large block 0x"
    "large-underflow-1-at-exit:^mapalloc: heap underflow before the start of large block 0x"
  )
fi
for entry in "${cases[@]}"; do
  name=${entry%%:*} want=${entry#*:}
  err=$(LD_PRELOAD=$shim timeout 20 "$prog" "$name" 2>&1 >/dev/null)
  rc=$?
  if [ "$want" = SIGSEGV ]; then
    ok=$([ $rc -eq 139 ] && echo yes || echo no)
  else
    ok=$([ $rc -eq 134 ] && [ "$(echo "$err" | grep -c .)" -eq 1 ] && echo "$err" | grep -Eq "$want" && echo yes || echo no)
  fi
  if [ "$ok" = yes ]; then
    echo "ok   $name"
  else
    echo "FAIL $name: exit $rc, stderr: $err (wanted $want)"
    fail=1
  fi
done
exit $fail
