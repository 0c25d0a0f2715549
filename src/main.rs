//! The `outpost` binary: parse the command line, set up logging, dispatch, map errors to exit
//! codes (sysexits). Holds no logic of its own.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use log::{error, LevelFilter};
use outpost::cli::{self, Cmd, ConfigArgs};
use outpost::config::{self, Config, ConfigError};
use outpost::logging::{self, LogTarget};
use outpost::{control, daemon, route, sendmail};

/// sysexits(3)
const EX_USAGE: u8 = 64;
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cmd = match cli::parse_invocation(std::env::args_os()) {
        Ok(cmd) => cmd,
        Err(e) => {
            eprintln!("outpost: {e}\nTry `outpost --help`.");
            return ExitCode::from(EX_USAGE);
        }
    };
    match cmd {
        Cmd::Help => print_stdout(cli::USAGE),
        Cmd::Version => print_stdout(&format!("{}\n", outpost::version())),
        Cmd::CheckConfig(args) => check_config(&args),
        Cmd::Serve(args) => serve(&args),
        Cmd::Queue(target, request) => match load_client(&target) {
            Ok((config, _)) => ExitCode::from(control::client_main(&config.data_dir, &request)),
            Err(code) => code,
        },
        Cmd::Status(target) => match load_client(&target) {
            Ok((config, file)) => ExitCode::from(control::status_main(
                &config.data_dir,
                &origin(file.as_deref()),
            )),
            Err(code) => code,
        },
        Cmd::Test(target, args) => test(&target, &args),
        // `-bs`: stdin is copied to the daemon's socket from another thread, so it is not
        // locked here.
        Cmd::Sendmail(target, args) if args.mode == sendmail::Mode::Smtp => {
            match load_client(&target) {
                Ok((config, _)) => ExitCode::from(sendmail::stdio::main(
                    &sendmail::socket_path(&config.data_dir),
                    std::io::stdin(),
                    &mut std::io::stdout().lock(),
                )),
                Err(code) => code,
            }
        }
        Cmd::Sendmail(target, args) => match load_client(&target) {
            Ok((config, file)) => ExitCode::from(sendmail::run(
                &args,
                &config,
                file.as_deref(),
                &mut std::io::stdin().lock(),
            )),
            Err(code) => code,
        },
    }
}

fn print_stdout(text: &str) -> ExitCode {
    // A closed stdout (`outpost --help | head -1`) is not worth a panic.
    let _ = std::io::stdout().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

/// The config file every command uses (`config::locate`) and the config read from it.
fn load(args: &ConfigArgs) -> Result<(Config, Option<PathBuf>), ExitCode> {
    let file = config::locate(args.config.as_deref());
    Config::load(file.as_deref(), &args.overrides)
        .map(|config| (config, file))
        .map_err(|e| report_config_error(&e))
}

/// `load` for the client commands (`Config::load_client`).
fn load_client(args: &ConfigArgs) -> Result<(Config, Option<PathBuf>), ExitCode> {
    let file = config::locate(args.config.as_deref());
    Config::load_client(file.as_deref(), &args.overrides)
        .map(|config| (config, file))
        .map_err(|e| report_config_error(&e))
}

/// How `check-config` and `status` name the configuration in use.
fn origin(file: Option<&Path>) -> String {
    match file {
        Some(path) => path.display().to_string(),
        None => format!(
            "embedded defaults (no --config, no ${}, no {})",
            config::CONFIG_ENV,
            config::SYSTEM_CONFIG
        ),
    }
}

fn report_config_error(e: &ConfigError) -> ExitCode {
    for problem in &e.problems {
        eprintln!("outpost: config error: {}: {problem}", e.origin);
    }
    ExitCode::from(EX_CONFIG)
}

fn check_config(args: &ConfigArgs) -> ExitCode {
    match load(args) {
        Ok((config, file)) => print_stdout(&format!(
            "# {}: ok; effective configuration:\n{}",
            origin(file.as_deref()),
            config.to_toml()
        )),
        Err(code) => code,
    }
}

/// `outpost test`: the route (`route::main`), or `--send` a test message (`route::send`).
fn test(target: &ConfigArgs, args: &cli::TestArgs) -> ExitCode {
    // The whole config, credentials included: the route is tried as the daemon would.
    let loaded = if args.send {
        load_client(target)
    } else {
        load(target)
    };
    let (config, file) = match loaded {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    // One line at a time, as each step ends.
    let out = &mut |line: &str| {
        print_stdout(&format!("{line}\n"));
    };
    let code = if args.send {
        route::send(&config, args, out)
    } else {
        match daemon::route_params(&config) {
            Ok(params) => route::main(
                &config,
                &origin(file.as_deref()),
                &params,
                args.recipient.as_deref(),
                out,
            ),
            Err(e) => {
                eprintln!("outpost: {e}");
                e.exit_code()
            }
        }
    };
    ExitCode::from(code)
}

fn serve(args: &ConfigArgs) -> ExitCode {
    let (config, file) = match load(args) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    init_logging(config.log);
    let overrides = args.overrides.clone();
    let reload = Box::new(move || Config::load(file.as_deref(), &overrides));
    match daemon::run(config, reload) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Level from `OUTPOST_LOG`, else `RUST_LOG` (a plain level name), else info; to the `log`
/// config key's target.
fn init_logging(target: LogTarget) {
    let from_env = |name| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<LevelFilter>().ok())
    };
    let level = from_env("OUTPOST_LOG")
        .or_else(|| from_env("RUST_LOG"))
        .unwrap_or(LevelFilter::Info);
    logging::init(target, level);
}
