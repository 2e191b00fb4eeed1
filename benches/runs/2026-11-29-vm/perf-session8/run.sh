#!/bin/bash
# usage: run.sh BIN TAG [seedperf|peerperf|none] [extra seed args...]
set -u
BIN=$1; TAG=$2; MODE=$3; shift 3
cd /tmp/cpuprof
rm -rf recv; mkdir recv
sync; cat data/payload.bin > /dev/null
SEEDCMD=("$BIN" seed link.torrent data --listen 127.0.0.1:0 --tracker-listen 127.0.0.1:46999 --trust-data --json "$@")
PEERCMD=("$BIN" peer link.torrent recv --listen 127.0.0.1:0 --linger 0s --json)
if [ "$MODE" = seedperf ]; then
  perf record -q -g -o seed-$TAG.data -- "${SEEDCMD[@]}" > seed.out 2>seed.err &
else
  /usr/bin/time -o seed.time -f "seed user %U sys %S" "${SEEDCMD[@]}" > seed.out 2>seed.err &
fi
SP=$!
for i in $(seq 100); do grep -q listening seed.out 2>/dev/null && break; sleep 0.1; done
SEEDPID=$(pgrep -P $SP | head -1); SEEDPID=${SEEDPID:-$SP}
T0=$(date +%s.%N)
if [ "$MODE" = peerperf ]; then
  perf record -q -g -o peer-$TAG.data -- "${PEERCMD[@]}" > peer.out 2>peer.err
else
  /usr/bin/time -f "peer user %U sys %S" "${PEERCMD[@]}" > peer.out 2>peer.err
fi
T1=$(date +%s.%N)
# seeder usage from /proc before kill
awk '{print "seed utime_ticks", $14, "stime_ticks", $15}' /proc/$SEEDPID/stat
kill -TERM $SEEDPID
wait $SP
[ "$MODE" = seedperf ] || cat seed.time
tail -1 peer.err
echo "wall $(echo "$T1 - $T0" | bc)"
cmp data/payload.bin recv/payload.bin && echo "payload ok"
