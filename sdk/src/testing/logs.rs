//! Log capture for tests: a `log` logger that keeps each thread's lines, so parallel tests can
//! assert on what a filter logged without seeing each other's lines.

use std::cell::RefCell;

thread_local! {
    static LOGS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

struct CaptureLogger;

impl log::Log for CaptureLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {}", record.level(), record.args());
        LOGS.with(|l| l.borrow_mut().push(line));
    }
    fn flush(&self) {}
}

static LOGGER: CaptureLogger = CaptureLogger;

/// Installs the capturing logger (idempotent). Lines are kept per thread, so parallel tests
/// do not see each other's logs.
pub fn init_logging() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

/// Log lines captured on this thread so far.
pub fn captured_logs() -> Vec<String> {
    LOGS.with(|l| l.borrow().clone())
}

/// Forgets the log lines captured on this thread.
pub fn clear_logs() {
    LOGS.with(|l| l.borrow_mut().clear());
}
