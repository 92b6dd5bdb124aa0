//! Struct offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux): where the
//! kernel program finds a socket's network namespace, and whether the socket layout the
//! raw and BTF programs compile in holds on this kernel.
use std::{fs, path::Path};

/// Why the kernel's types did not give an offset.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("parsing BTF: {0}")]
    Parse(String),
    #[error("no struct {0} in BTF")]
    NoStruct(String),
    #[error("{ty}.{path}: {reason}")]
    Field {
        ty: String,
        path: String,
        reason: String,
    },
    #[error("{what} at {actual}, not {expected}")]
    Layout {
        what: String,
        actual: u32,
        expected: u32,
    },
}

/// Offsets the kernel program needs to read `sk->__sk_common.skc_net.net->ns.inum`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetnsOffsets {
    pub sk_net: u32,
    pub net_inum: u32,
}

/// Offsets the raw- and BTF-tracepoint programs read beyond the `sock_common` head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawOffsets {
    pub sk_protocol: u32,
    pub inet_saddr: u32,
    pub inet_sport: u32,
}

/// The `struct sock_common` head layout compiled into the raw and BTF programs (field,
/// offset); a kernel with another layout gets the classic tracepoint.
const SOCK_COMMON_HEAD: [(&str, u32); 8] = [
    ("__sk_common.skc_daddr", 0),
    ("__sk_common.skc_rcv_saddr", 4),
    ("__sk_common.skc_dport", 12),
    ("__sk_common.skc_num", 14),
    ("__sk_common.skc_family", 16),
    ("__sk_common.skc_net.net", 48),
    ("__sk_common.skc_v6_daddr", 56),
    ("__sk_common.skc_v6_rcv_saddr", 72),
];

/// How the running kernel names its drop reasons (`enum skb_drop_reason`) and reset
/// reasons (`enum sk_rst_reason`), by value: their numbers change between kernels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReasonNames {
    pub drops: Vec<(u32, String)>,
    pub resets: Vec<(u32, String)>,
}

/// The running kernel's type information.
pub struct KernelTypes(btfparse::TypeInformation);

