//! Who is submitting: the Unix user behind a local connection, from the kernel. Both
//! doors use it (the submission socket, and SMTP clients on this host), and intake
//! carries what it found into the log and the limits.
//!
//! For the submission socket the kernel gives uid, gid and pid (SO_PEERCRED); the
//! process's command line and working directory, and its parent's, come from /proc.
//! For a TCP connection from this host, the kernel's socket table (/proc/net/tcp, the
//! same data `ss -e` shows) says which user owns the client's socket.
//!
//! # Security
//!
//! This is attribution, not authentication: it tells the log who sent a message, and
//! lets limits count per user. It never grants a right (relaying over TCP still needs
//! AUTH). /proc is read when the connection is accepted, while the peer is still
//! connected; a process can change its own command line, so `cmd` is what the process
//! claims about itself, while `uid` is what the kernel knows.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// Longest command line kept for logs.
const MAX_CMD: usize = 400;

/// A process as /proc shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: i32,
    /// The command line, arguments separated by spaces.
    pub cmd: String,
    pub cwd: Option<String>,
    pub ppid: Option<i32>,
}

/// A Unix user, resolved through the system's user database (NSS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixUser {
    pub uid: u32,
    /// The login name, or the number when the uid has no entry.
    pub name: String,
    /// The first field of the GECOS entry: the user's full name, often empty.
    pub full_name: String,
}

/// Everything known about a client of the submission socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalClient {
    pub user: UnixUser,
    pub gid: u32,
    pub process: Option<Process>,
    /// The process that ran `sendmail`: PHP, cron, a shell script. A `sh -c` wrapper
    /// (PHP runs `sendmail_path` through one) is skipped for the process behind it.
    pub parent: Option<Process>,
}

impl LocalClient {
    /// Gathers what the kernel and /proc say about a peer. Blocking (NSS, /proc).
    pub fn from_peer(uid: u32, gid: u32, pid: Option<i32>) -> LocalClient {
        let proc_root = Path::new("/proc");
        // A pid can be reused once its process is gone: /proc must show the same uid
        // the kernel gave for the socket, or its details belong to someone else.
        let process = pid
            .filter(|&p| process_uid(proc_root, p) == Some(uid))
            .and_then(|p| read_process(proc_root, p));
        let parent = process.as_ref().and_then(|p| originator(proc_root, p));
        LocalClient {
            user: UnixUser::lookup(uid),
            gid,
            process,
            parent,
        }
    }
}

impl UnixUser {
    /// Looks the uid up; blocking (NSS may ask a directory server).
    pub fn lookup(uid: u32) -> UnixUser {
        match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
            Ok(Some(user)) => UnixUser {
                uid,
                name: user.name,
                full_name: user
                    .gecos
                    .to_string_lossy()
                    .split(',')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string(),
            },
            _ => UnixUser {
                uid,
                name: uid.to_string(),
                full_name: String::new(),
            },
        }
    }
}

/// The parent of `process`, looking through up to two `sh -c` wrappers.
fn originator(proc_root: &Path, process: &Process) -> Option<Process> {
    let mut current = read_process(proc_root, process.ppid.filter(|&p| p > 1)?)?;
    for _ in 0..2 {
        if !is_shell_wrapper(&current.cmd) {
            break;
        }
        match current
            .ppid
            .filter(|&p| p > 1)
            .and_then(|p| read_process(proc_root, p))
        {
            Some(up) => current = up,
            None => break,
        }
    }
    Some(current)
}

fn is_shell_wrapper(cmd: &str) -> bool {
    let mut words = cmd.split(' ');
    let shell = words.next().unwrap_or("");
    let shell = shell.rsplit('/').next().unwrap_or(shell);
    matches!(shell, "sh" | "bash" | "dash") && words.next() == Some("-c")
}

/// Reads `/proc/PID`: command line, working directory, parent pid. `None` when the
/// process is gone or unreadable.
pub fn read_process(proc_root: &Path, pid: i32) -> Option<Process> {
    let dir = proc_root.join(pid.to_string());
    let raw = std::fs::read(dir.join("cmdline")).ok()?;
    let mut cmd = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ");
    if cmd.len() > MAX_CMD {
        let cut = (0..=MAX_CMD)
            .rev()
            .find(|&i| cmd.is_char_boundary(i))
            .unwrap_or(0);
        cmd.truncate(cut);
    }
    let cwd = std::fs::read_link(dir.join("cwd"))
        .ok()
        .map(|p| p.display().to_string());
    let ppid = std::fs::read_to_string(dir.join("status"))
        .ok()
        .and_then(|status| parse_ppid(&status));
    Some(Process {
        pid,
        cmd,
        cwd,
        ppid,
    })
}

