//! Who a network namespace belongs to, told from the cgroup path of a process in it: a
//! Kubernetes pod (and its container), a Docker, containerd, CRI-O, Podman or LXC
//! container, a systemd service, or the host. Pure: text in, owner out.
use std::fmt;

use serde::{Deserialize, Serialize};

/// The container runtime a cgroup path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    Containerd,
    Crio,
    Podman,
    Lxc,
}

impl Runtime {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::Crio => "cri-o",
            Self::Podman => "podman",
            Self::Lxc => "lxc",
        }
    }
}

/// One container.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Container {
    pub runtime: Runtime,
    /// The runtime's id (64 hex digits for most; a name for LXC).
    pub id: String,
}

/// Characters of a name or path shown in text before it is cut with an ellipsis.
pub const SHOWN_NAME_MAX: usize = 64;
pub const SHOWN_PATH_MAX: usize = 120;

impl Container {
    /// The id as text shows it: 12 hex digits, as `docker ps` does, or an LXC name made
    /// printable (its owner chose it) and cut when long.
    pub fn shown(&self) -> String {
        match self.runtime {
            Runtime::Lxc => super::printable_clipped(&self.id, SHOWN_NAME_MAX).into_owned(),
            _ => super::printable_clipped(short(&self.id), 12).into_owned(),
        }
    }
}

/// Who owns a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Owner {
    /// The initial network namespace.
    Host,
    /// A Kubernetes pod: its UID from the kubepods cgroup, and the container seen.
    Pod {
        uid: String,
        container: Option<Container>,
        /// The pod's name when known (its hostname).
        name: Option<String>,
    },
    Container {
        container: Container,
        /// Its hostname when known.
        name: Option<String>,
    },
    /// A systemd unit outside any container (a service with PrivateNetwork=, say).
    Service { unit: String },
    /// A cgroup path none of the above explains.
    Unknown { cgroup: String },
}

impl Owner {
    /// Adds a name (the hostname of a process in the namespace) to pods and containers.
    pub fn named(self, hostname: Option<String>) -> Self {
        match self {
            Self::Pod { uid, container, .. } => Self::Pod {
                uid,
                container,
                name: hostname,
            },
            Self::Container { container, .. } => Self::Container {
                container,
                name: hostname,
            },
            other => other,
        }
    }
}

/// The first 12 characters of a container id, as `docker ps` shows them.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Text shows every field escaped (they come from paths and files others control) and
/// cut when long.
impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let printable = |s: &str| super::printable_clipped(s, SHOWN_NAME_MAX).into_owned();
        match self {
            Self::Host => f.write_str("host"),
            Self::Pod {
                uid,
                container,
                name,
            } => {
                match name {
                    Some(name) => write!(f, "pod {}", printable(name))?,
                    None => write!(f, "pod uid {}", printable(uid))?,
                }
                if let Some(c) = container {
                    write!(f, " (container {})", c.shown())?;
                }
                Ok(())
            }
            Self::Container { container, name } => {
                write!(
                    f,
                    "{} container {}",
                    container.runtime.name(),
                    container.shown()
                )?;
                if let Some(name) = name {
                    write!(f, " ({})", printable(name))?;
                }
                Ok(())
            }
            Self::Service { unit } => write!(f, "service {}", printable(unit)),
            Self::Unknown { cgroup } => write!(
                f,
                "cgroup {}",
                super::printable_clipped(cgroup, SHOWN_PATH_MAX)
            ),
        }
    }
}

