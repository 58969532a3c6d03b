//! How much memory this process can use without pressure: the system's `MemAvailable`, and
//! the room left under the memory limit of the process's cgroup (v1 or v2), for the default
//! buffer size.
//!
//! Every function takes the file-system root it reads `/proc` and `/sys` under, so the tests
//! can build a fake one.

use std::fs;
use std::path::{Path, PathBuf};

/// Bytes this process can use: the smaller of `MemAvailable` and its cgroup's headroom. Falls
/// back to physical memory if `/proc/meminfo` cannot be read.
pub(crate) fn available_to_process() -> u64 {
    available_under(Path::new("/"))
}

fn available_under(root: &Path) -> u64 {
    let system = fs::read_to_string(root.join("proc/meminfo"))
        .ok()
        .and_then(|text| mem_available(&text))
        .unwrap_or_else(physical_memory);
    match cgroup_headroom(root) {
        Some(room) => system.min(room),
        None => system,
    }
}

fn physical_memory() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    if pages > 0 {
        pages as u64 * crate::sys::page_size() as u64
    } else {
        1 << 30
    }
}

/// `MemAvailable` in bytes, from the text of `/proc/meminfo`.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// A memory cgroup hierarchy this process belongs to.
#[derive(Debug, PartialEq, Eq)]
struct Hierarchy {
    v2: bool,
    /// The process's cgroup directory.
    dir: PathBuf,
    /// The hierarchy's mount point (the walk up stops there).
    mount: PathBuf,
}

/// Room left under the tightest memory limit among the process's cgroup and its ancestors,
/// in every memory hierarchy it belongs to; `None` if there is no limit.
fn cgroup_headroom(root: &Path) -> Option<u64> {
    let cgroups = fs::read_to_string(root.join("proc/self/cgroup")).ok()?;
    let mountinfo = fs::read_to_string(root.join("proc/self/mountinfo")).ok()?;
    hierarchies(root, &cgroups, &mountinfo)
        .iter()
        .filter_map(headroom_in)
        .min()
}

/// The memory hierarchies (v1 `memory` controller, v2 unified) of a process, from its
/// `/proc/self/cgroup` and `/proc/self/mountinfo`.
fn hierarchies(root: &Path, cgroups: &str, mountinfo: &str) -> Vec<Hierarchy> {
    let mut found = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let v2 = controllers.is_empty();
        if !v2 && !controllers.split(',').any(|c| c == "memory") {
            continue;
        }
        if let Some(h) = mount_of(root, mountinfo, v2, path) {
            found.push(h);
        }
    }
    found
}

