//! A private PostgreSQL cluster.
//!
//! `initdb` runs once per machine into a template directory that later instances copy, so a
//! new instance costs a copy and a start-up, not a full initdb. PostgreSQL refuses to run as
//! root; as root, the cluster runs as the `postgres` OS user.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::Process;
use crate::{free_port, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);
const SUPERUSER: &str = "postgres";

/// How the instance trades durability for speed.
#[derive(Debug, Clone, Copy, Default)]
pub struct PostgresOptions {
    /// `fsync` and `synchronous_commit` on, production-sized buffers and WAL files made ahead
    /// (benchmarks, chaos runs). Tests leave it off.
    pub durable: bool,
}

/// A running PostgreSQL on a free loopback port, with trust authentication.
#[derive(Debug)]
pub struct Postgres {
    // Field order is drop order: the server stops before its directory is removed.
    process: Process,
    port: u16,
    bin: PathBuf,
    data: PathBuf,
    options: PostgresOptions,
    listen_addresses: String,
    run_as: Option<(u32, u32)>,
    _dir: TempDir,
}

impl Postgres {
    pub fn start() -> Self {
        Self::start_with(PostgresOptions::default())
    }

    pub fn start_with(options: PostgresOptions) -> Self {
        Self::start_listening(options, "127.0.0.1")
    }

