//! Sockets the ring operates on: per-core `SO_REUSEPORT` listeners, outbound sockets, and
//! conversions between `std::net::SocketAddr` and the kernel's `sockaddr`.
//!
//! Multi-homed hosts (a management and a data network): a node listening on one address
//! dials from it too ([`outbound_socket`]), since the peer it dials hands that source
//! address on and its own routes may pick another; and a node can be told a network
//! instead of an address ([`Network`], [`local_ip_in`]), so a deploy need not know each
//! host's address on it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A socket address in kernel form, with its length.
#[derive(Clone, Copy)]
pub struct RawAddr {
    /// Storage large enough for any address family.
    pub storage: libc::sockaddr_storage,
    /// Bytes of `storage` in use.
    pub len: libc::socklen_t,
}

impl RawAddr {
    /// Kernel form of `addr`.
    pub fn from_std(addr: SocketAddr) -> RawAddr {
        // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin)
                };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6)
                };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        RawAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    /// Back to std form; `None` for families other than IPv4/IPv6.
    pub fn to_std(self) -> Option<SocketAddr> {
        match i32::from(self.storage.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let sin: libc::sockaddr_in = unsafe {
                    std::ptr::read((&self.storage as *const libc::sockaddr_storage).cast())
                };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let sin6: libc::sockaddr_in6 = unsafe {
                    std::ptr::read((&self.storage as *const libc::sockaddr_storage).cast())
                };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// Pointer for system calls and SQEs.
    pub fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A new TCP socket (close-on-exec) for `addr`'s family.
pub fn tcp_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket takes no pointers; the result is checked.
    let fd = check(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An outbound TCP socket for `to`, bound to `from` (port left to the kernel) when that
/// is a specific address of `to`'s family from which the kernel has a route to `to`.
/// Otherwise (listening on loopback and dialling another host, say) it is left unbound and
/// the route picks the source, as the tracker announce does in the same case: a
/// connection from an address the peer does not know is better than none.
pub fn outbound_socket(to: &SocketAddr, from: Option<IpAddr>) -> io::Result<OwnedFd> {
    let fd = tcp_socket(to)?;
    let Some(from) = from.filter(|f| !f.is_unspecified() && f.is_ipv4() == to.is_ipv4()) else {
        return Ok(fd);
    };
    if !routes_from(from, to) {
        return Ok(fd);
    }
    // The port is picked at connect, per destination, as for an unbound socket: bound
    // with port 0 alone, every dial would take a port of its own for the address and a
    // busy node could run out of them. (Only that is lost where the kernel refuses it.)
    let _ = set_int_opt(
        fd.as_raw_fd(),
        libc::IPPROTO_IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        1,
    );
    let raw = RawAddr::from_std(SocketAddr::new(from, 0));
    // SAFETY: `raw` is a valid sockaddr of `raw.len` bytes for the duration of the call.
    match check(unsafe { libc::bind(fd.as_raw_fd(), raw.as_ptr(), raw.len) }) {
        Ok(_) => Ok(fd),
        // The address went away since the listener bound it: dial unbound.
        Err(_) => tcp_socket(to),
    }
}

/// Whether the kernel has a route to `to` from local address `from`: a UDP socket bound
/// there and connected to `to` does the same route lookup a TCP connect would (it fails
/// with `EINVAL` for a loopback source and an outside destination, `ENETUNREACH` where no
/// route leaves from that address) and sends nothing.
fn routes_from(from: IpAddr, to: &SocketAddr) -> bool {
    let Ok(sock) = std::net::UdpSocket::bind(SocketAddr::new(from, 0)) else {
        return false;
    };
    sock.connect(to).is_ok()
}

/// An IP network in CIDR notation (`10.1.0.0/16`, `fd00::/64`): where a node on a
/// multi-homed host listens, by network rather than by address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

/// Why a network (CIDR) did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "{0:?} is not a network in CIDR notation (ADDRESS/PREFIX, e.g. 10.1.0.0/16 or fd00::/64)"
    )]
    NotCidr(String),
    #[error("{0:?}: the address before the / is not an IPv4 or IPv6 address")]
    BadAddress(String),
    #[error("{0:?}: the prefix length must be a number from 0 to 32 for IPv4, 0 to 128 for IPv6")]
    BadPrefix(String),
    #[error("{0:?}: has bits set past its prefix length; did you mean {1}?")]
    HostBits(String, Network),
}

