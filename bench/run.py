#!/usr/bin/env python3
"""Run the mapalloc benchmark suite under several allocators and compare them.

Builds the benchmarks (and the mapalloc shim) in build-bench/, runs every
workload under every allocator, interleaved round by round, then the Google
Benchmark microbenchmarks, and writes results/<timestamp>/ (results.md,
results.tsv, runs.tsv, PNG plots, logs/) plus a results/latest symlink.
See bench/README.md.
"""
import argparse
import collections
import datetime
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(REPO, 'build-bench')
# mapalloc with its protections off (-Dsecure=false, guard=0): the cost of
# the defaults, measured side by side.
BUILD_UNPROTECTED = os.path.join(REPO, 'build-bench-unprotected')
LIBDIR = '/usr/lib/' + (sysconfig.get_config_var('MULTIARCH') or 'x86_64-linux-gnu')

# name -> LD_PRELOAD library (None: the C library's own malloc)
ALLOCATORS = {
    'glibc': None,
    'mapalloc': os.path.join(BUILD, 'preload', 'libmapalloc.so'),
    'mapalloc-unprotected': os.path.join(BUILD_UNPROTECTED, 'preload', 'libmapalloc.so'),
    'jemalloc': LIBDIR + '/libjemalloc.so.2',
    'mimalloc': LIBDIR + '/libmimalloc.so.2',
    'tcmalloc': LIBDIR + '/libtcmalloc_minimal.so.4',
}
# Extra environment per LD_PRELOAD library.
PRELOAD_ENV = {ALLOCATORS['mapalloc-unprotected']: ['MAPALLOC_OPTIONS=guard=0']}
PACKAGES = {'jemalloc': 'libjemalloc2', 'mimalloc': 'libmimalloc2.0', 'tcmalloc': 'libtcmalloc-minimal4'}

# name -> (full-size arguments, --quick arguments); {t} is --threads, {p} half of it
# (at least 1): prodcons runs a producer and a consumer per pair, and with
# more threads than CPUs its times depended on the scheduler (on 2 CPUs, two
# pairs ran some rounds twice as long as others, under every allocator). Its
# 6M blocks take about 0.3 s: with 2M (0.1 s), whole rounds of every
# allocator ran 3x slower now and then, and took the medians with them.
WORKLOADS = {
    'server':     ('ops=10000000 threads={t}', 'ops=1000000 threads={t}'),
    'prodcons':   ('blocks=6000000 pairs={p}', 'blocks=200000 pairs={p}'),
    'churn':      ('units=12000', 'units=1200'),
    'frag':       ('blocks=150000 phases=12', 'blocks=30000 phases=8'),
    'large':      ('ops=20000', 'ops=2000'),
    'realloc':    ('appends=4000000', 'appends=400000'),
    'falseshare': ('rounds=2000 threads={t}', 'rounds=200 threads={t}'),
    'spawn':      ('procs=300', 'procs=30'),
    'forkexit':   ('blocks=300000 procs=300', 'blocks=100000 procs=30'),
}
MICRO_FAMILIES = ['MallocFree', 'Batch', 'Calloc', 'ReallocGrow', 'Aligned', 'CrossThreadFree', 'ThreadScaling']


def log(msg=''):
    print(msg, flush=True)


