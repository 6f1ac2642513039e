#!/bin/bash
# Integration workload: fork_exec fork (threads allocate while the main thread
# forks; children allocate, free, exit or exec /bin/true). See fork_exec.cpp.
set -euo pipefail
helper=${MAPALLOC_IT_FORK_EXEC:-}
case ${1:-} in
setup) [[ -x "$helper" ]] || { echo "missing: the fork_exec helper (MAPALLOC_IT_FORK_EXEC='$helper')" >&2; exit 77; } ;;
run) "$helper" fork "${MAPALLOC_IT_FORKS:-150}" ;;
esac
