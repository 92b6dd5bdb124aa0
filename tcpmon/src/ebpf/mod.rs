//! The kernel side, seen from user space: loading and attaching the programs
//! ([`Probe`]), the struct offsets they need ([`btf`]), the filesystems loading may need
//! ([`mounts`]), the rings records arrive in ([`ringbuf`], [`slots`], merged in time order
//! by [`order`] and read as one stream by [`rings`]) and the records' decoding
//! ([`decode`]).
//!
//! The object is built by build.rs (aya-build) and embedded; [`Probe::load`] sets its
//! globals (netns filter, struct offsets from BTF), attaches the hooks and hands back the
//! rings. [`Probe::detach`] (or dropping the probe) detaches every program.
pub mod btf;
pub mod decode;
pub mod format;
pub mod mounts;
pub mod order;
pub mod ringbuf;
pub mod rings;
pub mod slots;

use std::{
    fs, io,
    os::fd::{AsFd, AsRawFd},
    path::Path,
};

use aya::{
    maps::{MapData, PerCpuArray},
    programs::{
        cgroup_skb::CgroupSkbLinkId,
        links::CgroupAttachMode,
        trace_point::{TracePointLink, TracePointLinkId},
        BtfTracePoint, CgroupSkb, CgroupSkbAttachType, ProgramError, ProgramFd, RawTracePoint,
        TracePoint,
    },
    Btf, Ebpf, EbpfLoader,
};
use tcpmon_common::{counter, names, tracepoints, DEFAULT_RING_BYTES, RING_COUNT};

use self::{
    btf::{BtfError, KernelTypes, ReasonNames},
    mounts::{MountError, Tracefs},
    ringbuf::RingReader,
    slots::{SlotLayout, SlotRings},
};
use crate::host::netns;

/// The kernel object tcpmon-ebpf compiles to (empty when built with AYA_BUILD_SKIP=1).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpmon"));

/// Why the live engine cannot run; each message is one line an operator can act on.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LoadError {
    #[error("this tcpmon was built without its eBPF program (AYA_BUILD_SKIP=1); build it with the eBPF toolchain (`cargo xtask run` installs it) for live transitions")]
    NoObject,
    #[error("not permitted to load eBPF ({0}): run as root, or grant CAP_BPF and CAP_PERFMON")]
    Permission(String),
    #[error("the kernel has no tracepoint {0} ({1})")]
    MissingTracepoint(&'static str, String),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("the kernel verifier rejected tcpmon's program ({0}); RUST_LOG=debug shows the log")]
    Verifier(String),
    #[error("loading the eBPF program failed: {0}")]
    Other(String),
}

impl LoadError {
    fn classify(context: &str, err: impl std::error::Error) -> Self {
        let text = chain(&err);
        if let Some((head, log)) = text.split_once("Verifier output:") {
            log::debug!("verifier log for {context}:{log}");
            let last = log
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| {
                    !l.is_empty()
                        && !l.starts_with(':')
                        && !["processed", "verification time", "stack depth"]
                            .iter()
                            .any(|p| l.starts_with(p))
                })
                .unwrap_or("");
            return LoadError::Verifier(format!(
                "{context}: {} {}",
                head.trim_end_matches(['.', ' ']),
                last.trim()
            ));
        }
        if text.contains("Operation not permitted")
            || text.contains("EPERM")
            || text.contains("Permission denied")
        {
            LoadError::Permission(format!("{context}: {text}"))
        } else {
            LoadError::Other(format!("{context}: {text}"))
        }
    }
}

/// An error and its causes on one line, each said once: aya's errors often repeat their
/// source's text in their own.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Why the SYN counter could not be loaded, attached or detached.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SynCounterError {
    #[error("the SYN counter program is missing from the object")]
    Missing,
    #[error(transparent)]
    Cgroup(#[from] MountError),
    #[error(transparent)]
    Kernel(#[from] LoadError),
}

/// Which network namespaces' events to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetnsFilter {
    All,
    Only(u32),
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub netns: NetnsFilter,
    pub ring_bytes: u32,
    /// Also attach tcp:tcp_retransmit_synack and load the cgroup skb SYN counter.
    pub synack: bool,
    /// Also attach tcp:tcp_retransmit_skb, tcp:tcp_send_reset and tcp:tcp_receive_reset.
    pub failures: bool,
    /// Which hook delivers the state changes.
    pub state_hook: StateHook,
    /// State transitions go through per-CPU slot rings (see tcpmon_common::Slot)
    /// instead of the ring buffers. Only on x86-64: the kernel side publishes a slot with
    /// plain stores, which only x86's store order makes safe.
    pub slot_rings: bool,
}

