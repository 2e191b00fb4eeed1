#!/usr/bin/env python3
"""Summarise a `perf script -F comm,tid,ip,sym` dump: per thread kind, where samples go.
Each sample is classified by the outermost recognised frame of interest."""
import sys, re, collections
CLASSES = [
    ("sha1", r"sha1::|Sha1|digest_blocks"),
    ("munmap/exit", r"__x64_sys_munmap|do_exit|exit_mmap|__x64_sys_exit"),
    ("msync/fsync/writeback", r"__x64_sys_msync|__x64_sys_fsync|__x64_sys_fdatasync|__x64_sys_sync_file_range|writeback_sb|do_writepages"),
    ("fallocate", r"fallocate"),
    ("madvise populate", r"__x64_sys_madvise"),
    ("pwrite (page cache)", r"__x64_sys_pwrite64|ksys_pwrite64"),
    ("recv (tcp_recvmsg)", r"tcp_recvmsg|io_recvmsg|io_recv\b"),
    ("send (tcp_sendmsg)", r"tcp_sendmsg|io_sendmsg"),
    ("page fault (user)", r"asm_exc_page_fault"),
    ("io_uring_enter other", r"io_uring_enter|io_cqring_wait|io_run_task_work"),
    ("futex", r"futex"),
    ("eventfd/read/write", r"ksys_write|ksys_read|eventfd"),
    ("softirq/net rx", r"net_rx_action|__napi_poll|do_softirq"),
    ("other syscall", r"do_syscall_64"),
]
comp = [(n, re.compile(p)) for n, p in CLASSES]
def kind(comm):
    return re.sub(r"-\d+$", "-N", comm)
samples = []
cur = None
for line in open(sys.argv[1]):
    if not line.strip():
        if cur: samples.append(cur); cur = None
        continue
    if not line.startswith(("\t", " ")):
        cur = [line.split()[0], []]
    else:
        parts = line.strip().split(None, 1)
        cur[1].append(parts[1] if len(parts) > 1 else "?")
if cur: samples.append(cur)
tot = len(samples)
by = collections.defaultdict(collections.Counter)
for comm, frames in samples:
    cls = "user code"
    if frames and not re.match(r"^[0-9a-f]+$", "x"):
        pass
    # outermost match: scan from the bottom (root) upwards
    hit = None
    for n, r in comp:
        if any(r.search(f) for f in frames):
            hit = n; break
    if hit is None:
        hit = "user code" if frames and not frames[0].startswith(("__", "_raw")) else "kernel other"
    by[kind(comm)][hit] += 1
print(f"{tot} samples")
for k, c in sorted(by.items(), key=lambda kv: -sum(kv[1].values())):
    s = sum(c.values())
    print(f"{k:18} {100*s/tot:5.1f}%")
    for n, v in c.most_common():
        print(f"    {n:28} {100*v/tot:5.1f}%")
