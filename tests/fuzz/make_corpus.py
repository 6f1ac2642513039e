#!/usr/bin/env python3
"""Writes the hand-made seed inputs of alloc_fuzz into tests/fuzz/corpus/.

The encoding is the one documented at the top of alloc_fuzz.cpp. Run it again
after changing the encoding there: python3 tests/fuzz/make_corpus.py
"""
import os

MALLOC, CALLOC, REALLOC, REALLOC0 = 0, 6, 8, 12
MEMALIGN, ALIGNED_ALLOC, POSIX_MEMALIGN = 13, 14, 15
FREE, FREE_SIZED, QUERY, SCRIBBLE, VERIFY = 16, 19, 20, 22, 23
REALLOCARRAY, PAGE_ALIGNED, BULK_ALLOC, BULK_FREE = 24, 25, 26, 27
COLLECT, THRESHOLD, STATS, ERRORS = 28, 29, 30, 31


def size(n):
    """Exactly n bytes (0 .. 300 KiB)."""
    if n <= 128 * 1024:
        return [11, n & 255, n >> 8 & 255, n >> 16 & 255]
    v = n - (128 * 1024 + 1)
    return [13, v & 255, v >> 8 & 255, v >> 16 & 255]


def align(log):
    """An alignment of 2**log (0 .. 20)."""
    return [log - 4] if 4 <= log <= 12 else [128 + (log - 128) % 21]


def malloc(slot, n): return [MALLOC, slot] + size(n)
def calloc(slot, count, n): return [CALLOC, slot, count] + size(n)
def realloc(slot, n): return [REALLOC, slot] + size(n)
def free(slot): return [FREE, slot]
def query(slot, a=0x31, b=1): return [QUERY, slot, a, b]


SIZES = [0, 1, 16, 17, 100, 128, 129, 1000, 1024, 1025, 5000, 65536, 131072, 131073, 200000, 300000]

inputs = {}

prog = []
for i, n in enumerate(SIZES):
    prog += malloc(i, n) + query(i, i * 16 + 1, i) + [SCRIBBLE, i]
prog += [VERIFY, 255, STATS]
for i in range(len(SIZES)):
    prog += free(i) if i % 2 else [FREE_SIZED, i]
prog += [STATS]
inputs['basic'] = prog

prog = malloc(0, 100)
for n in [200, 1000, 10000, 100000, 140000, 250000, 300000, 299000, 150000, 50000, 10, 129000, 131073]:
    prog += realloc(0, n) + query(0)
prog += [REALLOC0, 0, REALLOC0, 1] + realloc(2, 40) + [REALLOCARRAY, 2, 4] + size(4000)
prog += [REALLOCARRAY, 2, 0] + size(0)
inputs['realloc'] = prog

prog = []
slot = 0
for log in range(4, 21):
    for n, op in [(1, MEMALIGN), (3000, ALIGNED_ALLOC), (140000, POSIX_MEMALIGN)]:
        prog += [op, slot % 64] + align(log) + size(n) + query(slot % 64)
        slot += 1
prog += [PAGE_ALIGNED, 60, 0] + size(5000) + [PAGE_ALIGNED, 61, 1] + size(1) + [PAGE_ALIGNED, 62, 1] + size(0)
for s in range(slot):
    prog += [FREE_SIZED, s % 64]
inputs['aligned'] = prog

prog = [BULK_ALLOC, 255] + size(16) + [BULK_FREE, 0x01, STATS]
prog += [BULK_ALLOC, 63] + size(64) + [BULK_ALLOC, 15] + size(1024) + [VERIFY, 255]
prog += [BULK_FREE, 0x10, BULK_FREE, 0x20 | 0x40, COLLECT, STATS]
prog += [BULK_ALLOC, 7] + size(4096) + malloc(5, 8192) + [BULK_FREE, 0x33, COLLECT]
inputs['bulk'] = prog

prog = [THRESHOLD, 0] + malloc(0, 100000) + realloc(0, 70000) + [THRESHOLD, 15] + malloc(1, 300000)
prog += realloc(1, 200000) + realloc(0, 260000) + [THRESHOLD, 240, THRESHOLD, 241, THRESHOLD, 1]
prog += realloc(1, 70000) + realloc(0, 131072) + [COLLECT, STATS]
for k in range(14):
    prog += [ERRORS, k, 0] + [ERRORS, k | 0x80, 1]
inputs['threshold_errors'] = prog

prog = malloc(0, 200000) + free(0) + calloc(0, 1, 200000) + malloc(1, 150000) + free(1)
prog += calloc(1, 16, 160000) + calloc(2, 0, 100) + calloc(3, 3, 0) + calloc(4, 7, 1000)
prog += malloc(5, 4000) + free(5) + calloc(5, 2, 4000) + [COLLECT] + calloc(6, 1, 300000)
inputs['calloc'] = prog

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'corpus')
os.makedirs(out, exist_ok=True)
for name, prog in inputs.items():
    with open(os.path.join(out, name), 'wb') as f:
        f.write(bytes(prog))