/// The three ways to hook sock:inet_sock_set_state, cheapest first. All three produce the
/// same records (a root test holds them to it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StateHook {
    /// The first of btf, raw, classic that loads, saying why the others did not.
    #[default]
    Auto,
    /// BTF tracepoint: the socket is a typed pointer, fields are plain loads.
    Btf,
    /// Raw tracepoint: the socket is an address, read with bpf_probe_read_kernel.
    Raw,
    /// Classic tracepoint: the kernel fills a trace record first; needs tracefs.
    Classic,
}

impl StateHook {
    pub fn describe(self) -> &'static str {
        match self {
            StateHook::Auto => "first that loads",
            StateHook::Btf => "BTF tracepoint",
            StateHook::Raw => "raw tracepoint",
            StateHook::Classic => "classic tracepoint",
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            netns: NetnsFilter::All,
            ring_bytes: DEFAULT_RING_BYTES,
            synack: true,
            failures: true,
            state_hook: StateHook::Auto,
            slot_rings: cfg!(target_arch = "x86_64"),
        }
    }
}

/// Loss and filter counters summed over CPUs, plus the kernel's own count of runs it
/// skipped (recursion_misses in the program's fdinfo).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelCounters {
    pub submitted: u64,
    pub ringbuf_full: u64,
    pub netns_unreadable: u64,
    pub other_netns: u64,
    /// Transitions dropped because the socket could not be read.
    pub sock_unreadable: u64,
    pub recursion_misses: u64,
}

impl KernelCounters {
    /// Events the kernel could not deliver.
    pub fn lost(&self) -> u64 {
        self.ringbuf_full + self.recursion_misses + self.sock_unreadable
    }
}

/// A loaded, attached kernel program.
pub struct Probe {
    /// Keeps programs and links alive; `None` once detached (the rings and counters,
    /// taken out of it, stay readable).
    ebpf: Option<Ebpf>,
    /// The rings CPUs write to (see [`RingLayout`]), for the caller to take.
    pub rings: Vec<RingReader>,
    pub ring_layout: RingLayout,
    /// The per-CPU slot rings of state transitions, when used, for the caller to take.
    pub slot_rings: Option<SlotRings>,
    counters: PerCpuArray<MapData, u64>,
    program_fds: Vec<std::os::fd::OwnedFd>,
    /// Things worth telling the operator once (e.g. "mounted tracefs").
    pub notes: Vec<String>,
    pub netns_readable: bool,
    /// The root cgroup the SYN counter attaches to, when it loaded.
    syn_cgroup: Option<fs::File>,
    /// Its link while attached (SYN_REQUEST records arrive).
    syn_link: Option<CgroupSkbLinkId>,
    /// Which hook delivers the state changes (never `Auto`).
    pub state_hook: StateHook,
    /// The kernel's names of its drop and reset reasons.
    pub reason_names: ReasonNames,
    /// The failure programs' links: detached in parallel (each waits out a grace period).
    failure_links: Vec<(&'static str, TracePointLinkId)>,
}

/// Loads the SYN counter and opens the root of the cgroup v2 hierarchy, where it sees
/// the packets of every socket below it (every SYN to a listener among them). It is
/// attached and detached once here, so that a failure shows at start rather than during
/// a flood; it stays detached until SYN trouble is suspected (see
/// [`Probe::set_syn_counter`]).
fn load_syn_counter(ebpf: &mut Ebpf) -> Result<(fs::File, std::os::fd::OwnedFd), SynCounterError> {
    let cgroup = mounts::open_cgroup2_root()?;
    let prog = syn_counter_program(ebpf)?;
    prog.load().map_err(|e| LoadError::classify("loading", e))?;
    let link = attach_to(prog, &cgroup)?;
    prog.detach(link)
        .map_err(|e| LoadError::classify("detaching", e))?;
    let fd = owned_fd(prog.fd())?;
    Ok((cgroup, fd))
}

fn syn_counter_program(ebpf: &mut Ebpf) -> Result<&mut CgroupSkb, SynCounterError> {
    ebpf.program_mut(names::SYN_PROGRAM)
        .ok_or(SynCounterError::Missing)?
        .try_into()
        .map_err(|e| SynCounterError::Kernel(LoadError::Other(format!("{e}"))))
}

fn attach_to(prog: &mut CgroupSkb, cgroup: &fs::File) -> Result<CgroupSkbLinkId, LoadError> {
    // A bpf_link never displaces other programs on the cgroup; the kernel rejects
    // attach flags on link_create, so the mode must be the default.
    prog.attach(
        cgroup,
        CgroupSkbAttachType::Ingress,
        CgroupAttachMode::Single,
    )
    .map_err(|e| LoadError::classify("attaching", e))
}

/// A program's fd of its own, to read its fdinfo counters after aya's borrow ends.
fn owned_fd(fd: Result<&ProgramFd, ProgramError>) -> Result<std::os::fd::OwnedFd, LoadError> {
    fd.map_err(|e| LoadError::Other(e.to_string()))?
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| LoadError::Other(e.to_string()))
}