impl Network {
    /// Whether `ip` lies inside (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        mask(ip.to_canonical(), self.prefix) == Some(self.addr)
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Network {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Network, NetworkError> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| NetworkError::NotCidr(s.to_owned()))?;
        let addr = addr
            .parse::<IpAddr>()
            .map_err(|_| NetworkError::BadAddress(s.to_owned()))?
            .to_canonical();
        let prefix = match prefix.parse::<u8>() {
            Ok(p) if prefix.bytes().all(|b| b.is_ascii_digit()) => p,
            _ => return Err(NetworkError::BadPrefix(s.to_owned())),
        };
        let masked = mask(addr, prefix).ok_or_else(|| NetworkError::BadPrefix(s.to_owned()))?;
        let net = Network {
            addr: masked,
            prefix,
        };
        if masked != addr {
            return Err(NetworkError::HostBits(s.to_owned(), net));
        }
        Ok(net)
    }
}

/// `ip` with all but its first `len` bits cleared; `None` past the address's length.
fn mask(ip: IpAddr, len: u8) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) if len <= 32 => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            Some(IpAddr::V4((u32::from(v4) & m).into()))
        }
        IpAddr::V6(v6) if len <= 128 => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            Some(IpAddr::V6((u128::from(v6) & m).into()))
        }
        _ => None,
    }
}

/// This host's addresses, from every interface that is up (`getifaddrs`), in the kernel's
/// order.
pub fn local_ips() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a live out-pointer; on success the list is freed below.
    check(unsafe { libc::getifaddrs(&mut head) })?;
    let mut ips = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        let up = ifa.ifa_flags & libc::IFF_UP as libc::c_uint != 0;
        if up && !ifa.ifa_addr.is_null() {
            // SAFETY: a non-null ifa_addr points at a sockaddr whose family says its size.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            let size = match family {
                libc::AF_INET => std::mem::size_of::<libc::sockaddr_in>(),
                libc::AF_INET6 => std::mem::size_of::<libc::sockaddr_in6>(),
                _ => 0,
            };
            if size > 0 {
                let mut raw = RawAddr {
                    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
                    storage: unsafe { std::mem::zeroed() },
                    len: size as libc::socklen_t,
                };
                // SAFETY: `size` is the length of the family's sockaddr at ifa_addr, and
                // sockaddr_storage is larger than either.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        ifa.ifa_addr.cast::<u8>(),
                        (&mut raw.storage as *mut libc::sockaddr_storage).cast::<u8>(),
                        size,
                    )
                };
                if let Some(a) = raw.to_std() {
                    ips.push(a.ip());
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(ips)
}

/// This host's address inside `net` (the first the kernel lists), `None` when it has none.
pub fn local_ip_in(net: &Network) -> io::Result<Option<IpAddr>> {
    Ok(local_ips()?.into_iter().find(|ip| net.contains(*ip)))
}

fn set_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its exact size.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Disable Nagle: protocol messages are small and latency-sensitive, payload goes in big writes.
pub fn set_nodelay(fd: RawFd) -> io::Result<()> {
    set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

/// Keeps at most `bytes` written and unsent in the socket: it reads as writable (and a
/// send stops short) above that. See [`super::RuntimeConfig::unsent_limit`].
pub fn set_notsent_lowat(fd: RawFd, bytes: u32) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, v)
}

