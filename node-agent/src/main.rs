//! `lvs-agent`: the node agent's command line.

use std::{io::Read, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use lvs_agent::{
    import,
    ipvs::IpvsHandle,
    ipvsadm::{self, ListView},
};

#[derive(Parser)]
#[command(name = "lvs-agent", version, about = "Declarative Linux Virtual Server: the node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the kernel's IPVS table exactly as `ipvsadm -S -n` does.
    Save,
    /// Print the IPVS table like `ipvsadm -L -n`.
    List {
        /// Totals of connections, packets and bytes (`ipvsadm -Ln --stats`).
        #[arg(long, conflicts_with = "rate")]
        stats: bool,
        /// Per-second rates (`ipvsadm -Ln --rate`).
        #[arg(long, conflicts_with_all = ["timeout", "daemon"])]
        rate: bool,
        /// The connection timeouts (`ipvsadm -L --timeout`).
        #[arg(long, conflicts_with_all = ["stats", "daemon"])]
        timeout: bool,
        /// The connection-sync daemons (`ipvsadm -L --daemon`).
        #[arg(long, conflicts_with = "stats")]
        daemon: bool,
    },
    /// Apply ipvsadm rules (the `ipvsadm -R` input format) from FILE or standard
    /// input, pipelined. Every rule is attempted; failures are listed.
    Restore {
        /// Rules file; standard input when absent.
        file: Option<PathBuf>,
    },
    /// Convert ipvsadm rules (`ipvsadm -S`) or a keepalived.conf's
    /// `virtual_server` blocks from FILE or standard input into VirtualService
    /// YAML; what cannot be converted is listed on standard error.
    Import {
        /// Rules or keepalived.conf; standard input when absent.
        file: Option<PathBuf>,
        /// Namespace of the objects.
        #[arg(long, default_value = import::DEFAULT_NAMESPACE)]
        namespace: String,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("lvs-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Save => {
            let handle = IpvsHandle::connect()?;
            print!("{}", ipvsadm::save(&handle.table()?));
        }
        Command::List { timeout: true, .. } => {
            print!("{}", ipvsadm::timeouts(&IpvsHandle::connect()?.timeouts()?));
        }
        Command::List { daemon: true, .. } => {
            print!("{}", ipvsadm::daemons(&IpvsHandle::connect()?.sync_daemons()?));
        }
        Command::List { stats, rate, .. } => {
            let handle = IpvsHandle::connect()?;
            let view = match (stats, rate) {
                (true, _) => ListView::Stats,
                (_, true) => ListView::Rate,
                _ => ListView::Connections,
            };
            print!("{}", ipvsadm::list(&handle.info()?, &handle.table()?, view));
        }
        Command::Restore { file } => {
            let text = match &file {
                Some(path) => {
                    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
                }
                None => {
                    let mut text = String::new();
                    std::io::stdin().read_to_string(&mut text).context("reading standard input")?;
                    text
                }
            };
            let ops = ipvsadm::parse_rules(&text)?;
            let handle = IpvsHandle::connect()?;
            let report = handle.apply_batch(&ops);
            for (_, error) in &report.failures {
                eprintln!("lvs-agent: {error}");
            }
            if !report.is_success() {
                eprintln!("lvs-agent: {} of {} rules failed", report.failures.len(), report.requests);
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Import { file, namespace } => {
            let text = match &file {
                Some(path) => {
                    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
                }
                None => std::io::read_to_string(std::io::stdin()).context("reading standard input")?,
            };
            let imported = import::import(&text)?.in_namespace(&namespace);
            for warning in &imported.warnings {
                eprintln!("lvs-agent: warning: {warning}");
            }
            print!("{}", imported.to_yaml());
        }
    }
    Ok(ExitCode::SUCCESS)
}
