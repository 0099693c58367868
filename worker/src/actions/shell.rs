//! `shell`: runs a program on the worker's host; refused unless the worker was started with
//! `--allow-shell`.
//!
//! `with.argv` is `[program, arg, …]`, executed directly: no shell parses it, so `$`, `;`,
//! `*` or quotes in an argument reach the program as they are. Optional `with.timeout_ms`
//! bounds the run (the step's own timeout always applies). The child gets no stdin and only
//! `PATH`, `HOME`, `LANG` and `TZ` from the worker's environment, which may hold credentials.
//!
//! Exit code 0 succeeds with `{exit_code, stdout, stderr, stdout_truncated, stderr_truncated}`,
//! each output capped at `max_output_bytes` (lossy UTF-8); any other exit fails the step with
//! an error naming the exit code and carrying the capped stderr. A child still running when
//! the attempt ends (timeout, cancellation) is killed.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{arguments, capped_text, optional_count, Action, ActionContext, ActionResult};

/// Environment variables a child inherits; everything else of the worker's is withheld.
const PASSED_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];

#[derive(Debug)]
pub struct Shell {
    allowed: bool,
    max_output_bytes: usize,
}

impl Shell {
    pub fn new(allowed: bool, max_output_bytes: usize) -> Self {
        Self {
            allowed,
            max_output_bytes,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    argv: Vec<String>,
    #[serde(default, deserialize_with = "optional_count")]
    timeout_ms: Option<u64>,
}

impl Action for Shell {
    fn name(&self) -> &'static str {
        "shell"
    }

    fn run<'a>(&'a self, with: &'a Value, _ctx: &'a ActionContext) -> BoxFuture<'a, ActionResult> {
        Box::pin(async move {
            if !self.allowed {
                return Err("the shell action is disabled on this worker \
                            (start it with --allow-shell to run programs)"
                    .to_owned());
            }
            let args: Args = arguments(self.name(), with)?;
            match args.timeout_ms {
                Some(ms) => tokio::time::timeout(Duration::from_millis(ms), self.spawn(&args.argv))
                    .await
                    .map_err(|_| format!("timed out after {ms} ms"))?,
                None => self.spawn(&args.argv).await,
            }
        })
    }
}

impl Shell {
    async fn spawn(&self, argv: &[String]) -> ActionResult {
        let Some((program, rest)) = argv.split_first().filter(|(p, _)| !p.is_empty()) else {
            return Err("invalid arguments for shell: argv must start with a program".to_owned());
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(rest)
            .env_clear()
            .envs(
                PASSED_ENV
                    .iter()
                    .filter_map(|name| Some((name, std::env::var_os(name)?))),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("failed to start {program:?}: {e}"))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err("the child's output pipes are missing".to_owned());
        };
        let max = self.max_output_bytes;
        let (stdout, stderr, status) = tokio::join!(
            read_capped(stdout, max),
            read_capped(stderr, max),
            child.wait()
        );
        let status = status.map_err(|e| format!("failed to wait for {program:?}: {e}"))?;
        let read = |output: std::io::Result<Vec<u8>>, which: &str| {
            output
                .map(|bytes| capped_text(bytes, max))
                .map_err(|e| format!("failed to read the {which} of {program:?}: {e}"))
        };
        let (stdout, stdout_truncated) = read(stdout, "stdout")?;
        let (stderr, stderr_truncated) = read(stderr, "stderr")?;
        match status.code() {
            Some(0) => Ok(json!({
                "exit_code": 0,
                "stdout": stdout,
                "stderr": stderr,
                "stdout_truncated": stdout_truncated,
                "stderr_truncated": stderr_truncated,
            })),
            Some(code) if stderr.is_empty() => Err(format!("exit code {code}")),
            Some(code) => Err(format!("exit code {code}; stderr: {stderr}")),
            None => Err(format!(
                "killed by signal {}",
                status.signal().map_or("?".to_owned(), |s| s.to_string())
            )),
        }
    }
}

/// Reads to the end, keeping at most `max + 1` bytes (the extra byte tells that output was cut
/// off). Reading on past the cap keeps a chatty child from blocking on a full pipe.
async fn read_capped(mut reader: impl AsyncRead + Unpin, max: usize) -> std::io::Result<Vec<u8>> {
    let keep = max.saturating_add(1);
    let mut kept = Vec::new();
    let mut buffer = [0_u8; 8 * 1024];
    loop {
        let n = reader.read(&mut buffer).await?;
        if n == 0 {
            return Ok(kept);
        }
        let room = keep - kept.len();
        kept.extend_from_slice(&buffer[..n.min(room)]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::run_attempt;
    use super::*;

    fn allowed() -> Shell {
        Shell::new(true, 1024)
    }

    async fn run(shell: &Shell, with: Value) -> ActionResult {
        run_attempt(shell, with, 1).await
    }

    #[tokio::test]
    async fn shell_is_refused_unless_allowed() {
        let error = run(&Shell::new(false, 1024), json!({"argv": ["true"]}))
            .await
            .expect_err("refused");
        assert!(error.contains("--allow-shell"), "{error}");
    }

    #[tokio::test]
    async fn argv_reaches_the_program_without_shell_interpretation() {
        let result = run(&allowed(), json!({"argv": ["echo", "$HOME; ls", "*"]}))
            .await
            .expect("echo succeeds");
        assert_eq!(result["stdout"], "$HOME; ls *\n");
        assert_eq!(result["exit_code"], 0);
        assert_eq!(result["stdout_truncated"], false);
    }

    #[tokio::test]
    async fn a_failing_or_overlong_program_fails_the_step_saying_why() {
        for (with, expected) in [
            (
                json!({"argv": ["sh", "-c", "echo out; echo broken >&2; exit 3"]}),
                "exit code 3; stderr: broken\n",
            ),
            (json!({"argv": ["sh", "-c", "exit 4"]}), "exit code 4"),
            (
                json!({"argv": ["sleep", "600"], "timeout_ms": 50}),
                "timed out after 50 ms",
            ),
        ] {
            let error = run(&allowed(), with.clone()).await.expect_err("fails");
            assert_eq!(error, expected, "{with}");
        }
    }

    #[tokio::test]
    async fn output_is_capped_and_the_rest_drained() {
        // 200 KB is more than a pipe holds: the child only exits if the worker keeps reading.
        let result = run(
            &allowed(),
            json!({"argv": ["sh", "-c", "head -c 200000 /dev/zero | tr '\\0' x; echo done >&2"]}),
        )
        .await
        .expect("succeeds");
        assert_eq!(result["stdout"], "x".repeat(1024));
        assert_eq!(result["stdout_truncated"], true);
        assert_eq!(result["stderr"], "done\n");
        assert_eq!(result["stderr_truncated"], false);
    }

    #[tokio::test]
    async fn a_missing_program_or_empty_argv_is_a_clear_error() {
        let error = run(&allowed(), json!({"argv": ["no-such-program-noetl"]}))
            .await
            .expect_err("missing");
        assert!(error.starts_with("failed to start"), "{error}");
        let error = run(&allowed(), json!({"argv": []}))
            .await
            .expect_err("empty");
        assert!(error.contains("argv must start with a program"), "{error}");
    }
}