/// Attaches the BTF-tracepoint variant of the state program.
fn attach_btf(ebpf: &mut Ebpf) -> Result<std::os::fd::OwnedFd, LoadError> {
    let btf = Btf::from_sys_fs().map_err(|e| LoadError::Other(format!("kernel BTF: {e}")))?;
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(names::BTF_STATE_PROGRAM)
        .ok_or_else(|| LoadError::Other("BTF program missing from the object".into()))?
        .try_into()
        .map_err(|e| LoadError::Other(format!("{e}")))?;
    prog.load("inet_sock_set_state", &btf)
        .map_err(|e| LoadError::classify("loading the BTF tracepoint", e))?;
    prog.attach()
        .map_err(|e| LoadError::classify("attaching BTF inet_sock_set_state", e))?;
    owned_fd(prog.fd())
}

/// Attaches the raw-tracepoint variant of the state program.
fn attach_raw(ebpf: &mut Ebpf) -> Result<std::os::fd::OwnedFd, LoadError> {
    let prog: &mut RawTracePoint = ebpf
        .program_mut(names::RAW_STATE_PROGRAM)
        .ok_or_else(|| LoadError::Other("raw program missing from the object".into()))?
        .try_into()
        .map_err(|e| LoadError::Other(format!("{e}")))?;
    prog.load()
        .map_err(|e| LoadError::classify("loading the raw tracepoint", e))?;
    prog.attach("inet_sock_set_state")
        .map_err(|e| LoadError::classify("attaching raw inet_sock_set_state", e))?;
    owned_fd(prog.fd())
}

/// Attaches a classic tracepoint program (found through tracefs).
fn attach_classic(
    ebpf: &mut Ebpf,
    program: &str,
    category: &'static str,
    name: &'static str,
) -> Result<(std::os::fd::OwnedFd, TracePointLinkId), LoadError> {
    let prog: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| LoadError::Other(format!("program {program} missing from the object")))?
        .try_into()
        .map_err(|e| LoadError::Other(format!("{program}: {e}")))?;
    prog.load()
        .map_err(|e| LoadError::classify(&format!("loading {program}"), e))?;
    let link = prog.attach(category, name).map_err(|e| {
        let text = chain(&e);
        if text.contains("No such file") {
            LoadError::MissingTracepoint(
                match name {
                    "inet_sock_set_state" => "sock:inet_sock_set_state",
                    "tcp_retransmit_synack" => "tcp:tcp_retransmit_synack",
                    "tcp_retransmit_skb" => "tcp:tcp_retransmit_skb",
                    "tcp_send_reset" => "tcp:tcp_send_reset",
                    "kfree_skb" => "skb:kfree_skb",
                    _ => "tcp:tcp_receive_reset",
                },
                text,
            )
        } else {
            LoadError::classify(&format!("attaching {category}:{name}"), e)
        }
    })?;
    Ok((owned_fd(prog.fd())?, link))
}

