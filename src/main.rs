//! The `ai-gateway` command line: `serve` runs the gateway, `keys` manages
//! API keys. Nothing else lives here.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc's `mi_option_e` (its fifth
/// option in both major versions; the Rust bindings do not name it).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// The allocator's arenas are committed as they are used, so memory it
/// frees goes back to the system (decommitted) instead of staying resident
/// until the system runs short: the start-up work (argument parsing,
/// opening the store) frees what it used, and an idle gateway holds about
/// 8 MB instead of 11.5 (measured). The hot path reuses its pages, so
/// throughput is unchanged (measured with perf/ab). The option is read when
/// the first arena is reserved, at the first allocation, which comes before
/// `main`: it is set from the process's constructors, which run earlier.
extern "C" fn allocator_options() {
    // SAFETY: sets one of mimalloc's integer options; nothing else runs yet.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) }
}

#[used]
#[unsafe(link_section = ".init_array")]
static ALLOCATOR_OPTIONS: extern "C" fn() = allocator_options;

/// An OpenAI-compatible API in front of Ollama: one small, fast binary.
#[derive(Parser)]
#[command(name = "ai-gateway", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ai_gateway::config::ServeArgs),
    /// Check a configuration (a config file and the flags, read as `serve`
    /// reads them) without starting: every problem with its line, exit 1.
    CheckConfig(CheckArgs),
    /// Manage API keys (works while the gateway runs).
    Keys(ai_gateway::cli::KeysArgs),
    /// Show recorded usage (works while the gateway runs).
    Usage(ai_gateway::cli::UsageArgs),
}

/// `ai-gateway check-config [FILE] [serve's flags]`.
#[derive(clap::Args)]
struct CheckArgs {
    /// The config file (else `--config`, or `AI_GATEWAY_CONFIG`).
    file: Option<std::path::PathBuf>,
    #[command(flatten)]
    serve: ai_gateway::config::ServeArgs,
}

/// A CLI command failed: a line on stderr per problem, exit status 1.
fn exit_with(msg: &str) -> ! {
    for line in msg.lines() {
        eprintln!("error: {line}");
    }
    std::process::exit(1)
}

fn main() {
    // Where transparent huge pages are always on, the allocator's first arena
    // would be backed by 2 MB pages and an idle gateway would hold 15 MB
    // instead of 9.5 (measured); the working set is small, so small pages it is.
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    // A file-size limit (ulimit -f) must not kill the process in the middle
    // of a store commit: the write fails instead, and the commit is retried
    // or its loss reported at shutdown.
    // SAFETY: setting a signal's disposition to "ignore" takes plain integers.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    // A config file's settings become the defaults of the flags (file < env < flags).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (command, tables, origin) =
        ai_gateway::config::file::apply(Cli::command(), &args).unwrap_or_else(|msg| exit_with(&msg));
    let matches = command.get_matches_from(&args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let sub = matches.subcommand().map(|(_, m)| m.clone()).unwrap_or_default();
    // `serve` refuses to start on what `check-config` reports, in the same words.
    let checked = |args: &ai_gateway::config::ServeArgs| {
        let config = ai_gateway::config::Config::from_args(args, tables.clone());
        let problems =
            ai_gateway::config::check::problems(args, config.as_ref().map_err(Vec::as_slice), &sub, origin.as_ref());
        (config, problems)
    };
    let result = match cli.command {
        Command::Serve(args) => match checked(&args) {
            (Ok(config), problems) if problems.is_empty() => ai_gateway::server::run(config),
            (_, problems) => Err(problems.join("\n")),
        },
        Command::CheckConfig(check) => {
            let (_, problems) = checked(&check.serve);
            let what = check.file.as_ref().or(origin.as_ref().map(|o| &o.path)).map(|p| p.display().to_string());
            if problems.is_empty() {
                println!("{}: ok", what.as_deref().unwrap_or("the flags and environment"));
                return;
            }
            for p in &problems {
                eprintln!("error: {p}");
            }
            std::process::exit(1);
        }
        Command::Keys(args) => return ai_gateway::cli::run_keys(args).unwrap_or_else(|msg| exit_with(&msg)),
        Command::Usage(args) => return ai_gateway::cli::run_usage(args).unwrap_or_else(|msg| exit_with(&msg)),
    };
    if let Err(msg) = result {
        for line in msg.lines() {
            ai_gateway::log::error(format_args!("{line}"));
        }
        std::process::exit(1);
    }
}
