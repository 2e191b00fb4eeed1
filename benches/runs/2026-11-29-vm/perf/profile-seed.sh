#!/bin/bash
# profile-seed.sh BIN OUT.data BENCH-OUT [--veth]: one 1 GiB link run of BIN under system-wide `perf record -a -g`;
# prints the seeder's PID (report with --pid).
BIN=$1; OUT=$2; BOUT=$3; shift 3
cd "$(git rev-parse --show-toplevel)"
perf record -q --no-buildid -a -g -F 1000 -o $OUT 2>/dev/null &
p=$!
target/release/corvid-bench link --size 1GiB --runs 1 --methods corvid --corvid $BIN --out $BOUT "$@" > $BOUT.log 2>&1 &
b=$!
for i in $(seq 1 600); do
  s=$(pgrep -f "^$BIN seed" | head -1)
  [ -n "$s" ] && break
  sleep 0.05
done
echo seed pid $s
wait $b
kill -INT $p; wait $p
tail -12 $BOUT.log
