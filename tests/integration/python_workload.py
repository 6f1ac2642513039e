"""Integration workload for python3: threads, dicts, json, sorting, regexes,
growing buffers. Prints only deterministic results."""
import collections
import concurrent.futures
import gc
import hashlib
import json
import queue
import random
import re
import threading


def digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def dict_worker(seed, out):
    rng = random.Random(seed)
    d = {}
    for i in range(60000):
        k = "k%d_%d" % (rng.randrange(20000), i % 7)
        d[k] = d.get(k, 0) + i
    for k in list(d)[::3]:
        del d[k]
    nested = {str(i): {"v": [i, i * 2, str(i) * 3], "w": {"x": i % 5}} for i in range(5000)}
    text = json.dumps(nested)
    back = json.loads(text)
    assert back == nested
    out.put((seed, len(d), sum(d.values()), len(text), digest(back)))


def regex_work(n):
    rng = random.Random(n)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randrange(3, 12))) for _ in range(20000)]
    text = " ".join(words)
    pat = re.compile(r"\b([a-e]+)([f-j]*)\b")
    found = pat.findall(text)
    subbed = re.sub(r"(a+)(b+)", lambda m: m.group(2).upper() + m.group(1), text)
    return len(found), hashlib.md5(subbed.encode()).hexdigest()[:12]


def main():
    # Threads building and serialising dicts.
    out = queue.Queue()
    threads = [threading.Thread(target=dict_worker, args=(s, out)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = sorted(out.get() for _ in range(8))
    for r in results:
        print("dict thread", *r)

    # A thread pool doing regex work.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as ex:
        for n, r in zip(range(12), ex.map(regex_work, range(12))):
            print("regex", n, *r)

    # Sorting, Counter, deque, sets.
    rng = random.Random(42)
    data = [rng.random() for _ in range(300000)]
    data.sort()
    strs = sorted(("%x" % rng.getrandbits(64) for _ in range(100000)), key=lambda s: (len(s), s))
    c = collections.Counter(s[:2] for s in strs)
    dq = collections.deque(maxlen=1000)
    for i in range(200000):
        dq.append(i)
    s1, s2 = set(range(0, 200000, 3)), set(range(0, 200000, 5))
    print("sort", round(data[150000], 9), strs[0], strs[-1], c.most_common(2), sum(dq), len(s1 & s2), len(s1 ^ s2))

    # Growing buffers (realloc paths) and big strings.
    b = bytearray()
    for i in range(100000):
        b += i.to_bytes(4, "little") * (1 + i % 3)
    parts = [str(i) * (i % 50) for i in range(20000)]
    joined = "".join(parts)
    print("buffers", len(b), hashlib.sha1(b).hexdigest()[:12], len(joined), joined.count("7"))

    # Reference cycles and the cycle collector.
    class Node:
        def __init__(self, i):
            self.i = i
            self.peer = None
            self.data = [i] * 10

    nodes = [Node(i) for i in range(50000)]
    for a, bb in zip(nodes, nodes[1:] + nodes[:1]):
        a.peer = bb
    del nodes, a, bb
    gc.collect()
    print("gc", sum(isinstance(o, Node) for o in gc.get_objects()), gc.garbage)

    # JSON round trip of a big document.
    doc = {"items": [{"id": i, "name": "item%d" % i, "tags": ["t%d" % (i % 13)] * (i % 4),
                      "price": i * 1.25} for i in range(100000)]}
    text = json.dumps(doc, indent=1)
    again = json.loads(text)
    print("json", len(text), again == doc, digest(again["items"][-1]))


if __name__ == "__main__":
    main()