/// A failure program: its name, its tracepoint, the record fields it reads, what it counts.
type FailureHook = (
    &'static str,
    &'static str,
    &'static [(&'static str, usize)],
    &'static str,
);

/// Raises RLIMIT_MEMLOCK for kernels that still charge BPF memory to it; on 6.x memcg
/// accounting makes this unnecessary, so failure is only worth a note.
fn raise_memlock() -> Option<String> {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    (rc != 0).then(|| {
        format!(
            "could not raise RLIMIT_MEMLOCK ({}); fine on kernels >= 5.11",
            io::Error::last_os_error()
        )
    })
}

impl Probe {
    pub fn load(options: &LoadOptions) -> Result<Self, LoadError> {
        if OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        let mut notes = Vec::new();
        if let Some(note) = raise_memlock() {
            log::debug!("{note}");
        }
        let types = KernelTypes::read(Path::new("/sys/kernel/btf/vmlinux"));
        let offsets = match types
            .as_ref()
            .map_err(Clone::clone)
            .and_then(KernelTypes::netns_offsets)
        {
            Ok(offsets) => Some(offsets),
            Err(e) => {
                notes.push(format!(
                    "cannot read socket namespaces ({e}): events from every namespace are shown"
                ));
                None
            }
        };
        let target = match (options.netns, offsets) {
            (NetnsFilter::Only(inode), Some(_)) => inode,
            _ => 0,
        };
        let (sk_net, net_inum) = offsets.map_or((0, 0), |o| (o.sk_net, o.net_inum));
        // A connection's segments sent, for the share of them it retransmits.
        let segs_out = match types.as_ref().map(KernelTypes::segs_out_offset) {
            Ok(Ok(offset)) => offset,
            Ok(Err(e)) if options.failures => {
                notes.push(format!("retransmit storms are judged by rate, not by their share of the segments sent ({e})"));
                0
            }
            _ => 0,
        };
        // Offsets only the failure programs read: (0, 0) and a note when BTF lacks them.
        let mut failure_offsets = |find: fn(&KernelTypes) -> Result<(u32, u32), BtfError>,
                                   without: &str| {
            match types.as_ref().map(find) {
                Ok(Ok(o)) => o,
                Ok(Err(e)) if options.failures => {
                    notes.push(format!("{without} ({e})"));
                    (0, 0)
                }
                _ => (0, 0),
            }
        };
        let (skb_cb, gso_segs) = failure_offsets(
            KernelTypes::gso_segs_offsets,
            "a retransmitted packet counts as one segment: TSO bursts are undercounted against RetransSegs",
        );
        let (skb_head, skb_network_header) = failure_offsets(
            KernelTypes::skb_header_offsets,
            "drops are not watched: a dropped packet's header cannot be found",
        );
        // Resets sent without a socket (to a closed port) are placed by the packet's device.
        let (skb_dev, dev_net) = failure_offsets(
            KernelTypes::skb_offsets,
            "resets sent to closed ports cannot be placed in a namespace: they are counted as unreadable",
        );
        // The BTF and raw programs read the socket at offsets compiled in or taken from
        // BTF; a kernel whose layout differs is left with the classic tracepoint.
        let sock_layout = match (&types, offsets) {
            (Ok(types), Some(_)) => types.raw_offsets().map_err(|e| e.to_string()),
            (Err(e), _) => Err(e.to_string()),
            (Ok(_), None) => Err("no namespace offsets".to_owned()),
        };
        let (sk_protocol, inet_saddr, inet_sport) = sock_layout
            .as_ref()
            .map_or((0, 0, 0), |r| (r.sk_protocol, r.inet_saddr, r.inet_sport));
        // The kernel's names of its drop and reset reasons, from the types already parsed.
        let reason_names = types.as_ref().map_or_else(
            |_| ReasonNames::default(),
            |types| ReasonNames {
                drops: types
                    .enum_names("skb_drop_reason", "SKB_DROP_REASON_")
                    .unwrap_or_default(),
                resets: types
                    .enum_names("sk_rst_reason", "SK_RST_REASON_")
                    .unwrap_or_default(),
            },
        );
        // The parsed types are tens of MiB; aya parses BTF again to load the BTF program,
        // so they go now rather than double the start-up peak.
        drop(types);
        let cookie = match options.netns {
            NetnsFilter::All => 0,
            NetnsFilter::Only(_) => netns::own_cookie().unwrap_or_else(|e| {
                notes.push(format!(
                    "SYN counting covers every namespace (no netns cookie: {e})"
                ));
                0
            }),
        };
        let cpus = possible_cpus();
        // With slot rings, the ring buffers carry only SYN records and doorbells: an
        // eighth of the budget, the rest buys slots.
        let slot_layout = options
            .slot_rings
            .then(|| SlotLayout::new(u64::from(options.ring_bytes) / 8 * 7, cpus as u32))
            .flatten();
        let ring_share = match slot_layout {
            Some(_) => options.ring_bytes / 8,
            None => options.ring_bytes,
        };
        let layout = RingLayout::new(ring_share, cpus, page_size());
        // Classic tracepoints are found through tracefs (the SYN-ACK one always is); what
        // tcpmon mounts for that is unmounted once they are attached.
        let tracefs = Tracefs::ensure().map_err(LoadError::from);
        if tracefs.as_ref().is_ok_and(Tracefs::mounted_here) {
            notes.push("mounted tracefs at /sys/kernel/tracing to attach, and unmounted it".into());
        }
        // Where the kernel says whether a retransmit went out (kernels that trace failed
        // ones too have an `err` field; 0: no such field, every event counts).
        let retransmit_err: u32 = format::read("tcp", "tcp_retransmit_skb")
            .ok()
            .and_then(|fields| fields.into_iter().find(|f| f.name == "err" && f.size == 4))
            .and_then(|f| u32::try_from(f.offset).ok())
            .unwrap_or(0);
        let send_reset_reason: u32 = format::read("tcp", "tcp_send_reset")
            .ok()
            .and_then(|fields| {
                fields
                    .into_iter()
                    .find(|f| f.name == "reason" && f.size == 4)
            })
            .and_then(|f| u32::try_from(f.offset).ok())
            .unwrap_or(0);
        let mut loader = EbpfLoader::new();
        for (ring, name) in names::EVENTS_MAPS.iter().enumerate() {
            loader.map_max_entries(name, layout.size_of(ring));
        }
        let slots_shift = slot_layout.map_or(0, |l| l.shift);
        if let Some(slots) = slot_layout {
            loader.map_max_entries(names::STATE_SLOTS_MAP, slots.entries().unwrap_or(1));
            loader.map_max_entries(names::STATE_CURSORS_MAP, slots.cpus);
        }
        let mut ebpf = loader
            .override_global(names::SLOTS_SHIFT, &slots_shift, true)
            .override_global(names::TARGET_NETNS, &target, true)
            .override_global(names::SK_NET_OFFSET, &sk_net, true)
            .override_global(names::NET_INUM_OFFSET, &net_inum, true)
            .override_global(names::TARGET_NETNS_COOKIE, &cookie, true)
            .override_global(names::SK_PROTOCOL_OFFSET, &sk_protocol, true)
            .override_global(names::INET_SADDR_OFFSET, &inet_saddr, true)
            .override_global(names::INET_SPORT_OFFSET, &inet_sport, true)
            .override_global(names::SKB_DEV_OFFSET, &skb_dev, true)
            .override_global(names::DEV_NET_OFFSET, &dev_net, true)
            .override_global(names::SKB_CB_OFFSET, &skb_cb, true)
            .override_global(names::GSO_SEGS_OFFSET, &gso_segs, true)
            .override_global(names::SEGS_OUT_OFFSET, &segs_out, true)
            .override_global(names::RETRANSMIT_ERR_OFFSET, &retransmit_err, true)
            .override_global(names::SEND_RESET_REASON_OFFSET, &send_reset_reason, true)
            .override_global(names::SKB_HEAD_OFFSET, &skb_head, true)
            .override_global(names::SKB_NETWORK_HEADER_OFFSET, &skb_network_header, true)
            .load(OBJECT)
            .map_err(|e| LoadError::classify("creating maps", e))?;
        let mut program_fds = Vec::new();
        let candidates: &[StateHook] = match options.state_hook {
            StateHook::Auto => &[StateHook::Btf, StateHook::Raw, StateHook::Classic],
            StateHook::Btf => &[StateHook::Btf],
            StateHook::Raw => &[StateHook::Raw],
            StateHook::Classic => &[StateHook::Classic],
        };
        let mut failed = Vec::new();
        let mut state_hook = None;
        for &hook in candidates {
            let attached = match (hook, &sock_layout, &tracefs) {
                (StateHook::Btf | StateHook::Raw, Err(e), _) => {
                    Err(LoadError::Other(format!("socket layout: {e}")))
                }
                (StateHook::Btf, Ok(_), _) => attach_btf(&mut ebpf),
                (StateHook::Raw, Ok(_), _) => attach_raw(&mut ebpf),
                (_, _, Err(e)) => Err(e.clone()),
                (_, _, Ok(_)) => attach_classic(
                    &mut ebpf,
                    names::STATE_PROGRAM,
                    "sock",
                    "inet_sock_set_state",
                )
                .map(|(fd, _)| fd),
            };
            match attached {
                Ok(fd) => {
                    program_fds.push(fd);
                    state_hook = Some(hook);
                    break;
                }
                Err(e) => failed.push((hook, e)),
            }
        }
        let Some(state_hook) = state_hook else {
            let (_, last) = failed.pop().expect("at least one hook was tried");
            return Err(last);
        };
        for (hook, e) in failed {
            notes.push(format!(
                "{} unusable ({e}): the {} is used",
                hook.describe(),
                state_hook.describe()
            ));
        }
        let mut syn_cgroup = None;
        if options.synack {
            let synack = match &tracefs {
                Ok(_) => attach_classic(
                    &mut ebpf,
                    names::SYNACK_PROGRAM,
                    "tcp",
                    "tcp_retransmit_synack",
                )
                .map(|(fd, _)| fd),
                Err(e) => Err(e.clone()),
            };
            match synack {
                Ok(fd) => program_fds.push(fd),
                Err(e) => notes.push(format!("SYN-ACK retransmits not watched: {e}")),
            }
            match load_syn_counter(&mut ebpf) {
                Ok((cgroup, fd)) => {
                    program_fds.push(fd);
                    syn_cgroup = Some(cgroup);
                }
                Err(e) => notes.push(format!(
                    "SYN arrivals not counted (cgroup skb ingress: {e}): a flood answered with \
                     SYN cookies is measured by the cookies counter alone"
                )),
            }
        }
        let mut failure_links = Vec::new();
        if options.failures {
            // (program, tracepoint, the fields it reads, what it counts)
            let hooks: [FailureHook; 4] = [
                (
                    names::RETRANSMIT_PROGRAM,
                    "tcp_retransmit_skb",
                    &tracepoints::retransmit_skb::FIELDS,
                    "retransmitted segments",
                ),
                (
                    names::SEND_RESET_PROGRAM,
                    "tcp_send_reset",
                    &tracepoints::send_reset::FIELDS,
                    "resets sent",
                ),
                (
                    names::RECEIVE_RESET_PROGRAM,
                    "tcp_receive_reset",
                    &tracepoints::receive_reset::FIELDS,
                    "resets received",
                ),
                (
                    names::DROP_PROGRAM,
                    "kfree_skb",
                    &tracepoints::kfree_skb::FIELDS,
                    "drops",
                ),
            ];
            for (program, tracepoint, fields, what) in hooks {
                let category = if tracepoint == "kfree_skb" {
                    "skb"
                } else {
                    "tcp"
                };
                let attached = match &tracefs {
                    Ok(_) if tracepoint == "kfree_skb" && skb_head == 0 => {
                        Err(LoadError::Other("no sk_buff offsets".into()))
                    }
                    Ok(_) => format::check(category, tracepoint, fields)
                        .map_err(LoadError::Other)
                        .and_then(|()| attach_classic(&mut ebpf, program, category, tracepoint)),
                    Err(e) => Err(e.clone()),
                };
                match attached {
                    Ok((fd, link)) => {
                        program_fds.push(fd);
                        failure_links.push((program, link));
                    }
                    Err(e) => notes.push(format!(
                        "{what} not watched per connection ({category}:{tracepoint}: {e}): the totals come from the kernel's counters only"
                    )),
                }
            }
        }
        drop(tracefs);
        let mut rings = Vec::with_capacity(layout.used);
        for name in &names::EVENTS_MAPS[..layout.used] {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| LoadError::Other(format!("{name} map missing")))?;
            let aya::maps::Map::RingBuf(data) = map else {
                return Err(LoadError::Other(format!("{name} is not a ring buffer")));
            };
            let reader = data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .and_then(|fd| RingReader::new(fd, layout.each as usize, layout.page as usize))
                .map_err(|e| LoadError::Other(format!("mapping {name}: {e}")))?;
            rings.push(reader);
        }
        let slot_rings = match slot_layout {
            Some(slots) => Some(
                map_slot_rings(&mut ebpf, slots)
                    .map_err(|e| LoadError::Other(format!("mapping the slot rings: {e}")))?,
            ),
            None => None,
        };
        let counters = PerCpuArray::try_from(
            ebpf.take_map(names::COUNTERS_MAP)
                .ok_or_else(|| LoadError::Other("COUNTERS map missing".into()))?,
        )
        .map_err(|e| LoadError::Other(format!("COUNTERS: {e}")))?;
        Ok(Self {
            ebpf: Some(ebpf),
            rings,
            ring_layout: layout,
            slot_rings,
            state_hook,
            counters,
            program_fds,
            notes,
            netns_readable: offsets.is_some(),
            reason_names,
            failure_links,
            syn_cgroup,
            syn_link: None,
        })
    }

    /// The SYN counter loaded (it can be attached).
    pub fn syn_counter_loaded(&self) -> bool {
        self.syn_cgroup.is_some()
    }

    /// The SYN counter is attached: SYN_REQUEST records arrive.
    pub fn syn_counter_attached(&self) -> bool {
        self.syn_link.is_some()
    }

    /// Attaches or detaches the SYN counter; a no-op when it already is, never loaded, or
    /// the probe is detached.
    pub fn set_syn_counter(&mut self, attached: bool) -> Result<(), SynCounterError> {
        let (Some(cgroup), Some(ebpf)) = (&self.syn_cgroup, self.ebpf.as_mut()) else {
            return Ok(());
        };
        let prog = syn_counter_program(ebpf)?;
        match (attached, self.syn_link.take()) {
            (true, None) => self.syn_link = Some(attach_to(prog, cgroup)?),
            (false, Some(link)) => prog
                .detach(link)
                .map_err(|e| LoadError::classify("detaching", e))?,
            (_, link) => self.syn_link = link,
        }
        Ok(())
    }

    /// Detaches every program (what they recorded stays readable in the rings and
    /// counters, which the probe keeps). Idempotent.
    pub fn detach(&mut self) {
        self.syn_link = None;
        let Some(mut ebpf) = self.ebpf.take() else {
            return;
        };
        // Closing a classic tracepoint's link waits for the kernel to be done with the
        // program (a grace period): the failure programs' are closed at the same time,
        // beside the rest, so a stop does not wait for them one after another.
        let links: Vec<TracePointLink> = self
            .failure_links
            .drain(..)
            .filter_map(|(name, id)| {
                let prog: &mut TracePoint = ebpf.program_mut(name)?.try_into().ok()?;
                prog.take_link(id).ok()
            })
            .collect();
        std::thread::scope(|scope| {
            for link in links {
                scope.spawn(move || drop(link));
            }
            drop(ebpf);
        });
    }

    /// The aya-log channel, for callers that forward kernel diagnostics to `log`.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(self.ebpf.as_mut()?).ok()
    }

    pub fn counters(&self) -> io::Result<KernelCounters> {
        let sum = |index: u32| -> io::Result<u64> {
            let per_cpu = self.counters.get(&index, 0).map_err(io::Error::other)?;
            Ok(per_cpu.iter().sum())
        };
        let mut recursion_misses = 0;
        for fd in &self.program_fds {
            recursion_misses += fdinfo_field(fd.as_raw_fd(), "recursion_misses").unwrap_or(0);
        }
        Ok(KernelCounters {
            submitted: sum(counter::SUBMITTED)?,
            ringbuf_full: sum(counter::RINGBUF_FULL)?,
            netns_unreadable: sum(counter::NETNS_UNREADABLE)?,
            other_netns: sum(counter::OTHER_NETNS)?,
            sock_unreadable: sum(counter::SOCK_UNREADABLE)?,
            recursion_misses,
        })
    }
}

