//! Rendering results: aligned text for people (coloured only on a terminal) or JSON for
//! scripts. Every command builds one serialisable report and hands it to [`emit`].

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};

use serde::Serialize;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Tables and labelled fields.
    Human,
    /// One JSON document on stdout.
    Json,
}

/// A command's result, printable both ways.
pub trait Report: Serialize {
    /// The human-readable form, ending with a newline.
    fn human(&self, style: Style) -> String;
}

/// Prints a report on stdout in the chosen format.
pub fn emit(format: Format, report: &impl Report) -> anyhow::Result<()> {
    let text = match format {
        Format::Human => report.human(Style::for_stdout()),
        Format::Json => {
            let mut json = serde_json::to_string_pretty(report)?;
            json.push('\n');
            json
        }
    };
    print(&text)?;
    Ok(())
}

/// Writes `text` to stdout now (for output that arrives in parts); `false` once the reader
/// has gone away (`trellis cert list | head`), which is not worth an error message.
pub fn print(text: &str) -> anyhow::Result<bool> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        other => {
            other?;
            Ok(true)
        }
    }
}

/// A colour for emphasis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// Good news: verified, healthy.
    Good,
    /// Needs attention soon: expiring.
    Warn,
    /// Bad news: expired, does not verify.
    Bad,
    /// Headings and labels.
    Strong,
    /// Secondary detail.
    Dim,
}

/// Whether to colour text. Colour only when stdout is a terminal and `NO_COLOR` is unset
/// (<https://no-color.org>), so pipes and files get plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    colour: bool,
}

impl Style {
    /// No colour: for tests.
    #[cfg(test)]
    pub const PLAIN: Style = Style { colour: false };

