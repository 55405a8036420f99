//! Command-line contract (clap derive). Every flag also reads its environment variable from
//! docs/design.md section 3; the flag wins.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// core-ops: keep this host in step with a git repository, through systemd.
#[derive(Debug, Parser)]
#[command(name = "core-ops", version = crate::provenance::long_version(), about, long_about = None)]
pub struct Cli {
    /// State directory (lock, status.json, receipts, mirrors).
    #[arg(long, global = true, env = "CORE_OPS_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Status snapshot path (default: <state dir>/status.json).
    #[arg(long, global = true, env = "CORE_OPS_STATE_FILE", value_name = "FILE")]
    pub state_file: Option<PathBuf>,
    /// systemd unit directory.
    #[arg(
        long,
        global = true,
        env = "CORE_OPS_SYSTEMD_UNIT_DIR",
        value_name = "DIR"
    )]
    pub unit_dir: Option<PathBuf>,
    /// Quadlet directory.
    #[arg(long, global = true, env = "CORE_OPS_QUADLET_DIR", value_name = "DIR")]
    pub quadlet_dir: Option<PathBuf>,
    /// Quadlet generator run in dry-run mode to validate Quadlet files before anything is
    /// written (default: podman-system-generator or /usr/libexec/podman/quadlet; `none`: skip).
    #[arg(
        long,
        global = true,
        env = "CORE_OPS_QUADLET_GENERATOR",
        value_name = "PATH"
    )]
    pub quadlet_generator: Option<String>,
    /// Colon-separated roots host files may be written under (default /etc:/srv).
    #[arg(
        long,
        global = true,
        env = "CORE_OPS_HOST_FILE_ROOTS",
        value_name = "ROOTS"
    )]
    pub host_file_roots: Option<String>,
    /// Write host files beneath this directory instead of / (the allowed roots move with
    /// them): for staging a root file system other than the running one.
    #[arg(long, global = true, env = "CORE_OPS_HOST_ROOT", value_name = "DIR")]
    pub host_root: Option<std::path::PathBuf>,
    /// D-Bus bus address of systemd (default: the system bus).
    #[arg(
        long,
        global = true,
        env = "CORE_OPS_SYSTEMD_ADDRESS",
        value_name = "ADDRESS"
    )]
    pub systemd_address: Option<String>,
    /// Local root-only trust policy: signed commits, allowed signers, rewinds (default
    /// /etc/core-ops/trust.yaml; wins over `trust:` in host.yaml).
    #[arg(long, global = true, env = "CORE_OPS_TRUST_FILE", value_name = "FILE")]
    pub trust_file: Option<std::path::PathBuf>,
    /// Root-only age identity that decrypts secret host files (`files/**/*.age`; default
    /// /etc/core-ops/age.key; README "Secrets").
    #[arg(
        long,
        global = true,
        env = "CORE_OPS_AGE_IDENTITY",
        value_name = "FILE"
    )]
    pub age_identity: Option<std::path::PathBuf>,
    /// Root-only directory of credential entries for remote repositories, matched by URL
    /// prefix (default /etc/core-ops/credentials.d; README "Remote repositories").
    #[arg(
        long,
        global = true,
        env = "CORE_OPS_CREDENTIALS_DIR",
        value_name = "DIR"
    )]
    pub credentials_dir: Option<std::path::PathBuf>,
    /// Longest a fetch of a remote repository may take, in seconds, before it is killed and
    /// the run exits 5 (default 60).
    #[arg(
        long,
        global = true,
        env = "CORE_OPS_FETCH_TIMEOUT",
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub fetch_timeout: Option<u64>,
    /// Most tree entries read from one revision, counted as expanded: an entry reached
    /// through a shared subtree counts each time (default 100000).
    #[arg(
        long,
        global = true,
        env = "CORE_OPS_MAX_TREE_ENTRIES",
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_tree_entries: Option<u64>,
    /// Most bytes of file content read from one revision (default 268435456, 256 MiB).
    #[arg(
        long,
        global = true,
        env = "CORE_OPS_MAX_TREE_BYTES",
        value_name = "BYTES",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_tree_bytes: Option<u64>,
    /// Largest single file (or tree object) read from a revision (default 67108864, 64 MiB).
    #[arg(
        long,
        global = true,
        env = "CORE_OPS_MAX_FILE_BYTES",
        value_name = "BYTES",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_file_bytes: Option<u64>,
    /// Deepest path read from a revision, in components (default 64).
    #[arg(
        long,
        global = true,
        env = "CORE_OPS_MAX_TREE_DEPTH",
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..=4096)
    )]
    pub max_tree_depth: Option<u64>,
    /// Prometheus textfile written after apply/agent runs (empty: off; default: node-exporter's
    /// /var/lib/prometheus/node-exporter/core-ops.prom when that directory exists).
    #[arg(
        long,
        global = true,
        env = "CORE_OPS_METRICS_FILE",
        value_name = "FILE"
    )]
    pub metrics_file: Option<String>,
    /// Print the machine-readable JSON document (the contract) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Persist the desired-state repository and ref; later commands need neither.
    Init {
        /// Repository: a local path, file:// URL or remote URL.
        repo: String,
        /// Branch, tag or commit (default: main).
        #[arg(default_value = "main")]
        rev: String,
    },
    /// Show what would change on this host, as an ordered, checksummed plan.
    Plan {
        /// Where desired state comes from.
        #[command(flatten)]
        target: TargetArgs,
        /// Also write the plan JSON to FILE (atomically).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Exit 0 when nothing would change, 2 when changes are present, 1 on error or when
        /// an action is blocked (a blocked plan exits 1 with or without this flag).
        #[arg(long)]
        detailed_exitcode: bool,
        /// Plan taking over this pre-existing file (repeatable; see `apply --adopt`).
        #[arg(long, value_name = "PATH")]
        adopt: Vec<PathBuf>,
    },
    /// Plan, then apply through systemd, verify convergence and record the outcome.
    Apply {
        /// Where desired state comes from.
        #[command(flatten)]
        target: TargetArgs,
        /// Execute this saved plan (from `plan --out`); refused if it is stale.
        #[arg(long, value_name = "FILE")]
        plan: Option<PathBuf>,
        /// Apply without reading or writing status.json (escape hatch).
        #[arg(long, conflicts_with = "rollback_to")]
        force_no_state: bool,
        /// Roll back to a revision this host applied before (sha, prefix, the ref it was
        /// applied as, or any branch or tag naming such a commit), with the same planner and
        /// ordering.
        #[arg(long, value_name = "REV", conflicts_with = "plan")]
        rollback_to: Option<String>,
        /// With --rollback-to: print the rollback plan and change nothing.
        #[arg(long, requires = "rollback_to")]
        rollback_plan_only: bool,
        /// Take over this pre-existing file of the desired state (repeatable): core-ops
        /// records it as its own and writes the desired content; without it, a file that
        /// exists and differs blocks the plan.
        #[arg(long, value_name = "PATH", conflicts_with = "plan")]
        adopt: Vec<PathBuf>,
        /// Seconds to wait for each systemd job.
        #[command(flatten)]
        tuning: ApplyTuning,
    },
    /// One timer-driven run: fetch, plan, apply if needed, verify, record.
    Agent {
        /// Where desired state comes from (default: the `init` target).
        #[command(flatten)]
        target: TargetArgs,
        /// Job timeout and settle window.
        #[command(flatten)]
        tuning: ApplyTuning,
    },
    /// Lift the quarantine of a non-converging desired revision after operator review.
    Resume {
        /// Host name (default: /etc/hostname); for the message only.
        #[arg(long, env = "CORE_OPS_HOST", value_name = "HOST")]
        host: Option<String>,
    },
    /// Show the persisted status snapshot (or why there is none).
    Status,
    /// Explain one object: its layers, digest, planned action and dependencies
    /// (`runtime:<name>` adds its versions and transaction history).
    Explain {
        /// Resource id (`unit:web.service`, `runtime:hello`), unit name or host path.
        object: String,
        /// Where desired state comes from (default: the deployed revision).
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Print the shell completion script for bash, zsh or fish.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: super::surface::Shell,
    },
    /// Write the man pages of core-ops and every subcommand into DIR (packaging).
    #[command(hide = true)]
    Manpages {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
    /// Evidence bundles: the full detail behind runtime receipts.
    Evidence {
        /// What to do.
        #[command(subcommand)]
        command: EvidenceCommand,
    },
    /// The receipt chain: verify it (archives and live receipts as one chain).
    Receipts {
        /// What to do.
        #[command(subcommand)]
        command: ReceiptsCommand,
    },
    /// Secret host files: the host's age identity, and encrypting a file for the repository
    /// (README "Secrets").
    Secret {
        /// What to do.
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// sha256 of a file through the runtime store's streaming hasher (for
    /// scripts/bench-runtime.py; prints digest, bytes and milliseconds as JSON).
    #[command(name = "store-hash", hide = true)]
    StoreHash {
        /// File to hash.
        file: PathBuf,
    },
}

/// `core-ops evidence ...`.
#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Re-hash a bundle (`evidence:sha256-<hex>` from a receipt's evidenceRefs): exit 0 when
    /// intact, 1 when a file changed, went missing or was added.
    Verify {
        /// Bundle id.
        id: String,
    },
    /// Write a catalog publication request for a receipt (or evidence bundle) into the state
    /// dir's outbox/ for human review. Disabled by default (host policy `publication:`);
    /// nothing is ever sent.
    PublishRequest {
        /// Receipt id (`urn:srcos:receipt:...`) or evidence bundle id.
        id: String,
        /// Where the host policy comes from (default: the deployed revision).
        #[command(flatten)]
        target: TargetArgs,
    },
}

