#!/bin/bash
# Integration workload: python3 (python_workload.py: threads, dicts, json,
# regexes, sorting) and standard test modules run with PYTHONMALLOC=malloc so
# that every object allocation goes through malloc.
# "setup" picks an interpreter that has the standard `test` package (Debian:
# libpython3.11-testsuite); without one only python_workload.py runs.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
shared=${MAPALLOC_IT_SHARED:?}
modules=(test_json test_dict test_set test_list test_re test_collections test_heapq test_sort
         test_deque test_thread test_unicode test_pickle test_itertools test_hashlib)

case ${1:-} in
setup)
  command -v python3 >/dev/null || { echo "missing: python3" >&2; exit 77; }
  py=$(python3 -c 'import sys; print(sys.executable)')
  for cand in "$py" /usr/bin/python3; do
    if [[ -x "$cand" ]] && "$cand" -c 'import test.test_json, test.test_dict' 2>/dev/null; then
      echo "$cand" >"$shared/python"
      echo "$cand" >"$shared/python-tests"
      exit 0
    fi
  done
  echo "$py" >"$shared/python"
  ;;
run)
  py=$(cat "$shared/python")
  "$py" "$here/python_workload.py"
  if [[ -f "$shared/python-tests" ]]; then
    rc=0
    PYTHONMALLOC=malloc "$py" -m unittest "${modules[@]/#/test.}" >unittest.log 2>&1 || rc=$?
    echo "unittest (PYTHONMALLOC=malloc) exit $rc: $(grep -E '^Ran [0-9]+ tests' unittest.log | sed 's/ in .*//')" \
      "$(grep -E '^(OK|FAILED)' unittest.log)"
    if ((rc != 0)); then grep -E '^(FAIL|ERROR):' unittest.log | head -n 20 >&2; fi
    echo "info: $(grep -E '^Ran [0-9]+ tests' unittest.log) with $py" >&2
  else
    echo "unittest: no python with the standard test package"
    echo "info: no python3 with the standard test package (libpython3.11-testsuite): stdlib tests skipped" >&2
  fi
  ;;
esac