/// Takes the slot and cursor maps out of the object and maps them.
fn map_slot_rings(ebpf: &mut Ebpf, layout: SlotLayout) -> io::Result<SlotRings> {
    let mut fd_of = |name: &str| -> io::Result<std::os::fd::OwnedFd> {
        let map = ebpf
            .take_map(name)
            .ok_or_else(|| io::Error::other(format!("{name} map missing")))?;
        let aya::maps::Map::Array(data) = map else {
            return Err(io::Error::other(format!("{name} is not an array")));
        };
        data.fd().as_fd().try_clone_to_owned()
    };
    let slots = fd_of(names::STATE_SLOTS_MAP)?;
    let cursors = fd_of(names::STATE_CURSORS_MAP)?;
    SlotRings::new(slots, cursors, layout)
}

/// The number of CPUs the kernel may run on (each may write records).
fn possible_cpus() -> usize {
    aya::util::nr_cpus().unwrap_or(RING_COUNT)
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// How the ring budget of `total` bytes is laid out: the first `used` rings (those
/// some CPU writes to) share it, each a power of two of `each` bytes, at least a page;
/// the other rings get one page, the least the kernel accepts, and are never read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    pub used: usize,
    pub each: u32,
    pub page: u32,
}

impl RingLayout {
    pub fn new(total: u32, cpus: usize, page: u32) -> Self {
        let used = cpus.clamp(1, RING_COUNT);
        let share = (total / used as u32).max(page);
        // The largest power of two not above the share.
        let each = (1u32 << (31 - share.leading_zeros())).max(page);
        Self { used, each, page }
    }

