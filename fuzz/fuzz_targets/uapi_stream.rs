//! The byte stream a UAPI client sends: framed into requests by blank lines (lines bounded),
//! each parsed. Nothing may panic, a frame never holds an over-long line, and every parse
//! error maps to a negative errno.
#![no_main]
use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use wgturbo::config::uapi::parse_request;
use wgturbo::device::uapi_server::{read_request, Framed, MAX_LINE};

fuzz_target!(|data: &[u8]| {
    let mut reader = Cursor::new(data);
    for _ in 0..1000 {
        match read_request(&mut reader) {
            Framed::Request { text, eof } => {
                assert!(text.lines().all(|l| l.len() <= MAX_LINE));
                if let Err(e) = parse_request(&text) {
                    assert!(e.errno().code() < 0);
                }
                if eof {
                    break;
                }
            }
            Framed::End | Framed::LineTooLong => break,
        }
    }
});
