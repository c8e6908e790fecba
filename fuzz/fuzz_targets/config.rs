//! Text from wg(8), wg-quick files and anyone who can reach the UAPI socket.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wgturbo::config::{uapi, wgconf};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = uapi::parse_request(text) {
        assert!(e.errno().code() < 0);
    }
    if let Err(e) = wgconf::parse(text) {
        assert!(e.line >= 1);
    }
});
