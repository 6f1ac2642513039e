// Integration workload for node: maps and objects, strings, JSON, Buffers,
// zlib (native, through malloc), crypto, and two worker threads. Prints
// results that depend only on the work done.
'use strict';
const crypto = require('crypto');
const zlib = require('zlib');
const { Worker, isMainThread, parentPort, workerData } = require('worker_threads');

function digest(data) { return crypto.createHash('sha256').update(data).digest('hex').slice(0, 16); }

if (!isMainThread) {
  let h = '';
  for (let i = 0; i < 2000; i++) h = digest(h + workerData.seed + i + 'x'.repeat(i % 300));
  parentPort.postMessage(h);
} else {
  const m = new Map();
  for (let i = 0; i < 200000; i++) m.set('k' + i, { v: i, s: 'y'.repeat(i % 64), a: [i, i * 2] });
  let sum = 0;
  for (const [k, o] of m) if (o.v % 3 === 0) { sum += o.a[1]; m.delete(k); }
  console.log('map', m.size, sum);

  const text = JSON.stringify([...m.values()].slice(0, 50000));
  console.log('json', text.length, digest(text), JSON.parse(text).length);

  const packed = zlib.deflateSync(Buffer.from(text), { level: 9 });
  const back = zlib.inflateSync(packed).toString();
  console.log('zlib', packed.length, back === text);

  const bufs = [];
  for (let i = 0; i < 5000; i++) bufs.push(Buffer.alloc(64 + (i * 37) % 4000, i % 251));
  console.log('buffers', digest(Buffer.concat(bufs)));

  const words = text.split(/[^a-z0-9]+/).filter(Boolean).sort();
  console.log('words', words.length, words[0], words[words.length - 1]);

  let done = 0;
  const results = [];
  for (const seed of ['a', 'b']) {
    const w = new Worker(__filename, { workerData: { seed } });
    w.on('message', (h) => { results.push(seed + ':' + h); });
    w.on('exit', () => { if (++done === 2) console.log('workers', results.sort().join(' ')); });
  }
}
