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
  "large-overflow-odd:^mapalloc: heap overflow past the end of large block 0x"
  "large-overflow-aligned:^mapalloc: heap overflow past the end of large block 0x"
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
    "small-underflow-first-block-after-others:SIGSEGV"
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
    "medium-underflow-word-20000:^mapalloc: heap underflow \\(or overflow of the block before it\\) at block 0x"
    "medium-underflow-word-100000:^mapalloc: heap underflow \\(or overflow of the block before it\\) at block 0x"
    "thread-underflow-freed-after-exit:^mapalloc: heap underflow \\(or overflow of the block before it\\) at block 0x"
    "thread-overflow-at-exit:^mapalloc: heap overflow: canary after the end of block broken, block 0x"
    "write-after-free-small:^mapalloc: heap corruption: free block overwritten"
    "write-after-free-small-first-byte:^mapalloc: heap corruption: free block overwritten"
    "write-after-free-small-last-byte:^mapalloc: heap corruption: free block overwritten"
    "small-overflow-1-at-exit:^mapalloc: heap overflow: canary after the end of block broken, block 0x"
    "small-overflow-1-at-exit-forked-child:^mapalloc: heap overflow: canary after the end of block broken, block 0x"
    "small-overflow-1-at-exit-inherited-block:^mapalloc: heap overflow: canary after the end of block broken, block 0x"
    "small-underflow-1-at-exit:^mapalloc: heap (overflow: canary after the end of block broken, block|corruption: free block overwritten .*at) 0x"
    "write-after-free-small-at-exit:^mapalloc: heap corruption: free block overwritten"
    "write-after-free-large-at-exit:^mapalloc: write after free into large block 0x"
    "large-underflow-1-at-exit:^mapalloc: heap underflow before the start of large block 0x"
  )
fi
# check <MAPALLOC_OPTIONS> <case:expected>...: "caught" expects either way of
# dying, the one-line report or the fault.
check() {
  local options=$1 entry name want err rc ok
  shift
  for entry in "$@"; do
    name=${entry%%:*} want=${entry#*:}
    err=$(MAPALLOC_OPTIONS=$options LD_PRELOAD=$shim timeout 20 "$prog" "$name" 2>&1 >/dev/null)
    rc=$?
    one_report=$([ $rc -eq 134 ] && [ "$(echo "$err" | grep -c .)" -eq 1 ] && echo yes || echo no)
    case $want in
      SIGSEGV) ok=$([ $rc -eq 139 ] && echo yes || echo no) ;;
      caught) ok=$({ [ $rc -eq 139 ] || { [ $one_report = yes ] && echo "$err" | grep -q "^mapalloc: "; }; } && echo yes || echo no) ;;
      *) ok=$([ $one_report = yes ] && echo "$err" | grep -Eq "$want" && echo yes || echo no) ;;
    esac
    if [ "$ok" = yes ]; then
      echo "ok   ${options:-default} $name"
    else
      echo "FAIL ${options:-default} $name: exit $rc, stderr: $err (wanted $want)"
      fail=1
    fi
  done
}

# The checks on the arena's blocks, with no block sampled: each case its
# own way.
check sample=0 "${cases[@]}"

# The default options: a short program's first blocks are guarded samples
# (sample.h), so most of these cases meet a sample's checks rather than the
# ones above; every case is caught one way or the other (but the two whose
# setup needs an arena block). A sample also catches what no other check
# can: reads after free, and writes into the middle of a freed block.
default_cases=()
for entry in "${cases[@]}"; do
  name=${entry%%:*}
  [[ $name == small-underflow-first-block* || $name == read-after-free-small-purged ]] && continue
  default_cases+=("$name:caught")
done
if [ "$secure" = true ]; then
  default_cases+=(
    "read-after-free-small:SIGSEGV"
    "write-after-free-small-middle:SIGSEGV"
    "read-after-free-medium:SIGSEGV"
    "small-overflow-1-faults:SIGSEGV"
    "read-after-free-large:SIGSEGV"
    "write-after-free-large-middle:SIGSEGV"
    "read-after-free-small-forked-child:SIGSEGV"
    "read-after-free-aligned-8k:SIGSEGV"
    "read-after-free-aligned-32k:SIGSEGV"
    "read-after-free-small-100k:SIGSEGV"
    "write-after-free-small-100k:SIGSEGV"
    "read-after-free-small-100k-size-reused:SIGSEGV"
    "read-after-free-aligned-64k:SIGSEGV"
    "small-overflow-100k-faults:SIGSEGV"
    "small-overread-40000-faults:SIGSEGV"
  )
fi
check "" "${default_cases[@]}"
if [ "$secure" = true ]; then
  # The region's slots are guarded a chunk at a time, sized by the samples
  # left (sample.cpp): the 17th to 20th samples are in the second chunk, of 4
  # slots.
  check sample=20 "small-overflow-sample-17:SIGSEGV" "small-underflow-sample-20:SIGSEGV"
fi
exit $fail
