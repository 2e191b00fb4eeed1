//! Admission of inbound connections per remote address, so one host holding idle sockets
//! cannot take every connection slot (issue 12).

use std::collections::HashMap;
use std::net::IpAddr;

/// How many inbound connections one remote address may hold, and how many of those may
/// still be in their handshake (in a private swarm: not yet proven the secret), for a node
/// allowed `max_connections`. Without these, one host opening idle sockets took every slot
/// (issue 12): now it gets at most a quarter of them half-open (4 to 32) and half of them
/// in all, while peers that complete their handshake on one address (a test fleet on
/// loopback) still fit many to a host.
pub(crate) fn per_ip_limits(max_connections: usize) -> IpLimits {
    let handshaking = (max_connections / 4).clamp(4, 32);
    IpLimits {
        open: (max_connections / 2).max(handshaking),
        handshaking,
    }
}

/// See [`per_ip_limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpLimits {
    pub open: usize,
    pub handshaking: usize,
}

/// One remote address's inbound connections.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpSlots {
    pub open: usize,
    pub handshaking: usize,
}

/// The inbound connections per remote address, against [`IpLimits`].
#[derive(Debug)]
pub(crate) struct PerIp {
    limits: IpLimits,
    slots: HashMap<IpAddr, IpSlots>,
}

impl PerIp {
    pub fn new(limits: IpLimits) -> Self {
        PerIp {
            limits,
            slots: HashMap::new(),
        }
    }

    /// Takes a slot for a new inbound connection from `ip` (in its handshake), if the
    /// address is within its limits.
    pub fn admit(&mut self, ip: IpAddr) -> bool {
        let s = self.slots.entry(ip).or_default();
        if s.open >= self.limits.open || s.handshaking >= self.limits.handshaking {
            return false;
        }
        s.open += 1;
        s.handshaking += 1;
        true
    }

    /// A connection from `ip` finished its handshake.
    pub fn handshake_done(&mut self, ip: IpAddr) {
        if let Some(s) = self.slots.get_mut(&ip) {
            s.handshaking = s.handshaking.saturating_sub(1);
        }
    }

    /// A connection from `ip` closed; `handshaking` if it never finished its handshake.
    pub fn release(&mut self, ip: IpAddr, handshaking: bool) {
        if let Some(s) = self.slots.get_mut(&ip) {
            s.open = s.open.saturating_sub(1);
            if handshaking {
                s.handshaking = s.handshaking.saturating_sub(1);
            }
            if s.open == 0 {
                self.slots.remove(&ip);
            }
        }
    }

    #[cfg(test)]
    fn get(&self, ip: IpAddr) -> IpSlots {
        self.slots.get(&ip).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_limits_scale_with_the_connection_cap() {
        let l = per_ip_limits(16);
        assert_eq!((l.open, l.handshaking), (8, 4));
        let l = per_ip_limits(512);
        assert_eq!((l.open, l.handshaking), (256, 32));
        let l = per_ip_limits(1);
        assert!(l.open >= l.handshaking && l.handshaking >= 4);
    }

    #[test]
    fn one_address_gets_few_half_open_slots_and_frees_them() {
        let mut p = PerIp::new(IpLimits {
            open: 6,
            handshaking: 3,
        });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(p.admit(a) && p.admit(a) && p.admit(a));
        assert!(
            !p.admit(a),
            "a fourth half-open connection from one address"
        );
        assert!(p.admit(b), "another address is not affected");
        // Finished handshakes free half-open room, up to the address's total.
        for _ in 0..3 {
            p.handshake_done(a);
        }
        assert!(p.admit(a) && p.admit(a) && p.admit(a));
        assert_eq!(
            p.get(a),
            IpSlots {
                open: 6,
                handshaking: 3
            }
        );
        p.handshake_done(a);
        assert!(!p.admit(a), "over the address's total");
        // Closing gives slots back; the last one forgets the address.
        p.release(a, true);
        assert_eq!(
            p.get(a),
            IpSlots {
                open: 5,
                handshaking: 1
            }
        );
        for _ in 0..5 {
            p.release(a, false);
        }
        assert_eq!(p.get(a), IpSlots::default());
        assert!(!p.slots.contains_key(&a));
    }
}
