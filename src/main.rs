//! `wgturbo [-f|--foreground] IFACE` and the key helpers `genkey`, `pubkey`, `genpsk`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};

use wgturbo::device::{parse_metrics_addr, Settings};
use wgturbo::keys::{PresharedKey, PrivateKey};

const USAGE: &str = concat!(
    "Usage: wgturbo [-f/--foreground] [--metrics ADDR:PORT] INTERFACE-NAME\n",
    "       wgturbo genkey | pubkey | genpsk\n\n",
    "Creates the TUN interface and serves /var/run/wireguard/INTERFACE-NAME.sock for wg(8).\n",
    "Environment:\n",
    "  LOG_LEVEL=error|info|debug   what to log (default info)\n",
    "  WGTURBO_WORKERS=N            worker threads (default: one per core)\n",
    "  WGTURBO_IO=uring|syscalls    I/O backend (default uring; falls back to syscalls if refused)\n",
    "  WGTURBO_URING_MULTISHOT=0|1  io_uring multishot reads (default 1; 0: single reads)\n",
    "  WGTURBO_URING_BUFFERS=N      io_uring provided buffers per ring, a power of two (default 128)\n",
    "  WGTURBO_NO_OFFLOAD=1         no TUN TSO/USO/GRO and no UDP GSO/GRO\n",
    "  WGTURBO_PARALLEL_CRYPTO=0|1|always\n",
    "                               other workers seal/open chunks of a flow whose worker fell\n",
    "                               behind (default 1); always: every round; 0: never\n",
    "  WGTURBO_PIN=0|1              pin worker N to core N (default 0)\n",
    "  WGTURBO_METRICS=ADDR:PORT    serve Prometheus metrics at http://ADDR:PORT/metrics (default off;\n",
    "                               --metrics does the same and wins)",
);

/// Set in the background child: its stdout is a pipe to the parent, which waits for "ready".
const READY_ENV: &str = "WGTURBO_READY_PIPE";

fn init_logging() {
    let level = match std::env::var("LOG_LEVEL").unwrap_or_default().to_ascii_lowercase().as_str() {
        "error" | "silent" => tracing::Level::ERROR,
        "debug" | "verbose" => tracing::Level::DEBUG,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).with_target(false).init();
}

#[derive(Clone, Copy)]
enum KeyCommand {
    GenKey,
    GenPsk,
    PubKey,
}

fn key_command(cmd: KeyCommand) -> ExitCode {
    match cmd {
        KeyCommand::GenKey => println!("{}", PrivateKey::generate().to_base64()),
        KeyCommand::GenPsk => println!("{}", PresharedKey::generate().to_base64()),
        KeyCommand::PubKey => {
            let mut input = String::new();
            if std::io::stdin().read_to_string(&mut input).is_err() {
                eprintln!("wgturbo: error: cannot read a private key from stdin");
                return ExitCode::FAILURE;
            }
            match PrivateKey::from_base64(input.trim()) {
                Ok(k) => println!("{}", k.public_key().to_base64()),
                Err(e) => {
                    eprintln!("wgturbo: error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    ExitCode::SUCCESS
}

/// Starts the daemon in the background and returns once it reports ready (or failed).
fn spawn_background(iface: &str, metrics: Option<&str>) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("wgturbo: error: cannot find own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stderr = if std::env::var_os("LOG_LEVEL").is_some() { Stdio::inherit() } else { Stdio::null() };
    let mut command = Command::new(exe);
    command.arg("--foreground");
    if let Some(addr) = metrics {
        command.arg("--metrics").arg(addr);
    }
    let spawned = command
        .arg(iface)
        .env(READY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wgturbo: error: cannot start the daemon: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    match line.trim_end() {
        "ready" => ExitCode::SUCCESS,
        msg => {
            let _ = child.wait();
            let msg = msg.strip_prefix("error: ").unwrap_or(if msg.is_empty() {
                "daemon exited during start-up"
            } else {
                msg
            });
            eprintln!("wgturbo: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run_foreground(iface: &str, metrics: Option<&str>) -> ExitCode {
    let via_pipe = std::env::var_os(READY_ENV).is_some();
    let settings = Settings::from_env().and_then(|mut s| {
        if let Some(addr) = metrics {
            s.metrics = Some(parse_metrics_addr(addr)?);
        }
        Ok(s)
    });
    let result = settings.and_then(|settings| {
        wgturbo::device::run(iface, settings, || {
            if via_pipe {
                let mut out = std::io::stdout();
                let _ = out.write_all(b"ready\n");
                let _ = out.flush();
            }
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let hint = match &e {
                wgturbo::device::DeviceError::Tun(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
                    " (creating a TUN interface needs root or CAP_NET_ADMIN)"
                }
                _ => "",
            };
            if via_pipe {
                println!("error: {e}{hint}");
            } else {
                eprintln!("wgturbo: error: {e}{hint}");
            }
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut foreground = false;
    let mut iface = None;
    let mut metrics = None;
    let mut args_iter = args.iter();
    while let Some(a) = args_iter.next() {
        match a.as_str() {
            "-f" | "--foreground" => foreground = true,
            "--metrics" => match args_iter.next() {
                Some(addr) => metrics = Some(addr.clone()),
                None => {
                    eprintln!("wgturbo: error: --metrics needs ADDR:PORT\n{USAGE}");
                    return ExitCode::FAILURE;
                }
            },
            s if s.starts_with("--metrics=") => metrics = Some(s["--metrics=".len()..].to_string()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--version" | "-v" => {
                println!("wgturbo {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "genkey" if args.len() == 1 => return key_command(KeyCommand::GenKey),
            "genpsk" if args.len() == 1 => return key_command(KeyCommand::GenPsk),
            "pubkey" if args.len() == 1 => return key_command(KeyCommand::PubKey),
            s if s.starts_with('-') => {
                eprintln!("wgturbo: error: unknown option '{s}'\n{USAGE}");
                return ExitCode::FAILURE;
            }
            s if iface.is_none() => iface = Some(s.to_string()),
            s => {
                eprintln!("wgturbo: error: unexpected argument '{s}'\n{USAGE}");
                return ExitCode::FAILURE;
            }
        }
    }
    let Some(iface) = iface else {
        eprintln!("{USAGE}");
        return ExitCode::FAILURE;
    };
    init_logging();
    // A bad address is one clear error before anything starts, in either mode.
    if let Some(Err(e)) = metrics.as_deref().map(parse_metrics_addr) {
        eprintln!("wgturbo: error: {e}");
        return ExitCode::FAILURE;
    }
    if foreground {
        run_foreground(&iface, metrics.as_deref())
    } else {
        spawn_background(&iface, metrics.as_deref())
    }
}
