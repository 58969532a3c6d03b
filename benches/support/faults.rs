//! Page-fault counts of this process, shared by the benches (each includes this file with
//! `#[path = "support/faults.rs"] mod faults;`).

use std::io;

/// Minor plus major page faults of this process so far.
pub fn process_faults() -> io::Result<u64> {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage for the kernel to fill.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((usage.ru_minflt as u64).wrapping_add(usage.ru_majflt as u64))
}
