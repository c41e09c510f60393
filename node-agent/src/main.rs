//! `lvs-agent`: the node agent's command line.

use std::{io::Read, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use lvs_agent::{
    cluster::{self, RunOptions},
    endpoints::IpvsMetrics,
    import,
    listing::Listing,
    standalone::{self, ApplyOptions, Outcome, Role},
};
use lvs_crds::translate::DEFAULT_VRRP_PRIORITY;
use lvs_ipvs::{
    IpvsHandle,
    ipvsadm::{self, ListView},
};
use tracing_subscriber::{EnvFilter, fmt};

/// Exit code: something failed and nothing was changed: bad input (manifests,
/// rules), no privileges, no IPVS in the kernel. (2, a wrong command line, is
/// clap's own.)
const EXIT_FAILED: u8 = 1;
/// Exit code: applied in part: what failed is listed by name, the rest took effect.
const EXIT_PARTLY_FAILED: u8 = 3;

const EXIT_CODES: &str = "Exit codes: 0 success; 1 failed, nothing changed (bad manifests or rules, \
no privileges, no IPVS); 2 wrong command line; 3 applied in part (`apply --once`, `restore`): \
what failed is listed by name, the rest took effect.";

#[derive(Parser)]
#[command(name = "lvs-agent", version, about = "Declarative Linux Virtual Server: the node agent", after_help = EXIT_CODES)]
struct Cli {
    /// How the agent logs (on standard error; the level comes from RUST_LOG,
    /// default `info`).
    #[arg(long, global = true, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logs through tracing, as the controller does: `RUST_LOG` (default `info`),
/// text or JSON, on standard error (standard output is the commands' output).
fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, not in files and pipes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(true).init(),
        LogFormat::Text => logs.init(),
    }
}

/// The engine's options, the same in cluster and standalone mode.
#[derive(clap::Args)]
struct EngineArgs {
    /// Where the agent records what it owns.
    #[arg(long, env = "LVS_STATE_DIR", default_value = "/var/lib/lvs-agent")]
    state_dir: PathBuf,
    /// Where the sysctls are (a DaemonSet mounts the host's elsewhere).
    #[arg(long, default_value = "/proc/sys")]
    sysctl_root: PathBuf,
    /// Also remove IPVS services this agent did not create.
    #[arg(long)]
    exclusive: bool,
    /// Seconds between full resyncs that repair drift.
    #[arg(long, default_value_t = 10)]
    resync_interval: u64,
}

