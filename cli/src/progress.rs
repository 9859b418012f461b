//! Progress display: one line per pass, and a bar for long work inside a pass.

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Mutex;

/// Draws on stderr (indicatif hides bars when stderr is not a terminal).
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    pub fn new() -> Self {
        Bars { bar: Mutex::new(None) }
    }
}

impl compactor_passes::Progress for Bars {
    fn begin(&self, label: &str, total: u64) {
        let bar = ProgressBar::new(total);
        bar.set_style(ProgressStyle::with_template("  {msg} [{bar:30}] {pos}/{len} ({eta})").expect("valid template").progress_chars("=> "));
        bar.set_message(label.to_string());
        *self.bar.lock().expect("progress lock") = Some(bar);
    }

    fn advance(&self, steps: u64) {
        if let Some(bar) = self.bar.lock().expect("progress lock").as_ref() {
            bar.inc(steps);
        }
    }

    fn end(&self) {
        if let Some(bar) = self.bar.lock().expect("progress lock").take() {
            bar.finish_and_clear();
        }
    }
}
