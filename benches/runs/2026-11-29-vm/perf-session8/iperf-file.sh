#!/bin/bash
# iperf3 sender reading the 1 GiB payload from its file (-F) vs from its 128 KiB buffer, CPU via /usr/bin/time
P=/tmp/cpuprof/data/payload.bin
for i in 1 2 3; do
 for mode in $MODES; do
  cat $P > /dev/null
  /usr/bin/time -o srv.time -f "%U %S" iperf3 -s -1 -p 45123 > /dev/null 2>&1 &
  SP=$!; sleep 0.3
  case $mode in file) A="-F $P";; filez) A="-Z -F $P";; *) A="-n 1073741824";; esac
  /usr/bin/time -o cli.time -f "%U %S" iperf3 -c 127.0.0.1 -p 45123 $A > cli.out 2>&1
  wait $SP
  echo "$mode sender(user sys) $(cat cli.time) receiver $(cat srv.time) $(grep -E 'sender$' cli.out | awk '{print $5, $6, $7, $8}')"
 done
done
