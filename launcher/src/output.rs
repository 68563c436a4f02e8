//! Results on stdout: aligned tables for people, JSON for programs. Durations shown the
//! way they are typed (`1h30m`), so a TTL LEFT can be pasted back into `lease extend`.

use std::io::{IsTerminal, Write};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::error::{Error, Result};

/// A plain text table: a header row and columns padded to their widest cell.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<Cell>>,
}

/// A cell and whether to highlight it (only on a colour terminal, never with NO_COLOR).
#[derive(Debug, Clone)]
pub struct Cell {
    pub text: String,
    pub warn: bool,
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Cell { text, warn: false }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Cell::from(text.to_string())
    }
}

impl Table {
    pub fn new<I, S>(headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self, color: bool) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, c) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(c.text.chars().count());
                }
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &mut dyn Iterator<Item = (String, bool)>| {
            let mut parts = Vec::new();
            for (i, (text, warn)) in cells.enumerate() {
                let pad = widths.get(i).copied().unwrap_or(0)
                    - text
                        .chars()
                        .count()
                        .min(widths.get(i).copied().unwrap_or(0));
                let shown = if warn && color {
                    format!("\x1b[33m{text}\x1b[0m")
                } else {
                    text
                };
                parts.push(format!("{shown}{}", " ".repeat(pad)));
            }
            out.push_str(parts.join("  ").trim_end());
            out.push('\n');
        };
        line(
            &mut out,
            &mut self.headers.iter().map(|h| (h.clone(), false)),
        );
        for row in &self.rows {
            line(&mut out, &mut row.iter().map(|c| (c.text.clone(), c.warn)));
        }
        out
    }
}

/// Colour only on a terminal, and never when NO_COLOR is set (any value, per no-color.org).
pub fn stdout_color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal()
}

pub fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("Failed to write to stdout", e))
}

pub fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::io("Failed to render JSON", std::io::Error::other(e)))?;
    print(&format!("{text}\n"))
}

/// `1d4h`, `2h13m`, `4m10s`, `12s`: the two largest units, like a person would say it.
pub fn short_duration(d: TimeDelta) -> String {
    let secs = d.num_seconds().max(0);
    let (days, hours, mins, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (days, hours, mins) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => {
            if s == 0 {
                format!("{m}m")
            } else {
                format!("{m}m{s}s")
            }
        }
        (0, h, m) => {
            if m == 0 {
                format!("{h}h")
            } else {
                format!("{h}h{m}m")
            }
        }
        (d, h, _) => {
            if h == 0 {
                format!("{d}d")
            } else {
                format!("{d}d{h}h")
            }
        }
    }
}

/// Time left before a deadline, or how long ago it passed.
pub fn time_left(deadline: Option<DateTime<Utc>>, no_deadline: bool, now: DateTime<Utc>) -> Cell {
    match deadline {
        Some(d) if d > now => Cell {
            text: short_duration(d - now),
            warn: d - now < TimeDelta::minutes(15),
        },
        Some(d) => Cell {
            text: format!("expired {} ago", short_duration(now - d)),
            warn: true,
        },
        None if no_deadline => Cell::from("none"),
        None => Cell::from("-"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(short_duration(TimeDelta::seconds(12)), "12s");
        assert_eq!(short_duration(TimeDelta::seconds(250)), "4m10s");
        assert_eq!(short_duration(TimeDelta::seconds(7_980)), "2h13m");
        assert_eq!(short_duration(TimeDelta::seconds(7_200)), "2h");
        assert_eq!(short_duration(TimeDelta::seconds(100_800)), "1d4h");
        assert_eq!(short_duration(TimeDelta::seconds(-5)), "0s");
    }

    #[test]
    fn time_left_marks_expired_and_soon() {
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap();
        let c = time_left(Some(now + TimeDelta::hours(2)), false, now);
        assert_eq!((c.text.as_str(), c.warn), ("2h", false));
        let c = time_left(Some(now + TimeDelta::minutes(5)), false, now);
        assert!(c.warn);
        let c = time_left(Some(now - TimeDelta::minutes(5)), false, now);
        assert_eq!(c.text, "expired 5m ago");
        assert_eq!(time_left(None, true, now).text, "none");
        assert_eq!(time_left(None, false, now).text, "-");
    }

    #[test]
    fn table_aligns_columns_without_colour() {
        let mut t = Table::new(["ID", "STATE"]);
        t.row(vec![
            "i-1".into(),
            Cell {
                text: "running".into(),
                warn: true,
            },
        ]);
        t.row(vec!["i-0123456789".into(), "stopped".into()]);
        let text = t.render(false);
        assert_eq!(
            text,
            "ID            STATE\ni-1           running\ni-0123456789  stopped\n"
        );
        assert!(t.render(true).contains("\x1b[33mrunning"));
    }
}