    /// The style for this process's stdout.
    pub fn for_stdout() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            colour: std::io::stdout().is_terminal() && !no_color,
        }
    }

    /// Whether this style colours (stdout is a terminal).
    pub fn is_colour(self) -> bool {
        self.colour
    }

    /// `text` in `tone`, or unchanged without colour.
    pub fn paint(self, tone: Tone, text: &str) -> String {
        if !self.colour {
            return text.to_owned();
        }
        let code = match tone {
            Tone::Good => "32",
            Tone::Warn => "33",
            Tone::Bad => "31",
            Tone::Strong => "1",
            Tone::Dim => "2",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

/// One cell: text and an optional colour, which is applied after padding so ANSI codes
/// never disturb column widths.
#[derive(Debug, Clone)]
pub struct Cell {
    text: String,
    tone: Option<Tone>,
}

impl Cell {
    /// A cell with a colour.
    pub fn toned(text: impl Into<String>, tone: Tone) -> Self {
        Self {
            text: text.into(),
            tone: Some(tone),
        }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Self { text, tone: None }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Self::from(text.to_owned())
    }
}

/// A table with a header row, columns padded to their widest cell.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    /// An empty table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have one cell per header.
    pub fn row(&mut self, cells: Vec<Cell>) {
        debug_assert_eq!(cells.len(), self.headers.len(), "one cell per column");
        self.rows.push(cells);
    }

    /// The table as lines of text, two spaces between columns, no trailing spaces.
    pub fn render(&self, style: Style) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.text.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<Cell> = self
            .headers
            .iter()
            .map(|h| Cell::toned(*h, Tone::Strong))
            .collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                let last = i + 1 == row.len();
                let pad = if last {
                    0
                } else {
                    width - cell.text.chars().count()
                };
                let text = match cell.tone {
                    Some(tone) => style.paint(tone, &cell.text),
                    None => cell.text.clone(),
                };
                line.push_str(&text);
                if !last {
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Labelled fields, one per line, values aligned: for `show`, `status` and `inspect`.
#[derive(Debug, Default)]
pub struct Fields {
    indent: usize,
    rows: Vec<(String, Cell)>,
}

impl Fields {
    /// No fields yet; lines indented by `indent` spaces.
    pub fn indented(indent: usize) -> Self {
        Self {
            indent,
            rows: Vec::new(),
        }
    }

    /// Adds a field.
    pub fn add(&mut self, label: &str, value: impl Into<Cell>) -> &mut Self {
        self.rows.push((label.to_owned(), value.into()));
        self
    }

    /// The fields as lines of text.
    pub fn render(&self, style: Style) -> String {
        let width = self
            .rows
            .iter()
            .map(|(l, _)| l.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (label, value) in &self.rows {
            let pad = width - label.chars().count();
            let value = match value.tone {
                Some(tone) => style.paint(tone, &value.text),
                None => value.text.clone(),
            };
            let _ = writeln!(
                out,
                "{}{}{}  {value}",
                " ".repeat(self.indent),
                style.paint(Tone::Strong, label),
                " ".repeat(pad)
            );
        }
        out
    }
}

/// A tone for an expiry: bad if past, a warning within `soon`, none otherwise.
pub fn expiry_tone(
    not_after: std::time::SystemTime,
    now: std::time::SystemTime,
    soon: std::time::Duration,
) -> Option<Tone> {
    match not_after.duration_since(now) {
        Err(_) => Some(Tone::Bad),
        Ok(left) if left.is_zero() => Some(Tone::Bad),
        Ok(left) if left < soon => Some(Tone::Warn),
        Ok(_) => None,
    }
}

/// A cell for an expiry with its tone.
pub fn expiry_cell(
    text: String,
    not_after: std::time::SystemTime,
    now: std::time::SystemTime,
    soon: std::time::Duration,
) -> Cell {
    match expiry_tone(not_after, now, soon) {
        Some(tone) => Cell::toned(text, tone),
        None => Cell::from(text),
    }
}

/// True once less than a fifth of the lifetime from `not_before` to `not_after` is left:
/// the point from which the CA logs a warning for a root or intermediate.
pub fn late_in_life(
    not_before: std::time::SystemTime,
    not_after: std::time::SystemTime,
    now: std::time::SystemTime,
) -> bool {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let left = not_after.duration_since(now).unwrap_or_default();
    left < lifetime / 5
}

/// A cell for a CA certificate's expiry: bad once expired, a warning in its last 20 % of
/// life (with a marker, so the warning survives without colour).
pub fn lifetime_cell(
    text: String,
    not_before: std::time::SystemTime,
    not_after: std::time::SystemTime,
    now: std::time::SystemTime,
) -> Cell {
    if not_after <= now {
        Cell::toned(text, Tone::Bad)
    } else if late_in_life(not_before, not_after, now) {
        Cell::toned(format!("{text}, last 20% of life"), Tone::Warn)
    } else {
        Cell::from(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns_and_trims_line_ends() {
        let mut table = Table::new(&["SERIAL", "SPIFFE ID", "EXPIRES"]);
        table.row(vec![
            "ab".into(),
            "spiffe://td/long/id".into(),
            "in 1h".into(),
        ]);
        table.row(vec!["abcdef01".into(), "spiffe://td/x".into(), "".into()]);
        assert_eq!(
            table.render(Style::PLAIN),
            "SERIAL    SPIFFE ID            EXPIRES\n\
             ab        spiffe://td/long/id  in 1h\n\
             abcdef01  spiffe://td/x\n"
        );
    }

    #[test]
    fn colour_does_not_change_alignment() {
        let coloured = Style { colour: true };
        let mut table = Table::new(&["A", "B"]);
        table.row(vec![Cell::toned("x", Tone::Bad), "y".into()]);
        let text = table.render(coloured);
        let second = text.lines().nth(1).expect("a row");
        assert_eq!(second, "\x1b[31mx\x1b[0m  y");
        assert!(text.starts_with("\x1b[1mA\x1b[0m  "));
    }

    #[test]
    fn fields_align_values() {
        let mut fields = Fields::indented(2);
        fields.add("Serial", "ab").add("SPIFFE ID", "spiffe://td/a");
        assert_eq!(
            fields.render(Style::PLAIN),
            "  Serial     ab\n  SPIFFE ID  spiffe://td/a\n"
        );
    }

    #[test]
    fn expiry_tones() {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        let soon = std::time::Duration::from_secs(600);
        let at = |s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
        assert_eq!(expiry_tone(at(999), now, soon), Some(Tone::Bad));
        assert_eq!(expiry_tone(at(1000), now, soon), Some(Tone::Bad));
        assert_eq!(expiry_tone(at(1100), now, soon), Some(Tone::Warn));
        assert_eq!(expiry_tone(at(5000), now, soon), None);
    }

    #[test]
    fn the_last_fifth_of_life_is_flagged() {
        let at = |s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
        // Lifetime 1000 s: from 801 s on, less than 200 s are left.
        assert!(!late_in_life(at(0), at(1000), at(800)));
        assert!(late_in_life(at(0), at(1000), at(801)));
        assert!(late_in_life(at(0), at(1000), at(2000)));
        let cell = lifetime_cell("in 1m".into(), at(0), at(1000), at(900));
        assert_eq!(cell.text, "in 1m, last 20% of life");
        assert_eq!(cell.tone, Some(Tone::Warn));
        assert_eq!(
            lifetime_cell("in 9m".into(), at(0), at(1000), at(100)).tone,
            None
        );
        assert_eq!(
            lifetime_cell("expired".into(), at(0), at(1000), at(1000)).tone,
            Some(Tone::Bad)
        );
    }
}
