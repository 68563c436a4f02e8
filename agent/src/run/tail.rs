//! Reading a growing log file line by line.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

/// At most this much is read per call, so a huge backlog (an agent restarted under a
/// chatty task) is worked through in bounded steps.
const MAX_READ: u64 = 1024 * 1024;
/// A "line" with no newline after this many bytes is returned as it is, so a program
/// that never writes a newline still shows output and memory stays bounded.
const MAX_LINE: usize = 64 * 1024;

/// Returns the complete lines appended to a file since the last read. A partial last
/// line waits for its newline; [`LogTail::offset`] is where the next read starts (just
/// after the last line returned), so a restarted agent resumes from a saved offset.
#[derive(Debug)]
pub struct LogTail {
    path: PathBuf,
    offset: u64,
}

impl LogTail {
    pub fn new(path: impl Into<PathBuf>, offset: u64) -> Self {
        Self {
            path: path.into(),
            offset,
        }
    }

    /// The byte offset just after the last complete line returned.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// New complete lines, without their line ends (`\n`, or a terminal's `\r\n`).
    /// A log that does not exist yet has no lines. Bytes that are not UTF-8 are shown
    /// as U+FFFD.
    pub fn read_lines(&mut self) -> std::io::Result<Vec<String>> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        if file.metadata()?.len() < self.offset {
            // Truncated or replaced: a log only grows, so start it over.
            self.offset = 0;
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        file.take(MAX_READ).read_to_end(&mut buf)?;

        let mut lines = Vec::new();
        let mut start = 0;
        while start < buf.len() {
            let rest = &buf[start..];
            let (len, next) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) if i <= MAX_LINE => (i, i + 1),
                _ if rest.len() > MAX_LINE => {
                    let cut = floor_char_boundary(rest, MAX_LINE);
                    (cut, cut)
                }
                _ => break,
            };
            let mut line = &rest[..len];
            // A terminal ends lines with \r\n; a program in a terminal in a terminal
            // (docker run -t in tmux) with \r\r\n.
            while line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            lines.push(String::from_utf8_lossy(line).into_owned());
            start += next;
        }
        self.offset += start as u64;
        Ok(lines)
    }
}

/// The largest index ≤ `at` that does not split a UTF-8 sequence (when the bytes are
/// UTF-8), so a forced cut does not garble a character.
fn floor_char_boundary(bytes: &[u8], at: usize) -> usize {
    let mut i = at.min(bytes.len());
    // A continuation byte is 10xxxxxx; step back at most three of them.
    while i > at.saturating_sub(3) && i > 0 && i < bytes.len() && (bytes[i] & 0xC0) == 0x80 {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &std::path::Path, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn complete_lines_only_and_the_partial_one_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let mut tail = LogTail::new(&path, 0);
        assert!(tail.read_lines().unwrap().is_empty(), "no file yet");

        append(&path, b"one\r\r\ntwo\npart");
        assert_eq!(tail.read_lines().unwrap(), vec!["one", "two"]);
        assert_eq!(tail.offset(), 10);
        assert!(tail.read_lines().unwrap().is_empty());

        append(&path, b"ial\n\nthree");
        assert_eq!(tail.read_lines().unwrap(), vec!["partial", ""]);
    }

    #[test]
    fn a_new_tail_resumes_from_a_saved_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        append(&path, b"a\nb\n");
        let mut first = LogTail::new(&path, 0);
        assert_eq!(first.read_lines().unwrap(), vec!["a", "b"]);
        append(&path, b"c\n");
        let mut resumed = LogTail::new(&path, first.offset());
        assert_eq!(resumed.read_lines().unwrap(), vec!["c"]);
    }

    #[test]
    fn a_truncated_log_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        append(&path, b"a long first line\n");
        let mut tail = LogTail::new(&path, 0);
        tail.read_lines().unwrap();
        std::fs::write(&path, b"new\n").unwrap();
        assert_eq!(tail.read_lines().unwrap(), vec!["new"]);
    }

    #[test]
    fn an_endless_line_comes_out_in_pieces_and_utf8_survives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        // Two bytes each, shifted by one so a cut at MAX_LINE would split one.
        let text = format!("a{}", "é".repeat(MAX_LINE));
        append(&path, text.as_bytes());
        let mut tail = LogTail::new(&path, 0);
        let mut got = String::new();
        loop {
            let lines = tail.read_lines().unwrap();
            if lines.is_empty() {
                break;
            }
            for l in lines {
                assert!(l.len() <= MAX_LINE);
                got.push_str(&l);
            }
        }
        // The last piece (under MAX_LINE, no newline) is still waiting.
        append(&path, b"\n");
        for l in tail.read_lines().unwrap() {
            got.push_str(&l);
        }
        assert_eq!(got, text);
        assert!(!got.contains('\u{fffd}'));
    }
}
