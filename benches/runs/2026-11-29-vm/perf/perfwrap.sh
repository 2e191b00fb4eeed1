#!/bin/bash
# `corvid-bench link --corvid perfwrap.sh`: runs `corvid peer` under `perf record -g`, every
# other subcommand as is. CORVID_REAL names the binary (default target/release/corvid),
# PERF_OUT the profile (default peer.perf.data).
BIN=${CORVID_REAL:-target/release/corvid}
if [ "$1" = peer ]; then
  exec perf record -g -F 2000 -o "${PERF_OUT:-peer.perf.data}" -- "$BIN" "$@"
fi
exec "$BIN" "$@"
