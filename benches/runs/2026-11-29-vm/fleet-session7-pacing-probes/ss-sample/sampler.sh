#!/bin/bash
# samples ss -tin in every host namespace of fleet $1 every ~100ms for $2 iterations
name=$1; n=$2; out=$3
mkdir -p $out
for ((k=0;k<n;k++)); do
  t=$(date +%s.%N)
  for ns in $(ip netns list | awk '{print $1}' | grep "^cf-$name-h"); do
    { echo "T $t"; ip netns exec $ns ss -tinH state established 2>/dev/null; } >> $out/$ns.txt &
  done
  wait
  sleep 0.05
done