/// Where cgroup `path` of the v1 memory or the v2 hierarchy is mounted.
fn mount_of(root: &Path, mountinfo: &str, v2: bool, path: &str) -> Option<Hierarchy> {
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point options [optional...] - fstype source super
        let Some((left, right)) = line.split_once(" - ") else {
            continue; // not a mount line: skip it rather than give up on the rest
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let rest: Vec<&str> = right.split(' ').collect();
        let (Some(&mount_root), Some(&mount_point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let fstype = rest.first().copied().unwrap_or("");
        let super_opts = rest.get(2).copied().unwrap_or("");
        let matches = if v2 {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup" && super_opts.split(',').any(|o| o == "memory")
        };
        if !matches {
            continue;
        }
        // The mount shows the hierarchy from `mount_root` down; the process's path must lie
        // under it (in a container, both are usually the container's own cgroup).
        let relative = if mount_root == "/" {
            path.trim_start_matches('/')
        } else {
            match path.strip_prefix(mount_root) {
                Some(rel) => rel.trim_start_matches('/'),
                None => continue,
            }
        };
        let mount = root.join(mount_point.trim_start_matches('/'));
        return Some(Hierarchy {
            v2,
            dir: mount.join(relative),
            mount,
        });
    }
    None
}

/// The tightest room under a limit from `h.dir` up to the mount point.
fn headroom_in(h: &Hierarchy) -> Option<u64> {
    let mut tightest: Option<u64> = None;
    let mut dir = h.dir.as_path();
    loop {
        if let Some(room) = level_headroom(dir, h.v2) {
            tightest = Some(tightest.map_or(room, |t| t.min(room)));
        }
        if dir == h.mount {
            break;
        }
        match dir.parent() {
            Some(parent) if parent.starts_with(&h.mount) => dir = parent,
            _ => break,
        }
    }
    tightest
}

/// Limits at or above this are "no limit" (v1 reports one as 2^63 rounded down to a page).
const UNLIMITED: u64 = 1 << 62;

/// Room under the limit of one cgroup directory: limit minus usage, where the usage leaves
/// out inactive file pages (page cache the kernel reclaims first).
fn level_headroom(dir: &Path, v2: bool) -> Option<u64> {
    let read = |name: &str| fs::read_to_string(dir.join(name)).ok();
    let number = |name: &str| read(name).and_then(|t| t.trim().parse::<u64>().ok());
    let (limit, usage, inactive_key) = if v2 {
        let limit = read("memory.max")?;
        let limit = limit.trim();
        if limit == "max" {
            return None;
        }
        (
            limit.parse::<u64>().ok()?,
            number("memory.current")?,
            "inactive_file",
        )
    } else {
        (
            number("memory.limit_in_bytes")?,
            number("memory.usage_in_bytes")?,
            "total_inactive_file",
        )
    };
    if limit >= UNLIMITED {
        return None;
    }
    let inactive = read("memory.stat")
        .and_then(|stat| {
            stat.lines()
                .find_map(|l| l.strip_prefix(inactive_key)?.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    Some(limit.saturating_sub(usage.saturating_sub(inactive)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, path: &str, text: &str) {
        let p = root.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    const MEMINFO: &str = "MemTotal:       24000000 kB\nMemFree:  100 kB\n\
                           MemAvailable:    8388608 kB\n";

    #[test]
    fn mem_available_is_read_in_bytes() {
        assert_eq!(mem_available(MEMINFO), Some(8 << 30));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn no_cgroup_files_means_mem_available() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "proc/meminfo", MEMINFO);
        assert_eq!(available_under(root.path()), 8 << 30);
    }

    #[test]
    fn cgroup_v2_takes_the_tightest_ancestor_and_ignores_inactive_files() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(r, "proc/meminfo", MEMINFO);
        write(r, "proc/self/cgroup", "0::/outer/inner\n");
        write(
            r,
            "proc/self/mountinfo",
            "garbage without the separator\n\
             24 1 0:21 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        // inner: no limit; outer: 1 GiB limit, 700 MiB used of which 200 MiB inactive file.
        write(r, "sys/fs/cgroup/outer/inner/memory.max", "max\n");
        write(r, "sys/fs/cgroup/outer/inner/memory.current", "1000\n");
        write(r, "sys/fs/cgroup/outer/memory.max", "1073741824\n");
        write(
            r,
            "sys/fs/cgroup/outer/memory.current",
            &format!("{}\n", 700 << 20),
        );
        write(
            r,
            "sys/fs/cgroup/outer/memory.stat",
            &format!("anon 1\ninactive_file {}\nactive_file 5\n", 200 << 20),
        );
        assert_eq!(available_under(r), 524 << 20);
    }

    #[test]
    fn cgroup_v1_memory_controller_with_a_container_mount_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(r, "proc/meminfo", MEMINFO);
        write(
            r,
            "proc/self/cgroup",
            "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n",
        );
        write(
            r,
            "proc/self/mountinfo",
            "30 20 0:26 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
             31 20 0:27 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct\n",
        );
        write(
            r,
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            "536870912\n",
        );
        write(r, "sys/fs/cgroup/memory/memory.usage_in_bytes", "0\n");
        assert_eq!(available_under(r), 512 << 20);
        // An unlimited v1 group (2^63 rounded down to a page) is no limit.
        write(
            r,
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        assert_eq!(available_under(r), 8 << 30);
    }

    #[test]
    fn this_process_has_some_memory_available() {
        let bytes = available_to_process();
        assert!(bytes > 16 << 20, "{bytes}");
    }
}