/// The real uid of a process, from /proc/PID/status.
fn process_uid(proc_root: &Path, pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn parse_ppid(status: &str) -> Option<i32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The uid owning the client end of a TCP connection made from this host: the socket
/// whose local address is our peer and whose remote address is our local address.
/// `None` when the peer is elsewhere or the lookup fails; the session then goes on
/// without it.
///
/// "From this host" is not only loopback: a client may bind one of the host's own
/// addresses and connect to it, and a dual-stack (`[::]`) listener sees IPv4 clients as
/// `::ffff:127.0.0.1`. Both are canonicalised and looked up like loopback, so that no
/// local client escapes its uid's limits or has its failed logins blamed on an address
/// every site shares.
pub fn local_owner(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    let (peer, local) = (canonical(peer), canonical(local));
    if !is_from_this_host(peer.ip(), local.ip()) {
        return None;
    }
    sock_diag_owner(peer, local).or_else(|| proc_net_owner(peer, local))
}

/// IPv4-mapped IPv6 addresses as the IPv4 addresses they are.
pub fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

/// Whether a client at `peer` (canonical) connected from this host.
pub fn is_from_this_host(peer: IpAddr, local: IpAddr) -> bool {
    peer.is_loopback() || peer == local || host_addresses().contains(&peer)
}

/// The addresses of this host's interfaces, re-read at most every few seconds (an
/// address added at run time is seen soon, and a busy MX does not ask the kernel per
/// connection).
fn host_addresses() -> Vec<IpAddr> {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    const FRESH_FOR: Duration = Duration::from_secs(10);
    static CACHE: Mutex<Option<(Instant, Vec<IpAddr>)>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((read, addresses)) = cache.as_ref()
        && read.elapsed() < FRESH_FOR
    {
        return addresses.clone();
    }
    let addresses: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .map(|all| {
            all.filter_map(|ifaddr| {
                let address = ifaddr.address?;
                if let Some(v4) = address.as_sockaddr_in() {
                    return Some(IpAddr::V4(v4.ip()));
                }
                address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            })
            .collect()
        })
        .unwrap_or_default();
    *cache = Some((Instant::now(), addresses.clone()));
    addresses
}

/// Asks the kernel for exactly one socket (NETLINK_SOCK_DIAG, as `ss -e` does): its
/// cost does not grow with the number of sockets on the host, unlike reading the
/// whole /proc/net/tcp table.
fn sock_diag_owner(local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
    use netlink_packet_sock_diag::SockDiagMessage;
    use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
    use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
    use netlink_sys::protocols::NETLINK_SOCK_DIAG;

    let mut socket = netlink_sys::Socket::new(NETLINK_SOCK_DIAG).ok()?;
    socket.bind_auto().ok()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0)).ok()?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let request = InetRequest {
        family: if local.is_ipv4() { AF_INET } else { AF_INET6 },
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id: SocketId {
            source_port: local.port(),
            destination_port: remote.port(),
            source_address: local.ip(),
            destination_address: remote.ip(),
            interface_id: 0,
            // All ones: "no cookie", look the socket up by its addresses.
            cookie: [0xff; 8],
        },
    };
    let mut packet = NetlinkMessage::new(header, SockDiagMessage::InetRequest(request).into());
    packet.finalize();
    let mut out = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut out[..]);
    socket.send(&out, 0).ok()?;
    let mut answer = vec![0u8; 8192];
    let n = socket.recv(&mut &mut answer[..], 0).ok()?;
    let message = NetlinkMessage::<SockDiagMessage>::deserialize(answer.get(..n)?).ok()?;
    match message.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
            Some(response.header.uid)
        }
        _ => None,
    }
}

/// The same answer from the /proc/net/tcp{,6} table, where netlink is not allowed.
fn proc_net_owner(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    let table = match peer.ip() {
        IpAddr::V4(_) => "/proc/net/tcp",
        IpAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(table).ok()?;
    find_socket_owner(&text, peer, local)
}

/// Searches a /proc/net/tcp{,6} table for the socket `local` → `remote`.
pub fn find_socket_owner(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (l, r, uid) = (fields.get(1)?, fields.get(2)?, fields.get(7)?);
        (parse_endpoint(l)? == local && parse_endpoint(r)? == remote)
            .then(|| uid.parse().ok())
            .flatten()
    })
}