/// `core-ops secret ...`.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create this host's age identity (root-only, mode 0600, at --age-identity) and print its
    /// public key, for the repository's recipients. Refuses to replace an existing identity.
    Keygen,
    /// Print the public key(s) of this host's age identity.
    Recipient,
    /// Encrypt a file to age recipients, ASCII-armored, for `services/<svc>/files/<path>.age`.
    /// Needs no identity: anyone with the recipients can add a secret.
    Encrypt {
        /// Recipient public key (`age1...`; repeatable).
        #[arg(short = 'r', long = "recipient", value_name = "KEY")]
        recipients: Vec<String>,
        /// File of recipient public keys, one per line, `#` comments (repeatable), e.g. the
        /// repository's `hosts/<host>/age.recipients`.
        #[arg(short = 'R', long = "recipients-file", value_name = "FILE")]
        recipients_files: Vec<PathBuf>,
        /// Encrypt for every host of the repository work tree DIR that selects SERVICE: each
        /// one's `hosts/<host>/age.recipients`, plus `DIR/age.recipients` (operators) if present.
        #[arg(long = "for-service", value_name = "SERVICE", requires = "repo_dir")]
        for_service: Option<String>,
        /// The repository work tree `--for-service` reads.
        #[arg(long = "repo-dir", value_name = "DIR", requires = "for_service")]
        repo_dir: Option<PathBuf>,
        /// Write the encrypted file here (atomically; refused if it exists). Default: stdout.
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The plaintext (default: standard input).
        input: Option<PathBuf>,
    },
}