def die(msg):
    log('error: ' + msg)
    sys.exit(2)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='small sizes, few rounds: about two minutes in all')
    p.add_argument('--workloads', help='comma list (default: all): ' + ','.join(WORKLOADS))
    p.add_argument('--allocators', help='comma list (default: all): ' + ','.join(ALLOCATORS))
    p.add_argument('--rounds', type=int, help='runs of each workload per allocator (default 5, quick 3)')
    p.add_argument('--threads', type=int, default=os.cpu_count(), help='threads for threaded workloads and '
                   'the top of the micro thread-scaling range (default: CPUs)')
    p.add_argument('--ref', default='glibc', help='allocator the ratios are relative to (default glibc)')
    p.add_argument('--timeout', type=float, help='seconds per run before it counts as FAILED (default 120, quick 30)')
    p.add_argument('--no-micro', action='store_true', help='skip the Google Benchmark microbenchmarks')
    p.add_argument('--out', default=os.path.join(REPO, 'results'), help='results directory (default: results/)')
    a = p.parse_args()
    a.workloads = a.workloads.split(',') if a.workloads else list(WORKLOADS)
    a.allocators = a.allocators.split(',') if a.allocators else list(ALLOCATORS)
    for w in a.workloads:
        if w not in WORKLOADS:
            die(f'unknown workload {w!r}; known: {", ".join(WORKLOADS)}')
    for x in a.allocators:
        if x not in ALLOCATORS:
            die(f'unknown allocator {x!r}; known: {", ".join(ALLOCATORS)}')
    if a.ref not in a.allocators:
        die(f'reference allocator {a.ref!r} is not among --allocators')
    a.rounds = a.rounds or (3 if a.quick else 5)
    a.timeout = a.timeout or (30 if a.quick else 120)
    return a


# ---------------------------------------------------------------- setup

def ensure_packages(args):
    """apt-get install whatever is missing (apt-get update once, only then)."""
    need = []
    for cmd, pkg in [('meson', 'meson'), ('ninja', 'ninja-build'), ('g++', 'g++'), ('gnuplot', 'gnuplot-nox'),
                     ('/usr/bin/time', 'time'), ('git', 'git'), ('pkg-config', 'pkg-config')]:
        if not shutil.which(cmd):
            need.append(pkg)
    if not args.no_micro and not os.path.exists('/usr/include/benchmark/benchmark.h'):
        need.append('libbenchmark-dev')
    for x in args.allocators:
        if x in PACKAGES and not os.path.exists(ALLOCATORS[x]):
            need.append(PACKAGES[x])
    if not need:
        return
    log(f'== installing missing packages: {" ".join(need)}')
    if os.geteuid() != 0:
        die(f'not root; run: sudo apt-get install -y {" ".join(need)}')
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    subprocess.run(['apt-get', 'update'], check=True, env=env)
    subprocess.run(['apt-get', 'install', '-y'] + need, check=True, env=env)


def build(args):
    if not os.path.exists(os.path.join(BUILD, 'build.ninja')):
        log('== meson setup build-bench (release, tests off)')
        r = subprocess.run(['meson', 'setup', BUILD, '--buildtype=release', '-Dtests=false', '-Dbench=true'], cwd=REPO)
        if r.returncode:
            die('meson setup failed')
    targets = ['bench/wl-' + w for w in args.workloads]
    if not args.no_micro:
        targets.append('bench/mapalloc-micro')
    log('== building benchmarks')
    if subprocess.run(['ninja', '-C', BUILD] + targets).returncode:
        die('building the benchmarks failed')
    if 'mapalloc' in args.allocators:
        log('== building the mapalloc shim')
        if subprocess.run(['ninja', '-C', BUILD, 'preload/libmapalloc.so']).returncode:
            others = ','.join(x for x in args.allocators if x != 'mapalloc')
            die(f'the mapalloc shim failed to build (see above). To compare the others meanwhile: '
                f'bench/run --allocators {others}')
    else:
        log('== mapalloc not in --allocators: shim not built, mapalloc skipped')
    if 'mapalloc-unprotected' in args.allocators:
        log('== building the unprotected mapalloc shim (-Dsecure=false)')
        if not os.path.exists(os.path.join(BUILD_UNPROTECTED, 'build.ninja')):
            if subprocess.run(['meson', 'setup', BUILD_UNPROTECTED, '--buildtype=release', '-Dsecure=false',
                               '-Dtests=false', '-Dbench=false'], cwd=REPO).returncode:
                die('meson setup of the unprotected build failed')
        if subprocess.run(['ninja', '-C', BUILD_UNPROTECTED, 'preload/libmapalloc.so']).returncode:
            die('the unprotected mapalloc shim failed to build')


# ---------------------------------------------------------------- running