/// Caps the socket's sending rate (bytes per second; `None` lifts the cap). TCP paces
/// to it for any congestion control (BBR paces anyway; others switch to the kernel's
/// internal pacing once a cap is set).
pub fn set_max_pacing_rate(fd: RawFd, bytes_per_sec: Option<u64>) -> io::Result<()> {
    let value: u64 = bytes_per_sec.unwrap_or(u64::MAX);
    // SAFETY: passes a pointer to a live u64 and its exact size; the kernel reads an
    // unsigned long (64 bits here) for this option.
    check(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MAX_PACING_RATE,
            (&value as *const u64).cast(),
            std::mem::size_of::<u64>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A listener bound with `SO_REUSEPORT`, so every core can bind its own to the same address and
/// the kernel spreads incoming connections across them.
pub fn reuseport_listener(addr: SocketAddr, backlog: i32) -> io::Result<OwnedFd> {
    let fd = tcp_socket(&addr)?;
    set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    let raw = RawAddr::from_std(addr);
    // SAFETY: `raw` is a valid sockaddr of `raw.len` bytes for the duration of the call.
    check(unsafe { libc::bind(fd.as_raw_fd(), raw.as_ptr(), raw.len) })?;
    // SAFETY: no pointers.
    check(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(fd)
}

/// The address `fd` is bound to.
pub fn local_addr(fd: RawFd) -> io::Result<SocketAddr> {
    name(fd, libc::getsockname)
}

/// The address of the peer `fd` is connected to.
pub fn peer_addr(fd: RawFd) -> io::Result<SocketAddr> {
    name(fd, libc::getpeername)
}

type NameFn =
    unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

fn name(fd: RawFd, f: NameFn) -> io::Result<SocketAddr> {
    let mut raw = RawAddr::from_std(SocketAddr::from(([0, 0, 0, 0], 0)));
    raw.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage and len point to live locals; len holds the storage size.
    check(unsafe {
        f(
            fd,
            (&mut raw.storage as *mut libc::sockaddr_storage).cast(),
            &mut raw.len,
        )
    })?;
    raw.to_std().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "socket is neither IPv4 nor IPv6",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_addr_round_trips() {
        for s in ["127.0.0.1:6881", "[::1]:8998", "10.1.2.3:0"] {
            let a: SocketAddr = s.parse().unwrap();
            assert_eq!(RawAddr::from_std(a).to_std(), Some(a));
        }
    }

    #[test]
    fn an_outbound_socket_is_bound_to_the_listen_ip_where_it_can_reach_the_peer() {
        let listener = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
        let to = listener.local_addr().unwrap();
        let from: IpAddr = "127.0.0.2".parse().unwrap();
        let fd = outbound_socket(&to, Some(from)).unwrap();
        // Bound to the address, the port left to the connect.
        assert_eq!(
            local_addr(fd.as_raw_fd()).unwrap(),
            SocketAddr::new(from, 0)
        );
        // Unspecified and other-family addresses leave the socket to the route.
        for other in ["0.0.0.0", "::1"] {
            let fd = outbound_socket(&to, Some(other.parse().unwrap())).unwrap();
            assert!(local_addr(fd.as_raw_fd()).unwrap().ip().is_unspecified());
        }
        // A loopback source cannot reach an outside address (no packet is sent to find
        // that out: the route lookup refuses it): left unbound, as the announce falls
        // back to the route's address.
        let outside: SocketAddr = "192.0.2.1:6881".parse().unwrap();
        let fd = outbound_socket(&outside, Some(from)).unwrap();
        assert!(local_addr(fd.as_raw_fd()).unwrap().ip().is_unspecified());
    }

    #[test]
    fn networks_parse_strictly_and_match_their_addresses() {
        let net: Network = "10.98.0.0/16".parse().unwrap();
        assert!(net.contains("10.98.3.4".parse().unwrap()));
        assert!(net.contains("::ffff:10.98.0.1".parse().unwrap()));
        assert!(!net.contains("10.99.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        assert_eq!(net.to_string(), "10.98.0.0/16");
        let v6: Network = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fdab::1".parse().unwrap()));
        let all: Network = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let bad = |s: &str| s.parse::<Network>().unwrap_err();
        assert_eq!(bad("10.98.0.0"), NetworkError::NotCidr("10.98.0.0".into()));
        assert_eq!(
            bad("10.98.0/16"),
            NetworkError::BadAddress("10.98.0/16".into())
        );
        for p in [
            "10.0.0.0/33",
            "10.0.0.0/+8",
            "10.0.0.0/",
            "10.0.0.0/x",
            "::/129",
        ] {
            assert_eq!(bad(p), NetworkError::BadPrefix(p.into()), "{p}");
        }
        let e = bad("10.98.1.2/16");
        assert!(
            matches!(&e, NetworkError::HostBits(_, n) if n.to_string() == "10.98.0.0/16"),
            "{e}"
        );
        assert!(e.to_string().contains("did you mean 10.98.0.0/16"), "{e}");
    }

    #[test]
    fn the_local_address_in_a_network_is_found_on_the_interfaces() {
        // Every Linux host has loopback up, with 127.0.0.1 on it.
        let lo: Network = "127.0.0.0/8".parse().unwrap();
        assert_eq!(
            local_ip_in(&lo).unwrap(),
            Some("127.0.0.1".parse().unwrap())
        );
        // TEST-NET-3 is on no interface of a test machine.
        let none: Network = "203.0.113.0/24".parse().unwrap();
        assert_eq!(local_ip_in(&none).unwrap(), None);
    }

    #[test]
    fn a_pacing_cap_is_set_on_the_socket_and_lifted_again() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let read = |fd| {
            let mut v: u64 = 0;
            let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
            // SAFETY: a live u64 and its size; the kernel writes at most `len` bytes.
            let r = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_MAX_PACING_RATE,
                    (&mut v as *mut u64).cast(),
                    &mut len,
                )
            };
            assert_eq!(r, 0);
            v
        };
        use std::os::fd::AsRawFd;
        set_max_pacing_rate(c.as_raw_fd(), Some(1_250_000)).unwrap();
        assert_eq!(read(c.as_raw_fd()), 1_250_000);
        set_max_pacing_rate(c.as_raw_fd(), None).unwrap();
        assert_eq!(read(c.as_raw_fd()), u64::MAX);
    }

    #[test]
    fn two_reuseport_listeners_share_a_port() {
        let a = reuseport_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = local_addr(a.as_raw_fd()).unwrap();
        let b = reuseport_listener(addr, 16).unwrap();
        assert_eq!(local_addr(b.as_raw_fd()).unwrap(), addr);
    }
}
