//! Progress on a TTY (bytes, rate, and with a known size a percentage and
//! an ETA); silent otherwise. One bar per operation: a restore of several
//! objects or a base backup of several archives moves one bar, not one per
//! part starting again at 0 B.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Bar {
    pb: ProgressBar,
}

impl Bar {
    /// `total` is the size when known (a restore's plain bytes, a base
    /// backup's server estimate, a dump's table sizes); an estimate that
    /// turns out short grows with the position rather than passing 100%.
    pub fn new(what: &str, total: Option<u64>) -> Bar {
        let pb = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
        let template = if total.is_some() {
            "{msg} [{bar:24}] {percent:>3}% {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta})"
        } else {
            "{spinner} {msg} {bytes} ({bytes_per_sec}, {elapsed})"
        };
        pb.set_style(
            ProgressStyle::with_template(template)
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb.set_message(what.to_string());
        Bar { pb }
    }

    pub fn set(&self, n: u64) {
        if self.pb.length().is_some_and(|l| n > l) {
            // Both at once: no frame draws the new length at the old place.
            self.pb.update(|s| {
                s.set_len(n);
                s.set_pos(n);
            });
        } else {
            self.pb.set_position(n);
        }
    }

    pub fn finish(&self) {
        self.pb.finish_and_clear();
    }
}

impl Drop for Bar {
    /// A failed operation leaves no half-drawn bar above its error.
    fn drop(&mut self) {
        self.pb.finish_and_clear();
    }
}

/// A bar that never draws: for workers whose bytes another bar counts.
pub fn hidden() -> Bar {
    Bar {
        pb: ProgressBar::hidden(),
    }
}

pub fn human_bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}
