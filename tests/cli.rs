//! The key helpers print exactly what wg(8) would, checked against the real `wg` tool.

use std::io::Write;
use std::process::{Command, Stdio};

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn have_wg() -> bool {
    let ok = Command::new("wg").arg("--version").output().is_ok();
    if !ok {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "wg(8) must be installed under CI");
        eprintln!("SKIP: wg(8) not installed");
    }
    ok
}

const WGTURBO: &str = env!("CARGO_BIN_EXE_wgturbo");

#[test]
fn pubkey_matches_wg_both_ways() {
    if !have_wg() {
        return;
    }
    for _ in 0..5 {
        let (_, wg_key, _) = run("wg", &["genkey"], None);
        let (_, ours, _) = run(WGTURBO, &["pubkey"], Some(&wg_key));
        let (_, theirs, _) = run("wg", &["pubkey"], Some(&wg_key));
        assert_eq!(ours, theirs);
        let (ok, our_key, _) = run(WGTURBO, &["genkey"], None);
        assert!(ok);
        assert_eq!(our_key.len(), 45, "44 base64 characters and a newline");
        let (_, ours, _) = run(WGTURBO, &["pubkey"], Some(&our_key));
        let (ok, theirs, _) = run("wg", &["pubkey"], Some(&our_key));
        assert!(ok, "wg accepts our private key");
        assert_eq!(ours, theirs);
        let (ok, psk, _) = run(WGTURBO, &["genpsk"], None);
        assert!(ok);
        // wg accepts our preshared key in a configuration.
        let (ok, _, _) = run("wg", &["pubkey"], Some(&psk));
        assert!(ok);
    }
}

#[test]
fn pubkey_rejects_garbage() {
    let (ok, out, err) = run(WGTURBO, &["pubkey"], Some("not a key\n"));
    assert!(!ok);
    assert!(out.is_empty());
    assert!(err.contains("error"), "{err}");
}

#[test]
fn usage_errors() {
    let (ok, _, err) = run(WGTURBO, &[], None);
    assert!(!ok);
    assert!(err.contains("Usage"));
    let (ok, _, err) = run(WGTURBO, &["--bogus", "wg0"], None);
    assert!(!ok);
    assert!(err.contains("unknown option"));
}

/// Runs wgturbo with a deadline: a start-up check that failed to refuse would otherwise leave
/// a daemon running (as root it would create the interface).
fn run_bounded(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut child = Command::new(WGTURBO)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wgturbo starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wgturbo {args:?} did not refuse to start");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A bad metrics address, by flag or by environment, or one already taken, is one clear error
/// line before anything is created.
#[test]
fn bad_metrics_addresses_are_one_clear_error() {
    let iface = format!("wgtm{}", std::process::id() % 100_000);
    for (args, env) in [
        (vec!["--metrics", "localhost", iface.as_str()], vec![]),
        (vec!["-f", "--metrics", "300.1.2.3:9586", iface.as_str()], vec![]),
        (vec!["-f", iface.as_str()], vec![("WGTURBO_METRICS", "9586")]),
        (vec![iface.as_str()], vec![("WGTURBO_METRICS", "[::1]")]),
    ] {
        let (ok, err) = run_bounded(&args, &env);
        assert!(!ok, "{args:?} {env:?}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains("must be ADDR:PORT"), "{err}");
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (ok, err) = run_bounded(&["-f", iface.as_str()], &[("WGTURBO_METRICS", addr.as_str())]);
    assert!(!ok);
    assert!(err.contains(&format!("cannot serve metrics on {addr}")), "{err}");
    assert!(!std::path::Path::new(&format!("/sys/class/net/{iface}")).exists(), "no interface was created");
}

/// A knob set to a value it does not take is one error line naming the knob and what it
/// takes, before anything is created.
#[test]
fn bad_knob_values_are_one_clear_error() {
    let iface = format!("wgtk{}", std::process::id() % 100_000);
    for (name, value, takes) in [
        ("WGTURBO_PIN", "yes", "must be 0 or 1"),
        ("WGTURBO_PARALLEL_CRYPTO", "2", "must be 0, 1 or always"),
        ("WGTURBO_IO", "epoll", "must be 'uring' or 'syscalls'"),
        ("WGTURBO_URING_MULTISHOT", "yes", "must be 0 or 1"),
        ("WGTURBO_URING_BUFFERS", "100", "must be a power of two from 1 to 32768"),
        ("WGTURBO_URING_BUFFERS", "65536", "must be a power of two from 1 to 32768"),
    ] {
        let (ok, err) = run_bounded(&["-f", iface.as_str()], &[(name, value)]);
        assert!(!ok, "{name}={value}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(name) && err.contains(takes), "{err}");
    }
    assert!(!std::path::Path::new(&format!("/sys/class/net/{iface}")).exists(), "no interface was created");
}

/// `wgturbo --help` names every environment variable the daemon reads (the internal
/// start-up pipe excepted), found in the source so a new knob cannot be left out.
#[test]
fn help_lists_every_environment_variable() {
    fn sources(dir: &std::path::Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut text = String::new();
    sources(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut text);
    let mut names: Vec<&str> = text
        .split("env::var")
        .skip(1)
        .filter_map(|rest| rest.trim_start_matches("_os").strip_prefix("(\""))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 6, "found {names:?}");
    let (ok, help, _) = run(WGTURBO, &["--help"], None);
    assert!(ok);
    for name in names {
        assert!(help.contains(&format!("{name}=")), "--help does not list {name}:\n{help}");
    }
}
