//! systemd's readiness protocol (sd_notify, through the `sd-notify` crate): READY=1 once the
//! interface, the socket and the workers are up, STATUS= with the start-up line, STOPPING=1 on
//! the way out, and WATCHDOG=1 pings for `WatchdogSec=`. Every call is a no-op when systemd did
//! not ask for it (no NOTIFY_SOCKET, no WATCHDOG_USEC).

use std::time::Duration;

use sd_notify::NotifyState;

/// Startup is finished; `status` is shown by `systemctl status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// The watchdog interval systemd set for this process, if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

pub fn watchdog_ping() {
    send(&[NotifyState::Watchdog]);
}

fn send(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!("cannot notify systemd: {e}");
    }
}