fn is_hex_id(s: &str) -> bool {
    s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A container id inside one path component: `docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`, or a bare id.
fn container_in(component: &str) -> Option<Container> {
    let scope = component.strip_suffix(".scope").unwrap_or(component);
    for (prefix, runtime) in [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("containerd-", Runtime::Containerd),
        ("crio-", Runtime::Crio),
        ("libpod-", Runtime::Podman),
    ] {
        if let Some(id) = scope.strip_prefix(prefix) {
            // conmon, the monitor process podman and CRI-O start, is not the container.
            if id.starts_with("conmon-") {
                return None;
            }
            return is_hex_id(id).then(|| Container {
                runtime,
                id: id.to_owned(),
            });
        }
    }
    None
}

/// A pod UID in one path component: `kubepods-burstable-pod<uid>.slice` (underscores
/// for dashes) or `pod<uid>`.
fn pod_in(component: &str) -> Option<String> {
    let base = component.strip_suffix(".slice").unwrap_or(component);
    let uid = base.rsplit_once("pod").map(|(_, uid)| uid)?;
    let uid = uid.replace('_', "-");
    let looks_like_uid = uid.len() >= 32 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    looks_like_uid.then_some(uid)
}

/// Who one cgroup path (of `/proc/PID/cgroup`) points to.
pub fn owner_of_path(path: &str) -> Owner {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if components.is_empty() || components == ["init.scope"] {
        return Owner::Host;
    }
    let in_kubepods = components
        .iter()
        .any(|c| *c == "kubepods" || c.starts_with("kubepods"));
    if in_kubepods {
        if let Some(uid) = components.iter().find_map(|c| pod_in(c)) {
            // cgroupfs driver: the container id is a bare component after the pod.
            let container = components.iter().rev().find_map(|c| {
                container_in(c).or_else(|| {
                    is_hex_id(c).then(|| Container {
                        runtime: Runtime::Containerd,
                        id: (*c).to_owned(),
                    })
                })
            });
            return Owner::Pod {
                uid,
                container,
                name: None,
            };
        }
    }
    if let Some(container) = components.iter().rev().find_map(|c| container_in(c)) {
        return Owner::Container {
            container,
            name: None,
        };
    }
    // cgroupfs drivers: /docker/<id>, containerd's /<namespace>/<id>, LXC's /lxc/<name>.
    match components.as_slice() {
        ["docker", id, ..] if is_hex_id(id) => {
            return Owner::Container {
                container: Container {
                    runtime: Runtime::Docker,
                    id: (*id).to_owned(),
                },
                name: None,
            }
        }
        ["lxc", name, ..] | ["lxc.payload", name, ..] => {
            return Owner::Container {
                container: Container {
                    runtime: Runtime::Lxc,
                    id: (*name).to_owned(),
                },
                name: None,
            }
        }
        [first, ..] if first.starts_with("lxc.payload.") => {
            return Owner::Container {
                container: Container {
                    runtime: Runtime::Lxc,
                    id: first.trim_start_matches("lxc.payload.").to_owned(),
                },
                name: None,
            }
        }
        [_namespace, id] if is_hex_id(id) && id.len() == 64 => {
            return Owner::Container {
                container: Container {
                    runtime: Runtime::Containerd,
                    id: (*id).to_owned(),
                },
                name: None,
            }
        }
        _ => {}
    }
    if let Some(unit) = components.iter().rev().find(|c| c.ends_with(".service")) {
        return Owner::Service {
            unit: (*unit).to_owned(),
        };
    }
    Owner::Unknown {
        cgroup: format!("/{}", components.join("/")),
    }
}

/// Who the process with this `/proc/PID/cgroup` content belongs to: the unified (v2)
/// line when there is one, else the v1 line that tells the most.
pub fn owner_of_cgroup(content: &str) -> Owner {
    let paths: Vec<(&str, &str)> = content
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((controllers, path))
        })
        .collect();
    let mut best = Owner::Host;
    // v2 first, then v1 controllers; the first that says more than "host" wins.
    let mut ordered: Vec<&(&str, &str)> = paths.iter().filter(|(c, _)| c.is_empty()).collect();
    ordered.extend(paths.iter().filter(|(c, _)| !c.is_empty()));
    for (_, path) in ordered {
        let owner = owner_of_path(path);
        match owner {
            Owner::Host => {}
            Owner::Unknown { .. } if matches!(best, Owner::Host) => best = owner,
            Owner::Unknown { .. } => {}
            decisive => return decisive,
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name and path in an owner comes from someone else: text shows each escaped
    /// and bounded, for every kind of owner.
    #[test]
    fn hostile_names_are_escaped_and_bounded_in_text() {
        let hostile = "\x1b]0;PWN\x07\x1b[2J\u{202e}x";
        let long = "/".to_owned() + &"a".repeat(3600);
        let owners = [
            owner_of_path(&format!("/lxc/{hostile}")),
            owner_of_path(&format!("/lxc.payload.{hostile}")),
            owner_of_path(&format!("/lxc/{}", "n".repeat(500))),
            owner_of_path(&format!("/system.slice/{hostile}.service")),
            owner_of_path(&format!("/weird/{hostile}")),
            owner_of_path(&long),
            owner_of_path(&format!("/system.slice/docker-{}.scope", "a".repeat(64)))
                .named(Some(hostile.to_owned())),
            owner_of_path("/kubepods.slice/kubepods-pod0f1e2d3c_4b5a_6978_8a9b_0c1d2e3f4a5b.slice")
                .named(Some(hostile.to_owned())),
        ];
        let kinds: std::collections::BTreeSet<&str> = owners
            .iter()
            .map(|o| match o {
                Owner::Host => "host",
                Owner::Pod { .. } => "pod",
                Owner::Container { container, .. } => container.runtime.name(),
                Owner::Service { .. } => "service",
                Owner::Unknown { .. } => "unknown",
            })
            .collect();
        assert_eq!(kinds.len(), 5, "{kinds:?}");
        for owner in &owners {
            let text = owner.to_string();
            assert!(
                !text
                    .chars()
                    .any(|c| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c)),
                "{text:?}"
            );
            assert!(
                text.chars().count() <= 160,
                "{} characters: {text}",
                text.len()
            );
        }
        // The JSON keeps them whole.
        let json = serde_json::to_string(&owners[0]).unwrap();
        assert!(json.contains("\\u001b]0;PWN\\u0007"), "{json}");
        assert!(serde_json::to_string(&owners[5]).unwrap().len() > 3600);
    }

    const ID: &str = "3f2a8c1e9b7d4f6a0c5e2b8d1f4a7c9e3b6d0f2a5c8e1b4d7f0a3c6e9b2d5f8a";
    const UID: &str = "0d3b8f2a-1c4e-4f6a-9b7d-2e5c8a1f4b7d";

    fn pod(container: Option<(Runtime, &str)>) -> Owner {
        Owner::Pod {
            uid: UID.into(),
            container: container.map(|(runtime, id)| Container {
                runtime,
                id: id.into(),
            }),
            name: None,
        }
    }

    #[test]
    fn kubernetes_pods_with_the_systemd_driver_on_cgroup_v2() {
        let uid = UID.replace('-', "_");
        for (runtime, scope) in [
            (Runtime::Containerd, format!("cri-containerd-{ID}.scope")),
            (Runtime::Crio, format!("crio-{ID}.scope")),
            (Runtime::Docker, format!("docker-{ID}.scope")),
        ] {
            for qos in [
                format!("kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice"),
                format!("kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice"),
                format!("kubepods-pod{uid}.slice"),
            ] {
                let path = format!("0::/kubepods.slice/{qos}/{scope}\n");
                assert_eq!(owner_of_cgroup(&path), pod(Some((runtime, ID))), "{path}");
            }
        }
    }

    #[test]
    fn kubernetes_pods_with_the_cgroupfs_driver_on_cgroup_v1() {
        let content = format!(
            "12:pids:/kubepods/burstable/pod{UID}/{ID}\n\
             11:memory:/kubepods/burstable/pod{UID}/{ID}\n\
             1:name=systemd:/kubepods/burstable/pod{UID}/{ID}\n"
        );
        assert_eq!(
            owner_of_cgroup(&content),
            pod(Some((Runtime::Containerd, ID)))
        );
        // The pause container's cgroup, or a pod-level one: the pod, no container.
        assert_eq!(owner_of_path(&format!("/kubepods/pod{UID}")), pod(None));
    }

    #[test]
    fn docker_containerd_podman_and_lxc() {
        let docker = Owner::Container {
            container: Container {
                runtime: Runtime::Docker,
                id: ID.into(),
            },
            name: None,
        };
        assert_eq!(
            owner_of_cgroup(&format!("0::/system.slice/docker-{ID}.scope\n")),
            docker
        );
        assert_eq!(
            owner_of_cgroup(&format!(
                "4:cpu,cpuacct:/docker/{ID}\n1:name=systemd:/docker/{ID}\n"
            )),
            docker
        );
        let podman = owner_of_path(&format!("/machine.slice/libpod-{ID}.scope/container"));
        assert!(
            matches!(&podman, Owner::Container { container, .. } if container.runtime == Runtime::Podman)
        );
        let rootless = owner_of_path(&format!(
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
        ));
        assert!(
            matches!(&rootless, Owner::Container { container, .. } if container.runtime == Runtime::Podman)
        );
        // conmon is podman's monitor, not the container.
        assert!(matches!(
            owner_of_path(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            Owner::Unknown { .. }
        ));
        let ctr = owner_of_path(&format!("/default/{ID}"));
        assert!(
            matches!(&ctr, Owner::Container { container, .. } if container.runtime == Runtime::Containerd)
        );
        let lxc = owner_of_path("/lxc.payload.web01/system.slice");
        assert_eq!(lxc.to_string(), "lxc container web01");
    }

    #[test]
    fn services_the_host_and_the_rest() {
        assert_eq!(owner_of_cgroup("0::/\n"), Owner::Host);
        assert_eq!(owner_of_cgroup("0::/init.scope\n"), Owner::Host);
        assert_eq!(
            owner_of_cgroup("0::/system.slice/nginx.service\n"),
            Owner::Service {
                unit: "nginx.service".into()
            }
        );
        assert_eq!(
            owner_of_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n"),
            Owner::Unknown {
                cgroup: "/user.slice/user-1000.slice/session-3.scope".into()
            }
        );
        assert_eq!(owner_of_cgroup(""), Owner::Host);
        assert_eq!(owner_of_cgroup("garbage"), Owner::Host);
    }

    #[test]
    fn owners_read_well_in_messages() {
        let p = pod(Some((Runtime::Containerd, ID))).named(Some("payments-7d9".into()));
        assert_eq!(p.to_string(), "pod payments-7d9 (container 3f2a8c1e9b7d)");
        assert_eq!(pod(None).to_string(), format!("pod uid {UID}"));
        let evil = Owner::Service {
            unit: "x\u{1b}[2J.service".into(),
        };
        assert_eq!(evil.to_string(), "service x\\e[2J.service");
    }
}
