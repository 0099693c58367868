//! Child processes that die with the test that started them.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output};

/// Makes the child receive `signal` when the thread that spawned it exits.
pub(crate) fn die_with_parent(command: &mut Command, signal: libc::c_int) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent; this is the
    // documented way to tie a child's lifetime to its parent's.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// A spawned process, stopped (SIGKILL unless said otherwise) and reaped on drop.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// Sent on drop, and by the kernel when the spawning thread exits.
    stop_signal: libc::c_int,
}

impl Process {
    pub fn spawn(command: Command) -> Self {
        Self::spawn_stopped_by(command, libc::SIGKILL)
    }

    /// Like [`Process::spawn`], with `signal` instead of SIGKILL on drop and when the parent
    /// dies: for a process that must take its own children down with it. PostgreSQL's
    /// postmaster ends every backend on SIGQUIT (its immediate shutdown) and exits once they are
    /// gone; after SIGKILL its backends run on until they notice, and one busy in a long
    /// statement does not notice (one ran for 40 minutes after a benchmark was stopped).
    pub fn spawn_stopped_by(mut command: Command, signal: libc::c_int) -> Self {
        let program = command.get_program().to_string_lossy().into_owned();
        let child = die_with_parent(&mut command, signal)
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {program}: {e}"));
        Self {
            child,
            stop_signal: signal,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL now, as a crash would; waits until the process is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.stop_signal == libc::SIGKILL || !self.is_running() {
            self.kill();
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill has no memory effects; the child is not reaped yet (is_running), so
            // its pid cannot have been reused.
            unsafe { libc::kill(pid, self.stop_signal) };
        }
        let _ = self.child.wait();
    }
}

/// Runs `command` to its end and returns its output; the error says what went wrong: `what`
/// could not start, or it failed (with its exit status and stderr).
pub fn run(command: &mut Command, what: &str) -> Result<Output, String> {
    let output = command
        .output()
        .map_err(|e| format!("{what} could not start: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(output)
}

/// Path of a binary of this workspace built in the same profile as the running executable
/// (a test in `target/<profile>/deps/`, or a tool in `target/<profile>/`).
/// `make test` and `make bench` build every binary first.
pub fn cargo_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running binary knows its own path");
    let mut profile_dir = exe.parent().expect("binaries live in a directory");
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir = profile_dir.parent().expect("deps/ has a parent");
    }
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`; `make test` does)",
        path.display()
    );
    path
}
