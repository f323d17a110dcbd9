//! The app's output: copied line by line to the supervisor's own stdout/stderr (so `kubectl
//! logs` works) and to `run/app.log` as JSON lines ([`LogRecord`]), rotated to `app.log.1`
//! past a size limit so a reader that is behind can finish the old file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kdev_protocol::Stream;

use crate::log::supervise as log;
use crate::run_files::LogRecord;
use crate::util::unix_ms;

/// The longest line kept as one record; longer lines are split.
const MAX_LINE: usize = 16 * 1024;

/// `run/app.log`, shared by the two output-copying threads.
pub(super) struct AppLog {
    path: PathBuf,
    rotated: PathBuf,
    file: Option<File>,
    size: u64,
    max: u64,
}

impl AppLog {
    pub(super) fn open(path: PathBuf, rotated: PathBuf, max: u64) -> AppLog {
        let mut log = AppLog {
            path,
            rotated,
            file: None,
            size: 0,
            max,
        };
        log.reopen();
        log
    }

    fn reopen(&mut self) {
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            Ok(f) => {
                self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(f);
            }
            Err(e) => {
                log(format!(
                    "cannot open {}: {e}; app output is not recorded",
                    self.path.display()
                ));
                self.file = None;
            }
        }
    }

    fn append(&mut self, rec: &LogRecord) {
        let Ok(mut line) = serde_json::to_vec(rec) else {
            return;
        };
        line.push(b'\n');
        if self.size + line.len() as u64 > self.max {
            // Rotate: keep one previous file so a reader that is behind can finish it.
            let _ = fs::rename(&self.path, &self.rotated);
            self.reopen();
        }
        if let Some(f) = &mut self.file
            && f.write_all(&line).is_ok()
        {
            self.size += line.len() as u64;
        }
    }
}

/// Copy one output stream of the child: to our own stdout/stderr and, line by line, to the
/// app log. Runs until the pipe closes.
pub(super) fn copy_output<R: Read>(pipe: R, pid: u32, stream: Stream, log: Arc<Mutex<AppLog>>) {
    let mut reader = BufReader::with_capacity(64 * 1024, pipe);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        // Read one line, but never more than MAX_LINE bytes into one record.
        let eof = loop {
            let buf = match reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break true,
            };
            if buf.is_empty() {
                break true;
            }
            let room = MAX_LINE - line.len();
            let (take, done) = match buf.iter().take(room).position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (
                    buf.len().min(room),
                    line.len() + buf.len().min(room) >= MAX_LINE,
                ),
            };
            line.extend_from_slice(&buf[..take]);
            reader.consume(take);
            if done {
                break false;
            }
        };
        if !line.is_empty() {
            let _ = match stream {
                Stream::Stdout => io::stdout().lock().write_all(&line),
                Stream::Stderr => io::stderr().lock().write_all(&line),
            };
            let text = String::from_utf8_lossy(&line);
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            let rec = LogRecord {
                at_ms: unix_ms(),
                pid,
                stream,
                line: text.to_string(),
            };
            if let Ok(mut l) = log.lock() {
                l.append(&rec);
            }
        }
        if eof {
            return;
        }
    }
}
