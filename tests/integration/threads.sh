#!/bin/bash
# Integration workload: fork_exec threads (100,000 short-lived threads, each
# allocating; resident memory must stay flat). See fork_exec.cpp.
set -euo pipefail
helper=${MAPALLOC_IT_FORK_EXEC:-}
case ${1:-} in
setup) [[ -x "$helper" ]] || { echo "missing: the fork_exec helper (MAPALLOC_IT_FORK_EXEC='$helper')" >&2; exit 77; } ;;
run) "$helper" threads "${MAPALLOC_IT_THREADS:-100000}" ;;
esac