impl KernelTypes {
    pub fn read(vmlinux_btf: &Path) -> Result<Self, BtfError> {
        struct Buffer(Vec<u8>);
        impl btfparse::Readable for Buffer {
            fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                let bytes = start
                    .checked_add(buffer.len())
                    .and_then(|end| self.0.get(start..end))
                    .ok_or_else(|| {
                        btfparse::Error::new(btfparse::ErrorKind::EOF, "read past the end of BTF")
                    })?;
                buffer.copy_from_slice(bytes);
                Ok(())
            }
        }
        let data = fs::read(vmlinux_btf).map_err(|e| BtfError::Read {
            path: vmlinux_btf.display().to_string(),
            reason: e.to_string(),
        })?;
        btfparse::TypeInformation::new(&Buffer(data))
            .map(Self)
            .map_err(|e| BtfError::Parse(format!("{e:?}")))
    }

    /// Byte offset of `path` (dotted members) inside `struct ty`.
    pub fn byte_offset(&self, ty: &str, path: &str) -> Result<u32, BtfError> {
        let id = self
            .0
            .id_of(ty)
            .ok_or_else(|| BtfError::NoStruct(ty.to_owned()))?;
        let field = |reason: String| BtfError::Field {
            ty: ty.to_owned(),
            path: path.to_owned(),
            reason,
        };
        match self.0.offset_of(id, path) {
            Ok((_, btfparse::Offset::ByteOffset(off))) => Ok(off),
            Ok((_, other)) => Err(field(format!("a bitfield ({other:?})"))),
            Err(e) => Err(field(format!("{e:?}"))),
        }
    }

    pub fn netns_offsets(&self) -> Result<NetnsOffsets, BtfError> {
        Ok(NetnsOffsets {
            sk_net: self.byte_offset("sock", "__sk_common.skc_net.net")?,
            net_inum: self.byte_offset("net", "ns.inum")?,
        })
    }

    /// `sk_buff.dev` and `net_device.nd_net.net`: a packet's namespace through its device.
    pub fn skb_offsets(&self) -> Result<(u32, u32), BtfError> {
        Ok((
            self.byte_offset("sk_buff", "dev")?,
            self.byte_offset("net_device", "nd_net.net")?,
        ))
    }

    /// `sk_buff.cb` and, inside it, `tcp_skb_cb.tcp_gso_segs`: how many segments a TCP
    /// packet stands for (what the kernel adds to RetransSegs when it is sent again).
    pub fn gso_segs_offsets(&self) -> Result<(u32, u32), BtfError> {
        Ok((
            self.byte_offset("sk_buff", "cb")?,
            self.byte_offset("tcp_skb_cb", "tcp_gso_segs")?,
        ))
    }

    /// `tcp_sock.segs_out`: a connection's segments sent in all, retransmissions included
    /// (what tcp_info's `tcpi_segs_out` reports).
    pub fn segs_out_offset(&self) -> Result<u32, BtfError> {
        self.byte_offset("tcp_sock", "segs_out")
    }

    /// `sk_buff.head` and `sk_buff.network_header`: where a packet's IP header is.
    pub fn skb_header_offsets(&self) -> Result<(u32, u32), BtfError> {
        Ok((
            self.byte_offset("sk_buff", "head")?,
            self.byte_offset("sk_buff", "network_header")?,
        ))
    }

    /// The names of `enum name`'s values, by value, with `prefix` taken off and in lower
    /// case (`SKB_DROP_REASON_NETFILTER_DROP` -> `netfilter_drop`): what this kernel calls
    /// them, as their numbers change between kernels.
    pub fn enum_names(&self, name: &str, prefix: &str) -> Result<Vec<(u32, String)>, BtfError> {
        let id = self
            .0
            .id_of(name)
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))?;
        let Some(btfparse::TypeVariant::Enum(e)) = self.0.from_id(id) else {
            return Err(BtfError::NoStruct(format!("enum {name}")));
        };
        Ok(e.named_value_list()
            .iter()
            .map(|v| {
                let value = match v.value {
                    btfparse::Integer32Value::Signed(n) => n as u32,
                    btfparse::Integer32Value::Unsigned(n) => n,
                };
                let short = v.name.strip_prefix(prefix).unwrap_or(&v.name);
                (value, short.to_ascii_lowercase())
            })
            .collect())
    }

    /// The raw and BTF programs' offsets, or why this kernel's layout does not fit them.
    pub fn raw_offsets(&self) -> Result<RawOffsets, BtfError> {
        let expect = |what: String, actual: u32, expected: u32| {
            if actual == expected {
                Ok(())
            } else {
                Err(BtfError::Layout {
                    what,
                    actual,
                    expected,
                })
            }
        };
        for (field, expected) in SOCK_COMMON_HEAD {
            expect(
                format!("sock.{field}"),
                self.byte_offset("sock", field)?,
                expected,
            )?;
        }
        // Each read at its own offset: where inet_sport sits differs between kernels
        // (6 bytes after inet_saddr since 6.x regrouped them, 20 on 6.1).
        let inet_saddr = self.byte_offset("inet_sock", "inet_saddr")?;
        let inet_sport = self.byte_offset("inet_sock", "inet_sport")?;
        // The BTF program reads them through a tcp_sock pointer.
        expect(
            "tcp_sock's inet_saddr (as in inet_sock)".into(),
            self.byte_offset("tcp_sock", "inet_conn.icsk_inet.inet_saddr")?,
            inet_saddr,
        )?;
        expect(
            "tcp_sock's inet_sport (as in inet_sock)".into(),
            self.byte_offset("tcp_sock", "inet_conn.icsk_inet.inet_sport")?,
            inet_sport,
        )?;
        Ok(RawOffsets {
            sk_protocol: self.byte_offset("sock", "sk_protocol")?,
            inet_saddr,
            inet_sport,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_offsets_come_from_this_kernel() {
        let btf = Path::new("/sys/kernel/btf/vmlinux");
        if !btf.exists() {
            return;
        }
        let types = KernelTypes::read(btf).expect("readable BTF");
        let offsets = types
            .netns_offsets()
            .expect("BTF has struct sock and struct net");
        // The raw program's compiled-in layout holds on this kernel (x86-64, 6.x).
        let raw = types
            .raw_offsets()
            .expect("sock_common head as compiled in");
        assert!(
            raw.sk_protocol > 88
                && raw.inet_saddr > raw.sk_protocol
                && raw.inet_sport > raw.inet_saddr,
            "{raw:?}"
        );
        // skc_net sits inside sock_common, well within the first cache lines.
        assert!(offsets.sk_net > 0 && offsets.sk_net < 128, "{offsets:?}");
        assert!(offsets.net_inum < 4096, "{offsets:?}");
        let (skb_dev, dev_net) = types.skb_offsets().expect("sk_buff.dev and nd_net");
        let (cb, gso_segs) = types
            .gso_segs_offsets()
            .expect("sk_buff.cb and tcp_gso_segs");
        assert!(cb > 0 && gso_segs < 48, "{cb} {gso_segs}");
        let segs_out = types.segs_out_offset().expect("tcp_sock.segs_out");
        assert!(
            segs_out > 1000,
            "{segs_out}: past struct sock inside tcp_sock"
        );
        assert!(
            skb_dev > 0 && skb_dev < 64 && dev_net > 0,
            "{skb_dev} {dev_net}"
        );
        assert!(matches!(
            types.byte_offset("no_such_struct", "x"),
            Err(BtfError::NoStruct(_))
        ));
    }
}
