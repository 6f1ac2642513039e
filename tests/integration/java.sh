#!/bin/bash
# Integration workload: the JVM (Workload.java, run from source: the launcher
# compiles it in memory with javac's classes, then runs it).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case ${1:-} in
setup) command -v java >/dev/null || { echo "missing: java" >&2; exit 77; } ;;
run) java -Xshare:off "$here/Workload.java" ;;
esac