    /// Like [`Postgres::start_with`], listening on `listen_addresses` (PostgreSQL's
    /// comma-separated setting; readiness is checked on the first).
    pub fn start_listening(options: PostgresOptions, listen_addresses: &str) -> Self {
        let bin = bin_dir();
        let run_as = postgres_user_if_root();
        let template = template_dir(&bin, run_as);
        let dir = tempfile::Builder::new()
            .prefix("noetl-pg-")
            .tempdir()
            .expect("creating a temp dir for PostgreSQL");
        let data = dir.path().join("data");
        run(Command::new("cp").arg("-a").arg(&template).arg(&data));
        if listen_addresses != "127.0.0.1" {
            // The template trusts loopback only; a client on another local address (a network
            // namespace behind a veth pair) connects from that address's subnet.
            append(&data.join("pg_hba.conf"), "host all all samenet trust\n");
        }
        chown_tree(dir.path(), run_as);
        // A port can be taken between choosing it and binding it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let command = server_command(&bin, &data, port, options, listen_addresses, run_as);
            let mut process = Process::spawn_stopped_by(command, libc::SIGQUIT);
            let host = first_address(listen_addresses);
            if wait_ready(&bin, host, port, &mut process) {
                if options.durable {
                    preallocate_wal(&bin, host, port);
                }
                return Self {
                    process,
                    port,
                    bin,
                    data,
                    options,
                    listen_addresses: listen_addresses.to_owned(),
                    run_as,
                    _dir: dir,
                };
            }
        }
        panic!(
            "PostgreSQL did not start; see {}",
            data.join("postgres.log").display()
        );
    }

    /// `pg_ctl stop -m immediate`: every backend quits at once without a checkpoint, as in a
    /// crash; the next start runs crash recovery from the WAL.
    pub fn stop_immediate(&mut self) {
        let mut pg_ctl = Command::new(self.bin.join("pg_ctl"));
        pg_ctl
            .args(["stop", "-m", "immediate", "-D"])
            .arg(&self.data)
            .stdout(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            pg_ctl.uid(uid).gid(gid);
        }
        run(&mut pg_ctl);
        self.process.kill();
    }

    /// Starts the server again on the same port and data directory, and waits until it accepts
    /// connections.
    pub fn restart(&mut self) {
        self.process.kill();
        let command = server_command(
            &self.bin,
            &self.data,
            self.port,
            self.options,
            &self.listen_addresses,
            self.run_as,
        );
        self.process = Process::spawn_stopped_by(command, libc::SIGQUIT);
        let host = first_address(&self.listen_addresses);
        assert!(
            wait_ready(&self.bin, host, self.port, &mut self.process),
            "PostgreSQL did not restart; see {}",
            self.data.join("postgres.log").display()
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log (in its data directory, which goes when it is dropped).
    pub fn log_path(&self) -> PathBuf {
        self.data.join("postgres.log")
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    pub fn create_database(&self, name: &str) {
        run(Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-U", SUPERUSER, "-p"])
            .arg(self.port.to_string())
            .arg(name));
    }

    /// Creates `<prefix>_0 … <prefix>_{count-1}` and returns the matching `NOETL_SHARDS` value
    /// (URL form for even shards, key/value form for odd ones, so both forms are exercised).
    pub fn create_shards(&self, prefix: &str, count: u32) -> String {
        (0..count)
            .map(|i| {
                let name = format!("{prefix}_{i}");
                self.create_database(&name);
                if i % 2 == 0 {
                    self.url(&name)
                } else {
                    format!(
                        "host=127.0.0.1;port={};user={SUPERUSER};database={name}",
                        self.port
                    )
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn append(path: &Path, line: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .unwrap_or_else(|e| panic!("failed to append to {}: {e}", path.display()));
}

fn first_address(listen_addresses: &str) -> &str {
    listen_addresses
        .split(',')
        .next()
        .unwrap_or("127.0.0.1")
        .trim()
}

/// Whether the server came up (`false`: it exited during start-up).
fn wait_ready(bin: &Path, host: &str, port: u16, process: &mut Process) -> bool {
    wait_for("PostgreSQL to accept connections", TIMEOUT, || {
        if !process.is_running() {
            return Some(false);
        }
        is_ready(bin, host, port).then_some(true)
    })
}

/// WAL files (of 16 MiB) a durable instance keeps for reuse, and makes at start.
const WAL_SEGMENTS_KEPT: usize = 64;

/// Leaves a durable instance's WAL as on a database that has been running: after a checkpoint
/// PostgreSQL renames old WAL files for reuse (up to `min_wal_size`), while a fresh cluster
/// creates each new 16 MiB file by writing zeros and syncing it, holding the WAL write lock
/// meanwhile. Under a benchmark's load that was a new file every two seconds and a stall of
/// every commit for the 20–30 ms the write took here, a part of the submits' p99.
/// So: switch to a new WAL file `WAL_SEGMENTS_KEPT` times (each switch needs a record written
/// since the last), then checkpoint, which turns those files into recycled ones.
fn preallocate_wal(bin: &Path, host: &str, port: u16) {
    let mut psql = Command::new(bin.join("psql"));
    psql.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        host,
        "-U",
        SUPERUSER,
        "-p",
    ])
    .arg(port.to_string())
    .args(["-d", "postgres", "-c", "CREATE TABLE wal_warmup (n int)"]);
    for n in 0..WAL_SEGMENTS_KEPT {
        psql.args(["-c", &format!("INSERT INTO wal_warmup VALUES ({n})")])
            .args(["-c", "SELECT pg_switch_wal()"]);
    }
    run(psql.args(["-c", "DROP TABLE wal_warmup", "-c", "CHECKPOINT"]));
}

fn server_command(
    bin: &Path,
    data: &Path,
    port: u16,
    options: PostgresOptions,
    listen_addresses: &str,
    run_as: Option<(u32, u32)>,
) -> Command {
    let durability = if options.durable { "on" } else { "off" };
    let mut command = Command::new(bin.join("postgres"));
    command
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string()])
        .arg("-c")
        .arg(format!("listen_addresses={listen_addresses}"))
        .arg("-c")
        .arg(format!("unix_socket_directories={}", data.display()))
        .args(["-c", &format!("fsync={durability}")])
        .args(["-c", &format!("synchronous_commit={durability}")])
        .args(["-c", &format!("full_page_writes={durability}")])
        .args(["-c", "max_connections=300"])
        .args(["-c", "logging_collector=off"])
        // The benchmark measures dispatch latency from the commit of the submit's transaction
        // (`pg_xact_commit_timestamp`), not from its start.
        .args(["-c", "track_commit_timestamp=on"])
        .stdout(Stdio::null())
        .stderr(log_file(&data.join("postgres.log")));
    if options.durable {
        // Sized as a production shard would be, not PostgreSQL's defaults for a small box: a
        // cache that holds the hot part of a shard of millions of executions, and WAL room for
        // bursts without a checkpoint (and its full-page images) every few seconds.
        command
            .args(["-c", "shared_buffers=1GB"])
            .args(["-c", "max_wal_size=4GB"])
            .args(["-c", &format!("min_wal_size={}MB", WAL_SEGMENTS_KEPT * 16)]);
    }
    if let Some((uid, gid)) = run_as {
        command.uid(uid).gid(gid);
    }
    command
}

/// Appends, so a restarted server's log follows the crashed one's.
fn log_file(path: &Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

fn is_ready(bin: &Path, host: &str, port: u16) -> bool {
    Command::new(bin.join("pg_isready"))
        .args(["-q", "-h", host, "-p", &port.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The newest PostgreSQL server binaries: `NOETL_PG_BIN`, else `/usr/lib/postgresql/<v>/bin`,
/// else whatever `initdb` on `PATH` belongs to.
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("NOETL_PG_BIN") {
        return PathBuf::from(dir);
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .max_by_key(|(version, _)| *version);
    if let Some((_, bin)) = newest {
        return bin;
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path).find(|dir| dir.join("initdb").exists() && dir.join("postgres").exists())
        })
        .expect("PostgreSQL server binaries not found: install postgresql (`make test` does) or set NOETL_PG_BIN")
}

fn postgres_user_if_root() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    // `id -u postgres` and `id -g postgres`.
    let id = |flag: &str, missing: &str| -> u32 {
        let output = Command::new("id")
            .args([flag, SUPERUSER])
            .output()
            .expect("running id");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{missing}"))
    };
    let uid = id(
        "-u",
        "running as root needs a `postgres` OS user (the postgresql package creates it)",
    );
    let gid = id("-g", "postgres OS user has a group");
    Some((uid, gid))
}

/// The initdb'd template, made once per PostgreSQL version and user and then only copied.
fn template_dir(bin: &Path, run_as: Option<(u32, u32)>) -> PathBuf {
    let version = bin
        .parent()
        .and_then(Path::file_name)
        .and_then(OsStr::to_str)
        .unwrap_or("path");
    let owner = run_as.map_or_else(|| "self".to_owned(), |(uid, _)| uid.to_string());
    let root = std::env::temp_dir().join(format!("noetl-pg-template-{version}-{owner}"));
    if root.join("PG_VERSION").exists() {
        return root;
    }
    let staging = tempfile::Builder::new()
        .prefix("noetl-pg-template-staging-")
        .tempdir()
        .expect("creating a staging dir for initdb");
    chown_tree(staging.path(), run_as);
    let data = staging.path().join("data");
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .args([
            "-A",
            "trust",
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(&data)
        .stdout(Stdio::null());
    if let Some((uid, gid)) = run_as {
        initdb.uid(uid).gid(gid);
    }
    run(&mut initdb);
    // Another test may have won the race; its template is as good as ours.
    if std::fs::rename(&data, &root).is_err() && !root.join("PG_VERSION").exists() {
        panic!(
            "could not install the PostgreSQL template at {}",
            root.display()
        );
    }
    root
}

fn chown_tree(path: &Path, run_as: Option<(u32, u32)>) {
    if let Some((uid, gid)) = run_as {
        run(Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(path));
    }
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("failed to run {:?}: {e}", command.get_program()));
    assert!(
        output.status.success(),
        "{:?} failed: {}",
        command,
        String::from_utf8_lossy(&output.stderr)
    );
}
