//! wgturbo-load's command line: bad arguments are one error line and a failure status, a
//! gateway that does not answer is a clear message within the timeout, and `config` prints a
//! fragment the real wg(8) accepts.

use std::process::Command;
use std::time::{Duration, Instant};

const LOAD: &str = env!("CARGO_BIN_EXE_wgturbo-load");

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(LOAD).args(args).output().expect("run wgturbo-load");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_arguments_are_one_error_line() {
    let key = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
    let cases: &[(&[&str], &str)] = &[
        (&[], "a role is required"),
        (&["flood"], "unknown role 'flood'"),
        (&["config", "--peers", "0"], "--peers must be 1 to"),
        (&["config", "--peers", "300", "--prefix", "192.0.2.0/24"], "has room for 253 peers"),
        (&["config", "--prefix", "10.0.0.0"], "not an IPv4 prefix"),
        (&["config", "--peers", "1", "--peers", "2"], "given twice"),
        (&["config", "--bogus", "1"], "unknown option --bogus"),
        (&["peers", "--gateway-key", key, "--upload", "192.0.2.9:9"], "--gateway is required"),
        (&["peers", "--gateway", "192.0.2.1:51820", "--gateway-key", "nope", "--download"], "not a base64 public key"),
        (&["peers", "--gateway", "192.0.2.1:51820", "--gateway-key", key], "say what to carry"),
        (
            &["peers", "--gateway", "192.0.2.1:51820", "--gateway-key", key, "--download", "--size", "9000"],
            "--size must be 64 to 1420 or imix",
        ),
        (
            &["peers", "--gateway", "192.0.2.1:51820", "--gateway-key", key, "--download", "--seconds", "600"],
            "--seconds must be",
        ),
        (
            &["peers", "--gateway", "192.0.2.1:51820", "--gateway-key", key, "--download", "--rate", "-5"],
            "--rate must be",
        ),
        (&["sink", "--port", "70000"], "--port must be"),
        (&["source", "--port", "9", "--flows", "0"], "--flows must be"),
    ];
    for (args, expected) in cases {
        let (ok, stdout, stderr) = run(args);
        assert!(!ok, "{args:?} must fail");
        assert!(stdout.is_empty(), "{args:?} printed {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line, not {stderr}");
        assert!(stderr.starts_with("wgturbo-load: ") && stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn a_gateway_that_does_not_answer_is_a_clear_error_within_the_timeout() {
    // A loopback port nobody answers on (bound here and never read).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let gateway = silent.local_addr().unwrap().to_string();
    let key = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
    let start = Instant::now();
    let (ok, stdout, stderr) = run(&[
        "peers",
        "--gateway",
        &gateway,
        "--gateway-key",
        key,
        "--peers",
        "3",
        "--download",
        "--handshake-timeout",
        "2",
    ]);
    assert!(!ok && stdout.is_empty());
    assert!(start.elapsed() < Duration::from_secs(10), "bounded: {:?}", start.elapsed());
    assert!(stderr.contains("completed 0 of 3 handshakes") && stderr.contains("is it listening there"), "{stderr}");
    // It tried, and tried again.
    let mut buf = [0u8; 256];
    silent.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let (n, _) = silent.recv_from(&mut buf).expect("initiations reached the port");
    assert_eq!((n, buf[0]), (148, 1), "a handshake initiation");
}

#[test]
fn the_config_fragment_is_what_wg_accepts() {
    let (ok, stdout, stderr) = run(&["config", "--peers", "3", "--seed", "t"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.matches("[Peer]").count(), 3);
    assert!(stdout.contains("AllowedIPs = 10.128.0.2/32") && stdout.contains("AllowedIPs = 10.128.0.4/32"));
    assert!(stderr.contains("\"peers\":3"), "the report goes to stderr: {stderr}");
    // The same seed gives the same keys; another gives others.
    assert_eq!(run(&["config", "--peers", "3", "--seed", "t"]).1, stdout);
    assert_ne!(run(&["config", "--peers", "3", "--seed", "u"]).1, stdout);
    let dir = std::env::temp_dir().join(format!("wgturbo-load-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("peers.conf");
    let (ok, stdout, _) = run(&["config", "--peers", "2", "--out", path.to_str().unwrap()]);
    assert!(ok && stdout.contains("\"gateway_address\":\"10.128.0.1\""), "{stdout}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches("[Peer]").count(), 2);
    // wg(8) parses it (`wg showconf`-style strip is not needed: `wg setconf` takes [Peer]s).
    if Command::new("wg").arg("--version").output().is_ok() {
        let mut conf = String::from("[Interface]\nListenPort = 1\n\n");
        conf += &text;
        std::fs::write(&path, conf).unwrap();
        let out = Command::new("wg").arg("syncconf").arg("wgturbo-no-such-iface").arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("Line unrecognized") && !err.contains("Configuration parsing error"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
