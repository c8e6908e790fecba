//! What the device's own threads ask the control thread (the workers' messages are
//! `WorkerMsg`, below the dataplane).

use crossbeam_channel::Sender;

use crate::config::uapi::{Reply, Request};
use crate::metrics::DeviceReport;

pub enum DeviceRequest {
    /// A UAPI request and where its reply goes (wiped when dropped: a `get` holds keys).
    Uapi(Request, Sender<Reply>),
    /// A metrics scrape wants the peers (no secrets in the answer).
    Report(Sender<DeviceReport>),
}
