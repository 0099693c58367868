//! A network namespace joined to the root namespace by two veth pairs, one carrying a server's
//! traffic to NATS and one to PostgreSQL, so either can be cut on its own.
//!
//! There is no iptables or nft on the machines this runs on; setting the root end of a pair
//! down drops everything the namespace sends over it (the namespace still sees its end up, so
//! its TCP connections hang as in a real partition instead of failing fast). Processes in the
//! root namespace still reach the addresses of the root ends, which are local addresses.

use std::process::{Command, Stdio};

/// One veth pair: `host` is the address of the root end, `inner` of the namespace end.
#[derive(Debug, Clone)]
pub struct Link {
    root_end: String,
    pub host: String,
    pub inner: String,
}

/// The namespace and its two links; deleted (with both pairs) on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    pub nats: Link,
    pub postgres: Link,
}

impl Netns {
    /// Creates the namespace; fails when not root or `ip` is missing, after undoing what it did.
    pub fn create() -> anyhow::Result<Self> {
        let id = std::process::id();
        let octet = id % 250 + 1;
        let name = format!("noetl-chaos-{id}");
        let netns = Self {
            nats: Link {
                root_end: format!("nc{id}n"),
                host: format!("10.77.{octet}.1"),
                inner: format!("10.77.{octet}.2"),
            },
            postgres: Link {
                root_end: format!("nc{id}p"),
                host: format!("10.78.{octet}.1"),
                inner: format!("10.78.{octet}.2"),
            },
            name,
        };
        ip(&["netns", "add", &netns.name])?;
        netns.set_up()?;
        Ok(netns)
    }

    fn set_up(&self) -> anyhow::Result<()> {
        self.inside(&["link", "set", "lo", "up"])?;
        for link in [&self.nats, &self.postgres] {
            let inner_end = format!("{}i", link.root_end);
            ip(&[
                "link",
                "add",
                &link.root_end,
                "type",
                "veth",
                "peer",
                "name",
                &inner_end,
            ])?;
            ip(&["link", "set", &inner_end, "netns", &self.name])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/30", link.host),
                "dev",
                &link.root_end,
            ])?;
            ip(&["link", "set", &link.root_end, "up"])?;
            self.inside(&[
                "addr",
                "add",
                &format!("{}/30", link.inner),
                "dev",
                &inner_end,
            ])?;
            self.inside(&["link", "set", &inner_end, "up"])?;
        }
        Ok(())
    }

    fn inside(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Drops every packet the namespace sends over `link`.
    pub fn cut(&self, link: &Link) -> anyhow::Result<()> {
        ip(&["link", "set", &link.root_end, "down"])
    }

    pub fn heal(&self, link: &Link) -> anyhow::Result<()> {
        ip(&["link", "set", &link.root_end, "up"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys the namespace ends, and with them both pairs.
        let _ = ip(&["netns", "del", &self.name]);
        // A pair whose namespace end never got moved is still whole in the root namespace.
        for link in [&self.nats, &self.postgres] {
            let _ = ip(&["link", "del", &link.root_end]);
        }
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let mut command = Command::new("ip");
    command.args(args).stdin(Stdio::null());
    noetl_test_support::run(&mut command, &format!("ip {} (iproute2)", args.join(" ")))
        .map(drop)
        .map_err(anyhow::Error::msg)
}