Run = collections.namedtuple('Run', 'status wall cpu rss_kib minflt checksum')


def run_one(cmd, preload, timeout, log_base, want_checksum=True):
    """Run cmd under preload: wall and CPU time (s), peak RSS (KiB), status and the checksum line.

    The peak RSS comes from GNU time: a child forked straight from this Python
    process would report Python's own RSS as its floor (Linux counts the
    pre-exec memory in ru_maxrss). The CPU time (user + system, to the
    microsecond: GNU time prints hundredths) is wait4's for GNU time, which
    includes the command it waited for (and GNU time's and env's own, about
    1 ms)."""
    env = dict(os.environ)
    env.pop('LD_PRELOAD', None)
    timefile = log_base + '.time'
    full = ['/usr/bin/time', '-o', timefile, '-f', 'maxrss_kib %M\nminflt %R', '/usr/bin/env']
    full += ([f'LD_PRELOAD={preload}'] if preload else []) + PRELOAD_ENV.get(preload, []) + cmd
    with open(log_base + '.out', 'w') as out, open(log_base + '.err', 'w') as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdout=out, stderr=err, env=env, start_new_session=True)
        timed_out = []  # Popen.wait(timeout) polls every 50 ms: wait blocking, kill from a timer

        def kill():
            timed_out.append(True)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # exited meanwhile
                pass
        timer = threading.Timer(timeout, kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        # (What os.waitstatus_to_exitcode does, which needs Python 3.9.)
        proc.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        cpu = usage.ru_utime + usage.ru_stime
        timer.cancel()
        timer.join()

    rss, minflt, sig, checksum = 0, 0, None, None
    with open(timefile) as f:
        for line in f:
            if line.startswith('maxrss_kib '):
                rss = int(line.split()[1])
            elif line.startswith('minflt '):
                minflt = int(line.split()[1])
            elif line.startswith('Command terminated by signal '):
                sig = int(line.split()[-1])
    with open(log_base + '.out') as f:
        for line in f:
            if line.startswith('checksum '):
                checksum = line.split()[1]
    if timed_out:
        st = f'TIMEOUT>{timeout:g}s'
    elif sig:
        st = signal.Signals(sig).name
    elif proc.returncode:
        st = f'exit {proc.returncode}'
    elif checksum is None and want_checksum:
        st = 'no checksum'
    else:
        st = 'ok'
    return Run(st, wall, cpu, rss, minflt, checksum)


def rotated(allocs, rnd):
    """The allocators in round rnd's order: who goes first rotates, so drift spreads over all of them."""
    return allocs[rnd % len(allocs):] + allocs[:rnd % len(allocs)]


def run_workloads(args, logdir):
    bindir = os.path.join(BUILD, 'bench')
    runs = collections.defaultdict(list)  # (workload, allocator) -> [Run]
    first_sum = {}
    allocs = args.allocators
    total = args.rounds * len(args.workloads) * len(allocs)
    n = 0
    for rnd in range(args.rounds):
        order = rotated(allocs, rnd)
        for w in args.workloads:
            wargs = WORKLOADS[w][1 if args.quick else 0].format(t=args.threads, p=max(1, args.threads // 2)).split()
            for x in order:
                n += 1
                r = run_one([os.path.join(bindir, 'wl-' + w)] + wargs, ALLOCATORS[x], args.timeout,
                            os.path.join(logdir, f'{w}.{x}.r{rnd + 1}'))
                runs[w, x].append(r)
                note = '' if r.status == 'ok' else '  FAILED: ' + r.status
                if r.status == 'ok':
                    first_sum.setdefault(w, r.checksum)
                    if r.checksum != first_sum[w]:
                        note = f'  !!! CHECKSUM MISMATCH {r.checksum} != {first_sum[w]}'
                log(f'[{n:3}/{total}] round {rnd + 1}/{args.rounds}  {w:<10} {x:<9} '
                    f'{r.wall:8.3f} s {r.cpu:8.3f} s CPU {r.rss_kib / 1024:9.1f} MiB {r.minflt:9} faults{note}')
    return runs


def run_micro(args, logdir):
    """Google Benchmark under each allocator, one process per family so a crash loses only that family,
    interleaved like the workloads: each round runs every family once under every allocator, so a noisy
    minute hits all allocators alike rather than one. Returns {(benchmark, allocator): median ns per op over
    the rounds} and {allocator: failure notes}."""
    exe = os.path.join(BUILD, 'bench', 'mapalloc-micro')
    rounds, min_time = args.rounds, (0.01 if args.quick else 0.2)
    samples, failures = collections.defaultdict(list), collections.defaultdict(list)
    failed = set()  # (family, allocator): not run again, no median reported
    for rnd in range(rounds):
        for fam in MICRO_FAMILIES:
            for x in rotated(args.allocators, rnd):
                if (fam, x) in failed:
                    continue
                base = os.path.join(logdir, f'micro-{fam}.{x}.{rnd + 1}')
                cmd = [exe, f'--benchmark_filter=^BM_{fam}/', '--benchmark_format=json',
                       f'--benchmark_min_time={min_time}', f'--max_threads={args.threads}']
                r = run_one(cmd, ALLOCATORS[x], args.timeout * 4, base, want_checksum=False)
                log(f'  micro round {rnd + 1}/{rounds} {fam:<16} {x:<9} {r.wall:6.1f} s  {r.status}')
                if r.status != 'ok':
                    failures[x].append(f'{fam}: {r.status} (round {rnd + 1})')
                    failed.add((fam, x))
                    continue
                with open(base + '.out') as f:
                    for b in json.load(f)['benchmarks']:
                        if b.get('items_per_second'):
                            samples[fam, b['run_name'], x].append(1e9 / b['items_per_second'])
    ns = {(b, x): statistics.median(v) for (fam, b, x), v in samples.items() if (fam, x) not in failed}
    return ns, failures


# ---------------------------------------------------------------- reporting

def geomean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None


def summarize(args, runs):
    """Per (workload, allocator): status, medians, min/max, ratios; decides the expected checksums."""
    s = {}
    for w in args.workloads:
        ok_sums = [r.checksum for x in args.allocators for r in runs[w, x] if r.status == 'ok']
        ref_sums = [r.checksum for r in runs[w, args.ref] if r.status == 'ok']
        expect = collections.Counter(ref_sums or ok_sums).most_common(1)[0][0] if ok_sums else None
        for x in args.allocators:
            rs = runs[w, x]
            bad = [r.status for r in rs if r.status != 'ok']
            wrong = sorted({r.checksum for r in rs if r.status == 'ok' and r.checksum != expect})
            e = {'n': len(rs), 'checksum': rs[0].checksum if rs else None}
            problems = []
            if bad:
                problems.append('FAILED (' + ', '.join(sorted(set(bad))) + ')')
            if wrong:
                problems.append('CHECKSUM MISMATCH (' + ' '.join(wrong) + f' != {expect})')
            e['status'] = ' '.join(problems) or 'ok'
            ok = [r for r in rs if r.status == 'ok']
            if e['status'] == 'ok' and ok:
                for key, vals in (('time', [r.wall for r in ok]), ('cpu', [r.cpu for r in ok]),
                                  ('rss', [r.rss_kib / 1024 for r in ok])):
                    e[key] = (statistics.median(vals), min(vals), max(vals))
            s[w, x] = e
        ref = s[w, args.ref]
        for x in args.allocators:
            e = s[w, x]
            for key in ('time', 'cpu', 'rss'):
                if key in e and key in ref:
                    e[key + '_ratio'] = e[key][0] / ref[key][0]
    return s


def md_table(header, rows):
    out = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(['---'] + ['--:'] * (len(header) - 1)) + '|']
    out += ['| ' + ' | '.join(r) + ' |' for r in rows]
    return '\n'.join(out)


def workload_tables(args, s):
    parts = []
    for key, title, unit, fmt in (('time', 'Wall time', 's', '{:.3f}'), ('rss', 'Peak RSS', 'MiB', '{:.1f}')):
        rows = []
        for w in args.workloads:
            row = [w]
            for x in args.allocators:
                e = s[w, x]
                if e['status'] != 'ok':
                    row.append('**' + e['status'] + '**')
                    continue
                med, lo, hi = e[key]
                ratio = e.get(key + '_ratio')
                row.append(f'{fmt.format(med)} ({fmt.format(lo)}–{fmt.format(hi)})'
                           + (f' **{ratio:.2f}×**' if ratio is not None else ''))
            rows.append(row)
        gm_row = ['*geomean ratio*']
        for x in args.allocators:
            ratios = [s[w, x][key + '_ratio'] for w in args.workloads if key + '_ratio' in s[w, x]]
            partial = f' ({len(ratios)} of {len(args.workloads)})' if len(ratios) < len(args.workloads) else ''
            gm_row.append(f'**{geomean(ratios):.3f}×**{partial}' if ratios else '–')
        rows.append(gm_row)
        if key == 'time':
            # Noise on a shared machine only ever adds time, and comes in phases
            # that can take several rounds' medians: the fastest rounds' ratios
            # are the steadier comparison when the spreads are wide.
            best_row = ['*geomean ratio, fastest rounds*']
            for x in args.allocators:
                ratios = [s[w, x]['time'][1] / s[w, args.ref]['time'][1] for w in args.workloads
                          if 'time' in s[w, x] and 'time' in s[w, args.ref]]
                best_row.append(f'{geomean(ratios):.3f}×' if ratios else '–')
            rows.append(best_row)
        parts.append(f'### {title} ({unit}): median (min–max) and ratio to {args.ref}\n\n'
                     + md_table(['workload'] + args.allocators, rows))
    return '\n\n'.join(parts)


def protection_table(args, runs, s):
    """The default build against mapalloc-unprotected, side by side: per workload the ratio of their medians,
    the median of the per-round ratios (each round's two runs are minutes or less apart, so drift of a
    shared machine that lasts several rounds cancels in them) and the ratio of their fastest rounds, in wall
    time; the first two again in CPU time; peak RSS. Empty unless both ran."""
    a, b = 'mapalloc', 'mapalloc-unprotected'
    if a not in args.allocators or b not in args.allocators:
        return ''
    cols = {'median': [], 'paired': [], 'fastest': [], 'cpu': [], 'cpu_paired': [], 'rss': []}
    rows = []
    for w in args.workloads:
        ea, eb = s[w, a], s[w, b]
        if 'time' not in ea or 'time' not in eb:
            rows.append([w] + ['–'] * len(cols))
            continue
        # (Both have times only when every round of theirs succeeded: summarize.)
        pairs = list(zip(runs[w, a], runs[w, b]))
        vals = {'median': ea['time'][0] / eb['time'][0],
                'paired': statistics.median(ra.wall / rb.wall for ra, rb in pairs),
                'fastest': ea['time'][1] / eb['time'][1],
                'cpu': ea['cpu'][0] / eb['cpu'][0],
                'cpu_paired': statistics.median(ra.cpu / rb.cpu for ra, rb in pairs),
                'rss': ea['rss'][0] / eb['rss'][0]}
        for k, v in vals.items():
            cols[k].append(v)
        rows.append([w] + [f'{(vals[k] - 1) * 100:+.1f} %' for k in cols])
    if all(cols.values()):
        rows.append(['*geomean*'] + [f'**{(geomean(cols[k]) - 1) * 100:+.1f} %**' for k in cols])
    return (f'### What the protections cost: {a} against {b}\n\n'
            + md_table(['workload', 'time, medians', 'time, median of per-round ratios', 'time, fastest rounds',
                        'CPU time, medians', 'CPU time, median of per-round ratios', 'peak RSS, medians'], rows))


def micro_table(args, ns, failures):
    names = list(dict.fromkeys(b for b, _ in ns))
    rows = []
    for b in names:
        ref = ns.get((b, args.ref))
        row = [b]
        for x in args.allocators:
            v = ns.get((b, x))
            row.append('–' if v is None else f'{v:.1f}' + (f' ({v / ref:.2f}×)' if ref and x != args.ref else ''))
        rows.append(row)
    gm = [geomean([ns.get((b, x), 0) / ns[b, args.ref] for b in names if (b, args.ref) in ns])
          for x in args.allocators]
    rows.append(['*geomean ratio*'] + [f'**{g:.2f}×**' if g else '–' for g in gm])
    text = (f'### Microbenchmarks: ns per allocation (median over the interleaved rounds), ratio to {args.ref}\n\n'
            + md_table(['benchmark'] + args.allocators, rows))
    for x, notes in failures.items():
        text += f'\n\n**{x}: FAILED micro families: ' + '; '.join(notes) + '**'
    return text


def write_tsv(path, args, s, ns):
    with open(path, 'w') as f:
        f.write('kind\tbenchmark\tallocator\tstatus\tmetric\tmedian\tmin\tmax\tratio_to_ref\n')
        for (w, x), e in s.items():
            for key, metric in (('time', 'wall_s'), ('cpu', 'cpu_s'), ('rss', 'peak_rss_mib')):
                med, lo, hi = e.get(key, ('', '', ''))
                f.write(f'workload\t{w}\t{x}\t{e["status"]}\t{metric}\t{med}\t{lo}\t{hi}\t{e.get(key + "_ratio", "")}\n')
        for (b, x), v in ns.items():
            ref = ns.get((b, args.ref))
            f.write(f'micro\t{b}\t{x}\tok\tns_per_op\t{v}\t\t\t{v / ref if ref else ""}\n')


def plot(outdir, args, s, ns):
    if not shutil.which('gnuplot'):
        log('gnuplot not found: no plots')
        return
    allocs = args.allocators
    cols = ' '.join(f'"{x}"' for x in allocs)
    script = ['set terminal pngcairo size 1000,560 noenhanced', 'set grid ytics', 'set key top left']
    for key, title in (('time', 'Wall time'), ('rss', 'Peak RSS')):
        dat = os.path.join(outdir, f'{key}_ratio.dat')
        with open(dat, 'w') as f:
            f.write(f'workload {cols}\n')
            for w in args.workloads:
                f.write(w + ' ' + ' '.join(f'{s[w, x].get(key + "_ratio") or "NaN"}' for x in allocs) + '\n')
            gm = [geomean([s[w, x].get(key + '_ratio') for w in args.workloads]) for x in allocs]
            f.write('geomean ' + ' '.join(f'{g or "NaN"}' for g in gm) + '\n')
        script += [f'set output "{key}_ratio.png"',
                   f'set title "{title} relative to {args.ref} (lower is better; log scale; missing bar = failed)"',
                   'set style data histograms', 'set style histogram clustered gap 1',
                   'set style fill solid 0.8 border -1', 'set logscale y', 'set yrange [*:*]',
                   'set ylabel "ratio"', 'set xtics rotate by -30',
                   f'plot for [i=2:{len(allocs) + 1}] "{key}_ratio.dat" using i:xtic(1) title columnheader(i), '
                   '1 with lines lc rgb "black" notitle']
    scaling = collections.defaultdict(dict)  # threads -> allocator -> Mops/s
    for (b, x), v in ns.items():
        if b.startswith('BM_ThreadScaling/') and 'threads:' in b:
            scaling[int(b.rsplit('threads:', 1)[1])][x] = 1e3 / v
    if scaling:
        with open(os.path.join(outdir, 'thread_scaling.dat'), 'w') as f:
            f.write(f'threads {cols}\n')
            for t in sorted(scaling):
                f.write(f'{t} ' + ' '.join(f'{scaling[t].get(x, "NaN")}' for x in allocs) + '\n')
        script += ['set output "thread_scaling.png"', 'unset logscale y', 'set xtics 1 norotate',
                   'set title "Micro thread scaling: total malloc+free throughput (higher is better)"',
                   'set xlabel "threads"', 'set ylabel "Mops/s"', 'set yrange [0:*]', 'set style data linespoints',
                   f'plot for [i=2:{len(allocs) + 1}] "thread_scaling.dat" using 1:i title columnheader(i) lw 2']
    with open(os.path.join(outdir, 'plots.gp'), 'w') as f:
        f.write('\n'.join(script) + '\n')
    r = subprocess.run(['gnuplot', 'plots.gp'], cwd=outdir, capture_output=True, text=True)
    if r.returncode:
        log('gnuplot failed:\n' + r.stderr)


def environment_text(args):
    rev = subprocess.run(['git', 'describe', '--always', '--dirty'], cwd=REPO, capture_output=True, text=True)
    cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), '?')
    return (f'- date: {datetime.datetime.now():%Y-%m-%d %H:%M:%S}, commit: {rev.stdout.strip() or "?"}\n'
            f'- machine: {os.cpu_count()} CPUs ({cpu}), kernel {os.uname().release}\n'
            f'- command: `bench/run {" ".join(sys.argv[1:])}`\n'
            f'- rounds: {args.rounds} per workload and allocator (interleaved), threads: {args.threads}, '
            f'reference: {args.ref}, sizes: {"quick" if args.quick else "full"}\n'
            f'- ratios are allocator / {args.ref} (below 1 = faster or smaller); **FAILED** / **MISMATCH** '
            f'cells are runs that crashed, timed out, exited non-zero or printed a wrong checksum')


