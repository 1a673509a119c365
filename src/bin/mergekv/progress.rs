//! A hand-drawn progress bar on stderr, only when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Least time between two redraws (at most ~10 per second).
const REDRAW_INTERVAL: Duration = Duration::from_millis(100);
/// Width of the bar, in characters.
const BAR_WIDTH: usize = 30;

/// Progress of a long write: entries written, and work done out of a known
/// total (bytes of input for `load`, keys for `demo`).
pub struct Progress {
    enabled: bool,
    started: Instant,
    last_draw: Option<Instant>,
    total: Option<u64>,
    /// A bar is on screen without its line ended.
    open: bool,
}

impl Progress {
    /// A progress bar; `total` (if known) gives the percentage. Without
    /// it, `done` is shown as bytes read.
    pub fn new(total: Option<u64>) -> Self {
        Progress {
            enabled: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last_draw: None,
            total: total.filter(|&t| t > 0),
            open: false,
        }
    }

    /// Redraws, unless the last redraw was less than 100 ms ago.
    pub fn update(&mut self, entries: u64, done: u64) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self.last_draw.is_some_and(|t| now - t < REDRAW_INTERVAL) {
            return;
        }
        self.last_draw = Some(now);
        self.draw(entries, done);
    }

    /// Draws the final state and ends the line.
    pub fn finish(&mut self, entries: u64, done: u64) {
        if self.enabled {
            self.draw(entries, done);
            self.end_line();
        }
    }

    fn end_line(&mut self) {
        if std::mem::take(&mut self.open) {
            let _ = writeln!(std::io::stderr());
        }
    }

    fn draw(&mut self, entries: u64, done: u64) {
        self.open = true;
        let rate = per_second(entries, self.started.elapsed());
        let bar = match self.total {
            Some(total) => bar(done, total),
            None => format!("{:.1} MiB read", done as f64 / (1024.0 * 1024.0)),
        };
        let line = format!("\r{bar}  {entries} entries  {rate:.0} entries/s\x1b[K");
        // Progress is a courtesy: a failed write to stderr changes nothing.
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes());
        let _ = err.flush();
    }
}

impl Drop for Progress {
    /// An error message after an unfinished bar starts on a line of its own.
    fn drop(&mut self) {
        self.end_line();
    }
}

/// `[=====>      ]  42%`.
fn bar(done: u64, total: u64) -> String {
    let fraction = (done as f64 / total as f64).clamp(0.0, 1.0);
    let filled = (fraction * BAR_WIDTH as f64) as usize;
    let head = if filled < BAR_WIDTH { ">" } else { "" };
    let rest = BAR_WIDTH.saturating_sub(filled + head.len());
    format!(
        "[{}{head}{}] {:3.0}%",
        "=".repeat(filled),
        " ".repeat(rest),
        fraction * 100.0
    )
}

/// `count / elapsed`, 0 for no time at all.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}
