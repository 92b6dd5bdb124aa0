//! The listeners a host is expected to have: one `[ADDR:]PORT [PROCESS]` per line
//! (`22 sshd`, `0.0.0.0:80 nginx`, `[::1]:53`, `8080`), `#` starting a comment. A
//! listener no line allows is unexpected. Pure.
use std::net::IpAddr;

use super::canonical_ip;

/// One allowed listener: its port, and the address and process when the line names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    pub addr: Option<IpAddr>,
    pub port: u16,
    pub process: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    pub entries: Vec<Allowed>,
}

/// A line that is not `[ADDR:]PORT [PROCESS]`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: '{text}' is not [ADDR:]PORT [PROCESS] ({why})")]
pub struct AllowlistError {
    pub line: usize,
    pub text: String,
    pub why: &'static str,
}

fn endpoint(text: &str) -> Result<(Option<IpAddr>, u16), &'static str> {
    let port = |p: &str| p.parse::<u16>().map_err(|_| "the port is not 0-65535");
    if let Some(rest) = text.strip_prefix('[') {
        let (addr, port_text) = rest
            .split_once("]:")
            .ok_or("an IPv6 address is written [ADDR]:PORT")?;
        let addr: IpAddr = addr.parse().map_err(|_| "not an IP address")?;
        return Ok((Some(addr), port(port_text)?));
    }
    match text.rsplit_once(':') {
        // A bare IPv6 address has colons of its own: it needs its brackets.
        Some((addr, _)) if addr.contains(':') => Err("an IPv6 address is written [ADDR]:PORT"),
        Some((addr, port_text)) => {
            let addr: IpAddr = addr.parse().map_err(|_| "not an IP address")?;
            Ok((Some(addr), port(port_text)?))
        }
        None => Ok((None, port(text)?)),
    }
}

impl Allowlist {
    pub fn parse(text: &str) -> Result<Self, AllowlistError> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let error = |why| AllowlistError {
                line: i + 1,
                text: line.to_owned(),
                why,
            };
            let mut words = line.split_whitespace();
            let (addr, port) = endpoint(words.next().unwrap_or("")).map_err(error)?;
            let process = words.next().map(str::to_owned);
            if words.next().is_some() {
                return Err(error("more than two words"));
            }
            entries.push(Allowed {
                addr: addr.map(canonical_ip),
                port,
                process,
            });
        }
        Ok(Self { entries })
    }

    /// Whether a listener on `addr:port` held by `processes` (names; empty when not
    /// known) is allowed. A line naming a process allows only a listener known to be
    /// held by it.
    pub fn allows(&self, addr: IpAddr, port: u16, processes: &[&str]) -> bool {
        let addr = canonical_ip(addr);
        self.entries.iter().any(|e| {
            e.port == port
                && e.addr.is_none_or(|a| a == addr)
                && e.process.as_deref().is_none_or(|p| processes.contains(&p))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lines_name_a_port_and_maybe_an_address_and_a_process() {
        let list = Allowlist::parse(
            "# the web tier\n22 sshd\n0.0.0.0:80 nginx   # public\n[::1]:53\n\n8080\n127.0.0.1:5432 postgres\n",
        )
        .unwrap();
        assert_eq!(list.entries.len(), 5);
        assert!(list.allows(ip("0.0.0.0"), 22, &["sshd"]));
        assert!(!list.allows(ip("0.0.0.0"), 22, &["nc"]), "another process");
        assert!(!list.allows(ip("0.0.0.0"), 22, &[]), "owner unknown");
        assert!(list.allows(ip("0.0.0.0"), 80, &["nginx"]));
        assert!(!list.allows(ip("::"), 80, &["nginx"]), "another address");
        assert!(list.allows(ip("::1"), 53, &["dnsmasq"]));
        assert!(list.allows(ip("10.1.2.3"), 8080, &[]));
        assert!(list.allows(ip("::ffff:127.0.0.1"), 5432, &["postgres"]));
        assert!(!list.allows(ip("0.0.0.0"), 9999, &["python3"]));
    }

    #[test]
    fn a_bad_line_is_named_by_its_number() {
        for (text, line, why) in [
            ("22\nhttp nginx\n", 2, "the port is not 0-65535"),
            ("1.2.3.4:99999\n", 1, "the port is not 0-65535"),
            ("#\n\n::1:53\n", 3, "an IPv6 address is written [ADDR]:PORT"),
            ("[::1]53\n", 1, "an IPv6 address is written [ADDR]:PORT"),
            ("example.com:80\n", 1, "not an IP address"),
            ("80 nginx extra\n", 1, "more than two words"),
        ] {
            let e = Allowlist::parse(text).unwrap_err();
            assert_eq!((e.line, e.why), (line, why), "{text:?}");
        }
        assert_eq!(Allowlist::parse("# nothing\n").unwrap().entries, vec![]);
    }
}