/// `core-ops receipts ...`.
#[derive(Debug, Subcommand)]
pub enum ReceiptsCommand {
    /// Re-hash every receipt and archive and check every link: exit 0 with the count and the
    /// head digest when intact, 1 naming the receipt file and what is wrong (and the repair)
    /// when the chain is broken, truncated or forked.
    Verify,
}

/// Repository, revision and host selection shared by plan, apply and explain.
#[derive(Debug, Clone, Args, Default)]
pub struct TargetArgs {
    /// Desired-state repository (path, file:// or URL).
    #[arg(
        long,
        alias = "source-repo",
        env = "CORE_OPS_REPO",
        value_name = "REPO"
    )]
    pub repo: Option<String>,
    /// Branch, tag or commit to reconcile to.
    #[arg(long, env = "CORE_OPS_REV", value_name = "REF")]
    pub rev: Option<String>,
    /// Host name to render for (default: /etc/hostname).
    #[arg(long, env = "CORE_OPS_HOST", value_name = "HOST")]
    pub host: Option<String>,
}

/// Timeouts of apply.
#[derive(Debug, Clone, Args)]
pub struct ApplyTuning {
    /// Seconds to wait for each systemd job's JobRemoved.
    #[arg(
        long,
        env = "CORE_OPS_JOB_TIMEOUT",
        default_value_t = 90,
        value_name = "SECS"
    )]
    pub job_timeout: u64,
    /// Default settle window in milliseconds for started services that can still fail after
    /// their start (a running main process, no readiness protocol); `settle:` in
    /// service.yaml or host.yaml wins; other units are judged by their job result.
    #[arg(
        long,
        env = "CORE_OPS_SETTLE_MS",
        default_value_t = 1500,
        value_name = "MS"
    )]
    pub settle_ms: u64,
    /// Results documents (<state dir>/results) and status.json history entries kept, newest
    /// first; 0 keeps all. Receipts are never deleted (sealed into receipts/archive/).
    #[arg(
        long,
        env = "CORE_OPS_KEEP_RESULTS",
        default_value_t = crate::record::retention::DEFAULT_KEEP,
        value_name = "N"
    )]
    pub keep_results: usize,
}
