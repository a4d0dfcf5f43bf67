//! Progress on a TTY (bytes, rate); silent otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn bytes_bar(what: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} {bytes} ({bytes_per_sec}, {elapsed})")
            .expect("valid template"),
    );
    pb.set_message(what.to_string());
    pb
}

pub fn human_bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}
