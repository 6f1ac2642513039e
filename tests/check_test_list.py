#!/usr/bin/env python3
# check_test_list.py <gtest binary> <Suite.Case>...: fails, naming them, when
# the binary has test cases that the given list (meson.build's) lacks.
import subprocess, sys

binary, listed = sys.argv[1], set(sys.argv[2:])
out = subprocess.run([binary, '--gtest_list_tests'], check=True, capture_output=True, text=True).stdout
suite, cases = '', set()
for line in out.splitlines():
    if not line.strip() or line.startswith('#'):
        continue
    if not line.startswith(' '):
        suite = line.split()[0]
    else:
        cases.add(suite + line.split()[0])
missing = sorted(cases - listed)
for case in missing:
    print('not in tests/meson.build:', case)
sys.exit(1 if missing else 0)