    pub fn size_of(&self, ring: usize) -> u32 {
        if ring < self.used {
            self.each
        } else {
            self.page
        }
    }

    /// Bytes of ring the kernel holds for records that are read.
    pub fn total(&self) -> u64 {
        u64::from(self.each) * self.used as u64
    }
}

/// Reads one `name:\tvalue` line of /proc/self/fdinfo/FD.
fn fdinfo_field(fd: i32, name: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_is_embedded_with_btf() {
        if OBJECT.is_empty() {
            // Built with AYA_BUILD_SKIP=1 on purpose: nothing to check.
            assert!(
                std::env::var("AYA_BUILD_SKIP").is_ok() || option_env!("AYA_BUILD_SKIP").is_some()
            );
            return;
        }
        assert_eq!(&OBJECT[..4], b"\x7fELF");
        assert!(OBJECT.windows(5).any(|w| w == b".BTF\0"));
    }

    #[test]
    fn ring_budget_is_shared_by_the_rings_cpus_write() {
        let two = RingLayout::new(16 << 20, 2, 4096);
        assert_eq!((two.used, two.each), (2, 8 << 20));
        assert_eq!(two.size_of(1), 8 << 20);
        assert_eq!(two.size_of(2), 4096);
        assert_eq!(two.total(), 16 << 20);
        // More CPUs than rings: every ring is used; a share that is not a power of two
        // rounds down.
        let many = RingLayout::new(16 << 20, 96, 4096);
        assert_eq!((many.used, many.each), (RING_COUNT, 2 << 20));
        let odd = RingLayout::new(16 << 20, 3, 4096);
        assert_eq!(odd.each, 4 << 20);
        // Never below a page, and a machine reporting no CPU still gets one ring.
        assert_eq!(RingLayout::new(4096, 8, 4096).each, 4096);
        assert_eq!(RingLayout::new(1 << 20, 0, 4096).used, 1);
    }

    #[test]
    fn fdinfo_fields_parse() {
        let file = fs::File::open("/proc/self/status").unwrap();
        // Every fdinfo has a pos: field.
        assert_eq!(fdinfo_field(file.as_raw_fd(), "pos"), Some(0));
        assert_eq!(fdinfo_field(file.as_raw_fd(), "no_such_field"), None);
    }
}
