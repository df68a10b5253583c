//! Network isolation of one Kafka node for the `isolate_broker` fault, with nftables on the
//! loopback interface: packets to and from the node's client and controller ports are dropped,
//! and, where the machine has cgroup v2, every packet the node's own sockets send (its
//! connections to the other nodes use ephemeral ports, which no port rule can name).
//!
//! The rules live in a table of their own, `inet saga_harness_<run id>`, removed when the
//! [`IsolationRules`] guard is lifted or dropped, so an error, a panic or an interrupted run
//! never leaves a rule behind (a leftover rule would cut the machine's loopback for that port).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where nftables resolves `socket cgroupv2` paths from.
const NFT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A cgroup v2 group of one Kafka node, so firewall rules can name the node's sockets.
#[derive(Debug)]
pub struct NodeCgroup {
    /// Its folder under the cgroup v2 mount.
    dir: PathBuf,
    /// Its path as nftables names it (relative to /sys/fs/cgroup).
    nft_path: String,
    /// Its depth in the cgroup v2 hierarchy.
    level: usize,
}

impl NodeCgroup {
    /// Creates the group `name` at the top of the cgroup v2 hierarchy; `None` if the machine
    /// has no writable cgroup v2 mount under /sys/fs/cgroup.
    pub fn create(name: &str) -> Option<Self> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        // mountinfo: id parent major:minor root mount-point options ... - fstype source options
        let (root, mount_point) = mountinfo.lines().find_map(|line| {
            let (fields, tail) = line.split_once(" - ")?;
            if tail.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let fields: Vec<&str> = fields.split_whitespace().collect();
            Some((fields.get(3)?.to_string(), PathBuf::from(fields.get(4)?)))
        })?;
        let relative_mount = mount_point.strip_prefix(NFT_CGROUP_ROOT).ok()?;
        let dir = mount_point.join(name);
        std::fs::create_dir_all(&dir).ok()?;
        let nft_path = relative_mount.join(name).display().to_string();
        let depth_of_mount = Path::new(&root).components().count().saturating_sub(1);
        Some(Self {
            dir,
            nft_path,
            level: depth_of_mount + 1,
        })
    }

    /// The file a process writes its id into to join the group.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Drop for NodeCgroup {
    fn drop(&mut self) {
        // The node's process may still be exiting; an empty group can be removed.
        for _ in 0..40 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Fails with what to install if `nft` cannot be run.
pub fn require_nft() -> anyhow::Result<()> {
    let runs = Command::new("nft")
        .args(["list", "tables"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match runs {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => anyhow::bail!(
            "the isolate_broker fault needs nftables, and `nft list tables` failed ({}); run the harness as root, or leave that fault out (--fault ...)",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(_) => anyhow::bail!(
            "the isolate_broker fault needs the nft command: install the nftables package (apt-get install -y nftables), or leave that fault out (--fault ...)"
        ),
    }
}

/// The ruleset that cuts off a node: its ports in both directions on the loopback interface,
/// and whatever its own sockets send.
fn ruleset(table: &str, ports: &[u16], cgroup: Option<&NodeCgroup>) -> String {
    let ports = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    let own_sockets = cgroup
        .map(|group| {
            format!(
                "        oifname \"lo\" socket cgroupv2 level {} \"{}\" drop\n",
                group.level, group.nft_path
            )
        })
        .unwrap_or_default();
    format!(
        "table inet {table} {{\n\
         \x20   chain input {{\n\
         \x20       type filter hook input priority -10; policy accept;\n\
         \x20       iifname \"lo\" tcp dport {{ {ports} }} drop\n\
         \x20       iifname \"lo\" tcp sport {{ {ports} }} drop\n\
         \x20   }}\n\
         \x20   chain output {{\n\
         \x20       type filter hook output priority -10; policy accept;\n\
         \x20       oifname \"lo\" tcp dport {{ {ports} }} drop\n\
         \x20       oifname \"lo\" tcp sport {{ {ports} }} drop\n\
         {own_sockets}\
         \x20   }}\n\
         }}\n"
    )
}

fn nft(args: &[&str], script: Option<&str>) -> anyhow::Result<()> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| anyhow::anyhow!("running nft: {error} (apt-get install -y nftables)"))?;
    if let (Some(script), Some(mut stdin)) = (script, child.stdin.take()) {
        stdin.write_all(script.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    anyhow::ensure!(
        output.status.success(),
        "nft {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// Firewall rules that cut one node off while the guard lives.
#[derive(Debug)]
pub struct IsolationRules {
    table: String,
    active: bool,
}

impl IsolationRules {
    /// Installs the rules in table `inet <table>`: `ports` dropped both ways on the loopback
    /// interface, and every packet sent from a socket of `cgroup`.
    pub fn cut_off(table: &str, ports: &[u16], cgroup: Option<&NodeCgroup>) -> anyhow::Result<Self> {
        let rules = Self {
            table: table.to_string(),
            active: true,
        };
        // Whatever happens next, the guard removes the table (nft -f is atomic: all or nothing).
        nft(&["-f", "-"], Some(&ruleset(table, ports, cgroup)))?;
        Ok(rules)
    }

    /// Removes the rules.
    pub fn lift(mut self) -> anyhow::Result<()> {
        self.active = false;
        nft(&["delete", "table", "inet", &self.table], None)
    }
}

impl Drop for IsolationRules {
    fn drop(&mut self) {
        if self.active {
            if let Err(error) = nft(&["delete", "table", "inet", &self.table], None) {
                tracing::error!(
                    error = format!("{error:#}"),
                    table = %self.table,
                    "could not remove the isolation rules; remove them with `nft delete table inet {}`",
                    self.table
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_drops_both_ports_both_ways_on_loopback_only() {
        let rules = ruleset("saga_harness_abc", &[20010, 20011], None);
        for line in [
            "iifname \"lo\" tcp dport { 20010, 20011 } drop",
            "iifname \"lo\" tcp sport { 20010, 20011 } drop",
            "oifname \"lo\" tcp dport { 20010, 20011 } drop",
            "oifname \"lo\" tcp sport { 20010, 20011 } drop",
        ] {
            assert!(rules.lines().any(|l| l.trim() == line), "missing {line:?} in\n{rules}");
        }
        assert!(rules.starts_with("table inet saga_harness_abc {"));
        assert!(!rules.contains("cgroupv2"));
    }

    #[test]
    fn with_a_cgroup_everything_the_node_sends_is_dropped_too() {
        let group = NodeCgroup {
            dir: PathBuf::from("/nonexistent"),
            nft_path: "unified/saga-harness-abc-kafka-2".into(),
            level: 1,
        };
        let rules = ruleset("t", &[1], Some(&group));
        assert!(rules
            .lines()
            .any(|l| l.trim() == "oifname \"lo\" socket cgroupv2 level 1 \"unified/saga-harness-abc-kafka-2\" drop"));
    }
}
