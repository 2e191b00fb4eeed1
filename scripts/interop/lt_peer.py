#!/usr/bin/env python3
"""Runs a stock libtorrent (python3-libtorrent) client for corvid's interop tests.

  lt_peer.py download TORRENT DEST [--peer HOST:PORT ...] [--timeout S]
      downloads into DEST (from the given peers and/or the torrent's tracker); prints
      "done" and exits 0 once every piece is verified, exits 1 on timeout or error.
  lt_peer.py seed TORRENT DATA_DIR [--timeout S]
      checks the data and seeds it on 127.0.0.1; prints "listening PORT" once seeding,
      runs until killed or the timeout (a bound, so it never outlives a test).

Only loopback is used: DHT, LSD, UPnP and NAT-PMP are off.
"""
import argparse
import sys
import time

import libtorrent as lt


def session():
    return lt.session({
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        # corvid speaks BitTorrent over TCP only: an outgoing uTP (UDP) attempt to it
        # times out, and libtorrent's reconnect back-off can then outlast a test.
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        # corvid speaks plain BitTorrent (no MSE/PE): do not open with an encrypted
        # handshake that is refused before libtorrent falls back.
        "out_enc_policy": int(lt.enc_policy.disabled),
        "in_enc_policy": int(lt.enc_policy.disabled),
        "alert_mask": lt.alert.category_t.error_notification,
    })


def add(ses, torrent, save_path):
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = save_path
    return ses.add_torrent(atp)


def report_errors(ses):
    for a in ses.pop_alerts():
        print("alert:", a.message(), file=sys.stderr, flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["download", "seed"])
    p.add_argument("torrent")
    p.add_argument("dir")
    p.add_argument("--peer", action="append", default=[])
    p.add_argument("--timeout", type=float, default=120)
    args = p.parse_args()

    ses = session()
    h = add(ses, args.torrent, args.dir)
    deadline = time.monotonic() + args.timeout
    for peer in args.peer:
        host, port = peer.rsplit(":", 1)
        h.connect_peer((host, int(port)))

    announced = False
    while time.monotonic() < deadline:
        s = h.status()
        report_errors(ses)
        if args.mode == "download":
            if s.is_seeding:
                print("done", flush=True)
                return 0
            # Re-dial the given peers now and then: a peer that refused early (still
            # starting) is tried again.
            if int(time.monotonic()) % 5 == 0:
                for peer in args.peer:
                    host, port = peer.rsplit(":", 1)
                    h.connect_peer((host, int(port)))
        elif s.is_seeding and not announced:
            print("listening", ses.listen_port(), flush=True)
            announced = True
        time.sleep(0.2)
    print("timeout: state=%s progress=%.3f" % (h.status().state, h.status().progress),
          file=sys.stderr, flush=True)
    return 1 if args.mode == "download" else 0


if __name__ == "__main__":
    sys.exit(main())
