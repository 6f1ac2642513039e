#!/bin/bash
# Integration workload: node (node_workload.js: maps, JSON, zlib, Buffers,
# crypto, worker threads).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case ${1:-} in
setup) command -v node >/dev/null || { echo "missing: node" >&2; exit 77; } ;;
run) node "$here/node_workload.js" ;;
esac
