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
