//! Process-wide cancellation: set by SIGINT/SIGTERM, polled by streaming
//! loops so an interrupted backup aborts its upload instead of committing.

use std::sync::atomic::{AtomicBool, Ordering};

static CANCELLED: AtomicBool = AtomicBool::new(false);

pub fn request() {
    CANCELLED.store(true, Ordering::SeqCst);
}

pub fn requested() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}
