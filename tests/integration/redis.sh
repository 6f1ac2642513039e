#!/bin/bash
# Integration workload: redis-server on 127.0.0.1 at a free port (under the
# shim when the run is, as are redis-benchmark and redis-cli), a bounded
# redis-benchmark, SET/GET/list/hash checks, then SHUTDOWN. Only the checks'
# results go to stdout; benchmark figures go to stderr as "info:" lines.
set -euo pipefail
case ${1:-} in
setup)
  for p in redis-server redis-cli redis-benchmark; do
    command -v $p >/dev/null || { echo "missing: $p (packages redis-server, redis-tools)" >&2; exit 77; }
  done
  ;;
run)
  # Below the kernel's ephemeral range (32768 and up by default), where a
  # client socket of an earlier run (redis-benchmark's, in TIME_WAIT) cannot
  # hold the port: bind() failed once with "Address already in use" there.
  free_port() {
    local p
    for ((try = 0; try < 200; try++)); do
      p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
      # Nothing listening and nothing can connect: take it.
      if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
    return 1
  }
  cli() { redis-cli -h 127.0.0.1 -p "$port" "$@"; }
  start_server() {
    port=$(free_port)
    : >redis.log
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
      --protected-mode yes --logfile "$PWD/redis.log" --dir "$PWD" &
    server=$!
  }
  start_server
  stop() {
    local rc=$?
    if ! kill -0 "$server" 2>/dev/null; then
      echo "redis-server (pid $server) is gone; the end of redis.log:" >&2
      tail -n 30 redis.log >&2 || true
    elif ((rc != 0)); then
      echo "failed with redis-server still up; the end of redis.log:" >&2
      tail -n 10 redis.log >&2 || true
    fi
    kill -KILL "$server" 2>/dev/null || true
  }
  trap stop EXIT
  # Another process may take the port between the check and the bind: then
  # the server exits at once, saying so, and starts again on another port.
  # Any other failure is final.
  up=0
  for ((attempt = 0; attempt < 5; attempt++)); do
    ((attempt == 0)) || start_server
    for ((i = 0; i < 200; i++)); do
      if ! kill -0 "$server" 2>/dev/null; then break; fi  # not ours, whoever answers on the port
      if [[ "$(cli ping 2>/dev/null)" == PONG ]]; then up=1; break; fi
      sleep 0.05
    done
    if ((up)) || kill -0 "$server" 2>/dev/null || ! grep -q 'Address already in use' redis.log; then break; fi
    echo "info: port $port was taken, retrying on another" >&2
  done
  if ((!up)); then
    echo "redis-server did not come up on port $port; log:" >&2
    tail -n 20 redis.log >&2 || true
    exit 1
  fi
  echo "server up"

  redis-benchmark -h 127.0.0.1 -p "$port" -n 20000 -c 20 -q \
    -t ping_mbulk,set,get,incr,lpush,rpop,sadd,hset,zadd,lrange_100,mset >bench.txt 2>&1 || {
    echo "redis-benchmark failed:" >&2; tr '\r' '\n' <bench.txt | tail -n 5 >&2; exit 1; }
  tr '\r' '\n' <bench.txt | grep -E 'requests per second' | sed 's/^/info: /' >&2 || true
  echo "benchmark ok"

  # SET/GET with values generated here, through one redis-cli each way.
  printf -v xs '%300s' ''
  xs=${xs// /x}
  for ((i = 0; i < 2000; i++)); do echo "val-$i-$((i * i % 9973))-${xs:0:i % 300}"; done >expect.txt
  i=0
  while read -r v; do echo "SET key:$i $v"; i=$((i + 1)); done <expect.txt | cli >set.txt
  echo "set replies: $(sort set.txt | uniq -c | tr -s ' ')"
  for ((i = 0; i < 2000; i++)); do echo "GET key:$i"; done | cli >get.txt
  if cmp -s get.txt expect.txt; then echo "get: all 2000 values as set"; else echo "get: values differ from what was set"; fi
  # A 4 MiB value.
  head -c 3000000 /dev/zero | tr '\0' 'q' | base64 -w 0 >big.txt
  cli -x SET big <big.txt >/dev/null
  echo "big: $(cli STRLEN big) $(cli GET big | head -c -1 | cmp -s - big.txt && echo same || echo differs)"
  # Lists, hashes, sets, sorted sets, deletes, expiry.
  {
    for ((i = 0; i < 5000; i++)); do echo "RPUSH list $i"; echo "HSET hash f$i $((i * 7))"; echo "SADD set m$((i % 1234))"; echo "ZADD zset $((i % 977)) z$i"; done
    for ((i = 0; i < 5000; i += 2)); do echo "HDEL hash f$i"; echo "DEL key:$i"; done
    echo "LTRIM list 100 3999"
  } | cli >/dev/null
  echo "list: $(cli LLEN list) $(cli LINDEX list 0) $(cli LINDEX list -1)"
  echo "hash: $(cli HLEN hash) $(cli HGET hash f4999)"
  echo "set: $(cli SCARD set)"
  echo "zset: $(cli ZCARD zset) $(cli ZRANGE zset 0 2 | tr '\n' ' ')"
  echo "keys: $(cli DBSIZE)"
  cli FLUSHALL >/dev/null
  echo "after flush: $(cli DBSIZE)"
  cli INFO memory | tr -d '\r' | grep -E '^(used_memory_human|mem_allocator|allocator_resident)' | sed 's/^/info: /' >&2 || true

  cli SHUTDOWN NOSAVE >/dev/null 2>&1 || true
  rc=0
  wait "$server" || rc=$?
  trap - EXIT
  echo "server exit: $rc"
  if ((rc != 0)); then tail -n 30 redis.log >&2; fi
  ;;
esac