impl EngineArgs {
    fn resync(&self) -> Duration {
        Duration::from_secs(self.resync_interval.max(1))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Cluster mode: apply this node's LvsNode objects, report in their status,
    /// serve /metrics and /healthz.
    Run {
        /// This node's name (the DaemonSet passes spec.nodeName).
        #[arg(long, env = "NODE_NAME")]
        node_name: String,
        #[command(flatten)]
        engine: EngineArgs,
        /// Address of /metrics, /healthz and /readyz. Not every address: a
        /// director's VIPs are its addresses too, and the endpoints must not be
        /// reachable through them (the DaemonSet binds the node's address).
        #[arg(long, env = "METRICS_ADDRESS", default_value = "127.0.0.1:9101")]
        metrics_address: SocketAddr,
        /// What /metrics reads of the kernel's IPVS table.
        #[arg(long, value_enum, default_value_t)]
        metrics_ipvs: IpvsMetrics,
        /// Kubeconfig file; without it KUBECONFIG, ~/.kube/config or the
        /// in-cluster configuration.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
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
        /// `table` as ipvsadm prints it; `json` or `yaml` for scripts: every
        /// service and real server with its counters and rates, in named fields.
        #[arg(long, short = 'o', value_enum, default_value_t = ListOutput::Table, conflicts_with_all = ["timeout", "daemon"])]
        output: ListOutput,
    },
    /// Apply ipvsadm rules (the `ipvsadm -R` input format) from FILE or standard
    /// input, pipelined. Every rule is attempted; failures are listed.
    Restore {
        /// Rules file; standard input when absent.
        file: Option<PathBuf>,
    },
    /// Standalone mode: apply VirtualService manifests (a file or a directory) to
    /// this host, without a cluster, and keep them applied.
    Apply {
        /// Manifest file or directory of *.yaml files.
        #[arg(short = 'f', long = "filename")]
        path: PathBuf,
        /// Apply once and exit: 0 when everything applied, 3 naming what failed
        /// (the rest applied), 1 when the manifests do not load (nothing changed).
        #[arg(long)]
        once: bool,
        /// Print everything applying would change on this host; change nothing.
        ///
        /// Sysctls (now -> wanted), devices, addresses, the nftables table, the
        /// VRRP instances, sync daemon and health checks (those three not with
        /// --once), then the IPVS operations as ipvsadm rules: one change per
        /// line under `## <section>` headings, every line but the rules starting
        /// with `#` (the output is `ipvsadm -R` input). It reads the host and the
        /// state file; without CAP_NET_ADMIN it cannot read the IPVS table or
        /// nftables and plans from an empty table.
        #[arg(long)]
        dry_run: bool,
        /// What this host is for the manifests.
        #[arg(long, value_enum, default_value_t = Role::Auto)]
        role: Role,
        #[command(flatten)]
        engine: EngineArgs,
        /// This director's VRRP priority (1-254).
        #[arg(long, default_value_t = DEFAULT_VRRP_PRIORITY, value_parser = clap::value_parser!(u8).range(1..=254))]
        vrrp_priority: u8,
        /// Serve /metrics, /healthz and /readyz on this address (not with --once).
        #[arg(long, conflicts_with_all = ["once", "dry_run"])]
        metrics_address: Option<SocketAddr>,
        /// What /metrics reads of the kernel's IPVS table.
        #[arg(long, value_enum, default_value_t, requires = "metrics_address")]
        metrics_ipvs: IpvsMetrics,
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
    /// Print a shell completion script, e.g. `lvs-agent completions bash >
    /// /etc/bash_completion.d/lvs-agent`.
    Completions { shell: clap_complete::Shell },
    /// Write the manual pages (lvs-agent.1 and one per command, e.g.
    /// lvs-agent-apply.1) into DIRECTORY.
    Man { directory: PathBuf },
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum ListOutput {
    Table,
    Json,
    Yaml,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("lvs-agent: {error:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { node_name, engine, metrics_address, metrics_ipvs, kubeconfig } => {
            let options = RunOptions {
                node_name,
                resync: engine.resync(),
                state_dir: engine.state_dir,
                sysctl_root: engine.sysctl_root,
                exclusive: engine.exclusive,
                metrics_address,
                metrics_ipvs,
                kubeconfig,
            };
            tokio::runtime::Runtime::new()?.block_on(cluster::run(options))?;
        }
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
        Command::List { output: ListOutput::Json, .. } => {
            let listing = Listing::of(&IpvsHandle::connect()?.table()?);
            println!("{}", serde_json::to_string_pretty(&listing)?);
        }
        Command::List { output: ListOutput::Yaml, .. } => {
            print!("{}", lvs_crds::yaml::to_string(&Listing::of(&IpvsHandle::connect()?.table()?))?);
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
                let none_applied = report.failures.len() >= report.requests;
                return Ok(ExitCode::from(if none_applied { EXIT_FAILED } else { EXIT_PARTLY_FAILED }));
            }
        }
        Command::Apply {
            path,
            once,
            dry_run,
            role,
            engine,
            vrrp_priority,
            metrics_address,
            metrics_ipvs,
        } => {
            let options = ApplyOptions {
                path,
                once,
                dry_run,
                role,
                resync: engine.resync(),
                state_dir: engine.state_dir,
                sysctl_root: engine.sysctl_root,
                exclusive: engine.exclusive,
                vrrp_priority,
                metrics_address,
                metrics_ipvs,
            };
            match standalone::apply(&options)? {
                Outcome::Applied => {}
                Outcome::NotLoaded => return Ok(ExitCode::from(EXIT_FAILED)),
                Outcome::PartlyFailed => return Ok(ExitCode::from(EXIT_PARTLY_FAILED)),
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
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "lvs-agent", &mut std::io::stdout());
        }
        Command::Man { directory } => write_manual(&directory)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `lvs-agent.1`, and `lvs-agent-<command>.1` for each command.
fn write_manual(directory: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(directory).with_context(|| format!("creating {}", directory.display()))?;
    let command = Cli::command();
    let write = |name: &str, page: clap::Command| -> anyhow::Result<()> {
        let path = directory.join(format!("{name}.1"));
        let mut roff = Vec::new();
        clap_mangen::Man::new(page).render(&mut roff)?;
        std::fs::write(&path, roff).with_context(|| format!("writing {}", path.display()))
    };
    for sub in command.get_subcommands() {
        let name = format!("lvs-agent-{}", sub.get_name());
        write(&name, sub.clone().name(name.clone()))?;
    }
    write("lvs-agent", command)
}
