//! A CPU cgroup per proxy, as Kubernetes gives each container of a pod its own.
//!
//! Without this, every thread of every process here competes in one cgroup, and Linux
//! shares a busy CPU per thread: a proxy with more threads gets more of it. That made the
//! latency columns partly a count of threads (stunnel's one per connection against the two
//! of nginx, haproxy and the sidecar) whenever this VM was short of CPU. In its own cgroup,
//! with the default weight like every other, a proxy gets the same share of a busy CPU
//! however many threads it runs, which is how a sidecar container is scheduled.
//!
//! Only cgroup v1's `cpu` controller (`/sys/fs/cgroup/cpu`), the one this machine mounts;
//! on a cgroup v2 machine [`CpuGroups::create`] says so and the bench runs without. The
//! groups live under `trellis-bench-<pid>` and are removed (their processes moved back to
//! the root group) when [`CpuGroups`] is dropped.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

const V1_CPU: &str = "/sys/fs/cgroup/cpu";

/// The bench's cgroups; dropping it removes them.
pub struct CpuGroups {
    /// The root of the `cpu` hierarchy: where processes go back to.
    root: PathBuf,
    /// `trellis-bench-<pid>`, parent of one group per proxy and one for the load.
    parent: PathBuf,
    made: Vec<PathBuf>,
}

impl CpuGroups {
    /// Creates the parent group under the cgroup v1 `cpu` hierarchy.
    pub fn create() -> anyhow::Result<Self> {
        Self::create_in(Path::new(V1_CPU))
    }

    fn create_in(root: &Path) -> anyhow::Result<Self> {
        if !root.join("cpu.shares").is_file() {
            bail!(
                "no cgroup v1 cpu controller at {} (a cgroup v2 machine, which this bench does \
                 not drive yet)",
                root.display()
            );
        }
        let parent = this_process_parent(root);
        std::fs::create_dir(&parent)
            .with_context(|| format!("creating {} (needs root)", parent.display()))?;
        Ok(Self {
            root: root.to_owned(),
            parent: parent.clone(),
            made: vec![parent],
        })
    }

    /// Moves the processes `pids` (each with all its threads) into a new group `name`.
    /// Processes they start later start in it too.
    pub fn place(&mut self, name: &str, pids: &[u32]) -> anyhow::Result<()> {
        let group = self.parent.join(name);
        std::fs::create_dir(&group).with_context(|| format!("creating {}", group.display()))?;
        self.made.push(group.clone());
        for pid in pids {
            move_process(&group, *pid)?;
        }
        Ok(())
    }

    /// The processes in group `name`, for checking.
    #[cfg(test)]
    fn pids(&self, name: &str) -> Vec<u32> {
        read_pids(&self.parent.join(name))
    }
}

/// `trellis-bench-<pid>` under `root`: this process's parent group.
fn this_process_parent(root: &Path) -> PathBuf {
    root.join(format!("trellis-bench-{}", std::process::id()))
}

fn move_process(group: &Path, pid: u32) -> anyhow::Result<()> {
    std::fs::write(group.join("cgroup.procs"), pid.to_string())
        .with_context(|| format!("moving process {pid} into {}", group.display()))
}

fn read_pids(group: &Path) -> Vec<u32> {
    std::fs::read_to_string(group.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Removes `groups` (children before their parent: a group can be removed only when it
/// has neither processes nor children), moving what is left in them to `root`.
fn remove(root: &Path, groups: &[PathBuf]) {
    for group in groups.iter().rev() {
        for pid in read_pids(group) {
            let _ = move_process(root, pid);
        }
        if let Err(e) = std::fs::remove_dir(group) {
            eprintln!("trellis-bench: could not remove {}: {e}", group.display());
        }
    }
}

/// Removes this process's groups, if any, where [`CpuGroups`] is not dropped (the bench's
/// SIGINT handler exits the process).
pub fn remove_this_process_groups() {
    let root = Path::new(V1_CPU);
    let parent = this_process_parent(root);
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return;
    };
    let mut groups = vec![parent];
    groups.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    remove(root, &groups);
}

impl Drop for CpuGroups {
    fn drop(&mut self) {
        remove(&self.root, &self.made);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn without_a_v1_cpu_controller_it_says_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = CpuGroups::create_in(dir.path())
            .err()
            .expect("no controller");
        assert!(
            err.to_string().contains("no cgroup v1 cpu controller"),
            "{err}"
        );
    }

    /// A real process into a real group and back; skipped where this machine has no
    /// writable v1 cpu hierarchy (not root, or cgroup v2).
    #[test]
    fn places_a_real_process_and_cleans_up() {
        let Ok(mut groups) = CpuGroups::create() else {
            eprintln!("skipped: no writable cgroup v1 cpu controller here");
            return;
        };
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        groups.place("probe", &[child.id()]).expect("place");
        assert_eq!(groups.pids("probe"), vec![child.id()]);
        let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id()))
            .expect("cgroup of the child");
        assert!(cgroup.contains("/probe"), "{cgroup}");
        let parent = groups.parent.clone();
        drop(groups);
        assert!(!parent.exists(), "{} left behind", parent.display());
        let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id()))
            .expect("cgroup of the child");
        assert!(!cgroup.contains("trellis-bench-"), "{cgroup}");
        let _ = child.kill();
        let _ = child.wait();
    }
}
