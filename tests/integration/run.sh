#!/bin/bash
# Integration tests: real programs run under the LD_PRELOAD shim.
#
#   tests/integration/run.sh <path-to-libmapalloc.so> [test names...]
#
# Each test is a workload script NAME.sh beside this file. The driver runs
#   NAME.sh setup   once, without the shim, untimed (generates inputs; optional)
#   NAME.sh run     twice, timed: plainly, then with LD_PRELOAD=<shim> on the
#                   script's own bash and so on every program it starts
# each under `timeout`, and compares the two runs' stdout (which the workloads
# keep deterministic). It prints per test
#   PASS name (ratio x.xx)      shim wall time / plain wall time, informational
#   FAIL name: reason
# and lines "info: ..." that a workload wrote to its stderr; then a final line
# "N passed, N failed"; exit status 1 if anything failed.
#
# Environment:
#   MAPALLOC_IT_TIMEOUT    seconds per run (default 120)
#   MAPALLOC_IT_FORK_EXEC  the built fork_exec helper (meson passes it); when
#                          unset the driver compiles fork_exec.cpp with g++
#   MAPALLOC_IT_KEEP=1     keep the work directory even when everything passed
#   MAPALLOC_IT_OPTIONS    MAPALLOC_OPTIONS for the shim's run (default: none)
#   TMPDIR                 where the work directory goes (default /tmp)
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

all_tests=(bash python perl git gxx sqlite redis sort fork_exec threads node java)