def main():
    args = parse_args()
    ensure_packages(args)
    build(args)
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    outdir = os.path.join(args.out, stamp)
    logdir = os.path.join(outdir, 'logs')
    os.makedirs(logdir)
    log(f'== results in {outdir}')

    log(f'== workloads: {len(args.workloads)} x {len(args.allocators)} allocators x {args.rounds} rounds')
    runs = run_workloads(args, logdir)
    s = summarize(args, runs)
    ns, failures = ({}, {})
    if not args.no_micro:
        log('== microbenchmarks')
        ns, failures = run_micro(args, logdir)

    with open(os.path.join(outdir, 'runs.tsv'), 'w') as f:
        f.write('workload\tallocator\tround\tstatus\twall_s\tcpu_s\tpeak_rss_kib\tminor_faults\tchecksum\n')
        for (w, x), rs in runs.items():
            for i, r in enumerate(rs):
                f.write(f'{w}\t{x}\t{i + 1}\t{r.status}\t{r.wall:.4f}\t{r.cpu:.4f}\t{r.rss_kib}\t{r.minflt}\t'
                        f'{r.checksum}\n')
    write_tsv(os.path.join(outdir, 'results.tsv'), args, s, ns)
    body = workload_tables(args, s)
    cost = protection_table(args, runs, s)
    if cost:
        body += '\n\n' + cost
    if ns or failures:
        body += '\n\n' + micro_table(args, ns, failures)
    plot(outdir, args, s, ns)
    pngs = [p for p in ('time_ratio.png', 'rss_ratio.png', 'thread_scaling.png')
            if os.path.exists(os.path.join(outdir, p))]
    with open(os.path.join(outdir, 'results.md'), 'w') as f:
        f.write(f'# Allocator benchmarks {stamp}\n\n{environment_text(args)}\n\n{body}\n\n'
                + ''.join(f'![{p}]({p})\n' for p in pngs))
    latest = os.path.join(args.out, 'latest')
    if os.path.islink(latest):
        os.unlink(latest)
    if not os.path.exists(latest):
        os.symlink(stamp, latest)

    log('\n' + body + '\n')
    problems = [f'{w}/{x}: {e["status"]}' for (w, x), e in s.items() if e['status'] != 'ok']
    problems += [f'micro/{x}: {n}' for x, notes in failures.items() for n in notes]
    for p in problems:
        log('!!! ' + p)
    log(f'== wrote {outdir}/results.md (latest: {latest})')
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