/// `0100007F:0CEA` (IPv4) or 32 hex digits and a port (IPv6). Addresses are printed as
/// native-endian 32-bit words.
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(addr)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&word(addr.get(i * 8..i * 8 + 8)?)?);
            }
            let v6 = Ipv6Addr::from(bytes);
            // A v4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex4(ip: [u8; 4]) -> String {
        format!("{:08X}", u32::from_ne_bytes(ip))
    }

    #[test]
    fn finds_the_owner_of_a_loopback_socket() {
        let table = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: {}:024B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0\n   1: {}:D431 {}:024B 01 00000000:00000000 00:00000000 00000000  1001        0 2 1 0\n",
            hex4([127, 0, 0, 1]),
            hex4([127, 0, 0, 1]),
            hex4([127, 0, 0, 1]),
        );
        let client: SocketAddr = "127.0.0.1:54321".parse().unwrap();
        let server: SocketAddr = "127.0.0.1:587".parse().unwrap();
        assert_eq!(find_socket_owner(&table, client, server), Some(1001));
        let other: SocketAddr = "127.0.0.1:54322".parse().unwrap();
        assert_eq!(find_socket_owner(&table, other, server), None);
    }

    #[test]
    fn parses_ipv6_endpoints() {
        let mut words = String::new();
        for chunk in Ipv6Addr::LOCALHOST.octets().chunks(4) {
            words.push_str(&format!(
                "{:08X}",
                u32::from_ne_bytes(chunk.try_into().unwrap())
            ));
        }
        let parsed = parse_endpoint(&format!("{words}:0050")).unwrap();
        assert_eq!(parsed, "[::1]:80".parse().unwrap());
    }

    #[test]
    fn garbage_tables_give_none() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(find_socket_owner("junk\nmore junk here\n", a, a), None);
        assert_eq!(parse_endpoint("ZZZZ:1"), None);
    }

    #[test]
    fn shell_wrappers_are_recognised() {
        assert!(is_shell_wrapper("sh -c /usr/sbin/sendmail -t -i"));
        assert!(is_shell_wrapper("/bin/sh -c sendmail"));
        assert!(!is_shell_wrapper("php /var/www/contact.php"));
        assert!(!is_shell_wrapper("bash /home/u/cron.sh"));
    }

    #[test]
    fn reads_our_own_process() {
        let me = read_process(Path::new("/proc"), std::process::id() as i32).unwrap();
        assert!(!me.cmd.is_empty());
        assert!(me.ppid.is_some());
        assert_eq!(parse_ppid("Name:\tx\nPPid:\t42\n"), Some(42));
        let me_uid = nix::unistd::getuid().as_raw();
        assert_eq!(
            process_uid(Path::new("/proc"), std::process::id() as i32),
            Some(me_uid)
        );
        let other =
            LocalClient::from_peer(me_uid.wrapping_add(1), 0, Some(std::process::id() as i32));
        assert!(
            other.process.is_none(),
            "a pid whose uid differs is not trusted"
        );
    }

    #[test]
    fn netlink_and_the_proc_table_agree() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server_side, peer) = listener.accept().unwrap();
        let local = listener.local_addr().unwrap();
        let me = Some(nix::unistd::getuid().as_raw());
        assert_eq!(sock_diag_owner(peer, local), me);
        assert_eq!(proc_net_owner(peer, local), me);
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(sock_diag_owner(nobody, local), None);
    }

    #[test]
    fn the_real_socket_table_attributes_our_own_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server_side, peer) = listener.accept().unwrap();
        let owner = local_owner(peer, listener.local_addr().unwrap());
        assert_eq!(owner, Some(nix::unistd::getuid().as_raw()));
        drop(client);
    }

    #[test]
    fn a_dual_stack_listener_attributes_an_ipv4_loopback_client() {
        let Ok(listener) = std::net::TcpListener::bind("[::]:0") else {
            return; // no IPv6 on this host: nothing to map
        };
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        assert!(peer.is_ipv6(), "{peer}: seen as ::ffff:127.0.0.1");
        let owner = local_owner(peer, server_side.local_addr().unwrap());
        assert_eq!(owner, Some(nix::unistd::getuid().as_raw()));
        assert_eq!(canonical(peer).ip(), client.local_addr().unwrap().ip());
    }

    #[test]
    fn remote_addresses_are_not_from_this_host() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(is_from_this_host("127.0.0.9".parse().unwrap(), local));
        assert!(!is_from_this_host("203.0.113.9".parse().unwrap(), local));
        let public: IpAddr = "198.51.100.4".parse().unwrap();
        assert!(
            is_from_this_host(public, public),
            "same address at both ends"
        );
    }
}