if (($# < 1)); then
  echo "usage: $0 <path-to-libmapalloc.so> [test names...]" >&2
  echo "tests: ${all_tests[*]}" >&2
  exit 2
fi
shim=$1
shift
tests=("$@")
((${#tests[@]})) || tests=("${all_tests[@]}")
run_timeout=${MAPALLOC_IT_TIMEOUT:-120}

# Runtime options would change what the tests see (but MAPALLOC_IT_OPTIONS,
# given to the shim's run); the workloads set their own preloads.
shim_options=${MAPALLOC_IT_OPTIONS:-}
unset MAPALLOC_OPTIONS
unset LD_PRELOAD

passed=0
failed=0
pass() { echo "PASS $1 (ratio $2)"; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }

finish() {
  echo "$passed passed, $failed failed"
  if ((failed)) || [[ "${MAPALLOC_IT_KEEP:-0}" == 1 ]]; then
    echo "logs kept in $work"
  else
    rm -rf "$work"
  fi
  ((failed == 0))
  exit
}

work=$(mktemp -d "${TMPDIR:-/tmp}/mapalloc-it.XXXXXX")

for t in "${tests[@]}"; do
  if [[ ! -f "$here/$t.sh" ]]; then
    fail "$t" "no such test (have: ${all_tests[*]})"
  fi
done

# --- preflight: the shim must exist and really be loaded ----------------------
if [[ ! -f "$shim" ]]; then
  for t in "${tests[@]}"; do [[ -f "$here/$t.sh" ]] && fail "$t" "shim $shim does not exist"; done
  finish
fi
shim=$(realpath "$shim")
# ld.so only warns and goes on without a preload it cannot load: make sure the
# shim is in the address space of a preloaded process.
if ! maps=$(LD_PRELOAD=$shim timeout 20 cat /proc/self/maps 2>"$work/preflight.err") ||
   ! grep -qF "$shim" <<<"$maps"; then
  reason="the shim is not loaded by LD_PRELOAD: $(head -c 300 "$work/preflight.err" | tr '\n' ' ')"
  for t in "${tests[@]}"; do [[ -f "$here/$t.sh" ]] && fail "$t" "$reason"; done
  finish
fi

# The fork/thread helper: built by meson, or compiled here.
needs_helper=0
for t in "${tests[@]}"; do [[ "$t" == fork_exec || "$t" == threads ]] && needs_helper=1; done
if ((needs_helper)) && [[ -z "${MAPALLOC_IT_FORK_EXEC:-}" ]]; then
  mkdir -p "$work/bin"
  if g++ -std=c++20 -O2 -pthread -o "$work/bin/fork_exec" "$here/fork_exec.cpp" 2>"$work/bin/build.log"; then
    MAPALLOC_IT_FORK_EXEC=$work/bin/fork_exec
  else
    MAPALLOC_IT_FORK_EXEC=/nonexistent/fork_exec  # the tests fail with "missing"
    echo "fork_exec.cpp did not compile: see $work/bin/build.log" >&2
  fi
fi
export MAPALLOC_IT_FORK_EXEC

now() { echo "$EPOCHREALTIME"; }

# describe_rc RC: a words-for-humans form of an exit status.
describe_rc() {
  local rc=$1
  case $rc in
    124) echo "timed out after ${run_timeout}s" ;;
    137) echo "killed (SIGKILL) after not stopping on timeout" ;;
    *)
      if ((rc > 128)); then
        echo "exit status $rc: signal $((rc - 128)) (SIG$(kill -l $((rc - 128)) 2>/dev/null || echo '?'))"
      else
        echo "exit status $rc"
      fi ;;
  esac
}

# descendants PID: the processes below PID, depth first.
descendants() {
  local p
  for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    echo "$p"
    descendants "$p"
  done
}

# dump_stacks PID DIR: the stacks of every thread of the processes below PID
# (a hung run), one file DIR/hang-<pid>.txt each, by gdb when installed.
dump_stacks() {
  local p n=0
  command -v gdb >/dev/null || return 0
  for p in $(descendants "$1"); do
    ((n++ < 8)) || break
    {
      echo "== pid $p: $(tr '\0' ' ' </proc/"$p"/cmdline 2>/dev/null)"
      timeout 60 gdb -p "$p" -batch -ex 'set pagination off' -ex 'thread apply all bt' 2>&1 |
        grep -E '^(Thread|#[0-9])'
    } >"$2/hang-$p.txt" 2>&1
  done
}

# run_one TEST MODE: runs "TEST.sh run" in $work/TEST/MODE; sets rc and secs.
# At the time limit a watchdog records the stacks of what is still running
# (hang-*.txt) and stops it; rc is then 124.
run_one() {
  local t=$1 mode=$2 dir=$work/$1/$2 start end job wd
  mkdir -p "$dir"
  local pre=()
  [[ "$mode" == shim ]] && pre=(env "LD_PRELOAD=$shim" "MAPALLOC_OPTIONS=$shim_options")
  start=$(now)
  # Core dumps (core_pattern permitting) land in the run directory. The outer
  # timeout is a backstop behind the watchdog.
  (cd "$dir" && ulimit -c unlimited 2>/dev/null
   exec timeout -k 10 "$((run_timeout + 90))" "${pre[@]}" env MAPALLOC_IT_SHARED="$work/$t/shared" \
     MAPALLOC_IT_MODE="$mode" bash "$here/$t.sh" run >"$work/$t/$mode.out" 2>"$work/$t/$mode.err" </dev/null) &
  job=$!
  (
    trap 'kill "$sp" 2>/dev/null; exit 0' TERM
    sleep "$run_timeout" &
    sp=$!
    wait "$sp"
    trap - TERM
    touch "$dir/.timed-out"
    dump_stacks "$job" "$dir"
    kill -TERM "$job" 2>/dev/null  # timeout passes it on to the whole group
  ) </dev/null >/dev/null 2>&1 &
  wd=$!
  wait "$job"
  rc=$?
  end=$(now)
  kill -TERM "$wd" 2>/dev/null
  wait "$wd" 2>/dev/null
  [[ -e "$dir/.timed-out" ]] && rc=124
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
}

# hangs_of DIR: the stacks a watchdog recorded, shortened, on stdout.
hangs_of() {
  local f
  for f in "$1"/hang-*.txt; do
    [[ -f "$f" ]] || continue
    echo "    stacks: $f"
    awk '/^== /{print; next} /^Thread/{print; k=0; next} /^#/{ if (k++ < 10) print }' "$f" | head -n 60 | sed 's/^/      /'
  done
}

# cores_of DIR: core files under DIR with the backtrace of the crashing thread
# (gdb, when installed), indented, on stdout.
cores_of() {
  local core exe
  while IFS= read -r core; do
    echo "    core dump: $core"
    command -v gdb >/dev/null || continue
    exe=$(gdb -batch -c "$core" 2>/dev/null | sed -n "s/^Core was generated by \`\([^ ']*\).*/\1/p")
    [[ -n "$exe" && "$exe" != /* ]] && exe=$(command -v "$exe" || true)
    [[ -n "$exe" && -f "$exe" ]] || continue
    timeout 60 gdb -batch -ex 'set pagination off' -ex bt "$exe" "$core" 2>/dev/null |
      grep -E '^#[0-9]' | awk '!seen[$0]++' | head -n 25 | sed 's/^/      /'
  done < <(find "$1" -type f \( -name core -o -name 'core.[0-9]*' \) 2>/dev/null | head -n 3)
}

for t in "${tests[@]}"; do
  [[ -f "$here/$t.sh" ]] || continue
  mkdir -p "$work/$t/shared"
  # Setup: untimed, never under the shim.
  (cd "$work/$t/shared" && exec timeout -k 10 "$run_timeout" env MAPALLOC_IT_SHARED="$work/$t/shared" \
     bash "$here/$t.sh" setup >"$work/$t/setup.out" 2>"$work/$t/setup.err" </dev/null)
  rc=$?
  if ((rc != 0)); then
    fail "$t" "setup failed ($(describe_rc $rc)): $(tail -n 3 "$work/$t/setup.err" | tr '\n' ' ')"
    continue
  fi

  run_one "$t" plain
  plain_rc=$rc plain_secs=$secs
  if ((plain_rc != 0)); then
    fail "$t" "plain run (without the shim) failed, $(describe_rc $plain_rc): $(tail -n 3 "$work/$t/plain.err" | tr '\n' ' ')"
    hangs_of "$work/$t/plain"
    continue
  fi
  run_one "$t" shim
  shim_rc=$rc shim_secs=$secs
  ratio=$(awk -v a="$plain_secs" -v b="$shim_secs" 'BEGIN { if (a > 0) printf "%.2f", b / a; else print "n/a" }')
  timing="plain ${plain_secs}s, shim ${shim_secs}s"

  for mode in plain shim; do
    grep -h '^info:' "$work/$t/$mode.err" 2>/dev/null | sed "s/^/  [$t $mode] /"
  done

  if ((shim_rc != 0)); then
    fail "$t" "shim run failed, $(describe_rc $shim_rc) ($timing); stderr: $(grep -v '^info:' "$work/$t/shim.err" | tail -n 5 | tr '\n' ' ')"
    cores_of "$work/$t/shim"
    hangs_of "$work/$t/shim"
    continue
  fi
  if grep -q 'ERROR: ld.so' "$work/$t/shim.err"; then
    fail "$t" "ld.so could not preload the shim: $(grep -m1 'ERROR: ld.so' "$work/$t/shim.err")"
    continue
  fi
  if ! cmp -s "$work/$t/plain.out" "$work/$t/shim.out"; then
    fail "$t" "stdout under the shim differs from the plain run ($timing); diff plain shim:"
    diff "$work/$t/plain.out" "$work/$t/shim.out" | head -n 20 | sed 's/^/    /'
    grep -v '^info:' "$work/$t/shim.err" | tail -n 5 | sed 's/^/    stderr: /'
    cores_of "$work/$t/shim"
    continue
  fi
  if [[ ! -s "$work/$t/plain.out" ]]; then
    fail "$t" "the workload printed nothing"
    continue
  fi
  echo "  [$t] $timing"
  pass "$t" "$ratio"
done

finish
