//! Log formatting: one line per event, whatever the text logged.
//!
//! Log lines carry text from outside (a `write-message` request, a plugin's log line, an
//! error quoting a command's output). Every field is written through [`LineFields`], which
//! keeps an event on one line: newlines, carriage returns and other control characters
//! are written as escapes (`\n`, `\r`, `\x1b`), and a message never starts with a syslog
//! priority marker (`<3>`). So no text can start a journal entry of its own or choose its
//! priority.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::Level;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The daemon's subscriber, writing to `writer`. With `journal` (stderr is the journal),
/// each line is `<N>LEVEL message key=value...` ([`JournalFormat`]); otherwise the usual
/// timestamped lines. Fields are always written by [`LineFields`].
pub fn subscriber<W>(
    filter: EnvFilter,
    writer: W,
    journal: bool,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(writer)
        .fmt_fields(LineFields);
    if journal {
        Box::new(builder.event_format(JournalFormat).finish())
    } else {
        Box::new(builder.finish())
    }
}

/// One line per event for journald's stream parser: `<N>LEVEL message key=value...`. The
/// `<N>` syslog priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug) is stripped
/// by journald and sets the entry's PRIORITY; the journal stamps the time itself. So an
/// entry's MESSAGE reads `INFO System is ready version=...`.
pub struct JournalFormat;

/// The syslog priority of a tracing level.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = event.metadata().level();
        write!(writer, "<{}>{} ", priority(level), level)?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Writes an event's fields on one line: the message as it is, other fields as
/// `name=value` (strings quoted), all of it through [`write_one_line`].
pub struct LineFields;

impl<'w> FormatFields<'w> for LineFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = LineVisitor {
            writer,
            empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct LineVisitor<'w> {
    writer: Writer<'w>,
    empty: bool,
    result: fmt::Result,
}

impl LineVisitor<'_> {
    fn field(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let text = value.to_string();
        let sep = if self.empty { "" } else { " " };
        self.empty = false;
        self.result = if name == "message" {
            self.writer
                .write_str(sep)
                .and_then(|_| write_one_line(&mut self.writer, &text, true))
        } else {
            let name = name.strip_prefix("r#").unwrap_or(name);
            write!(self.writer, "{sep}{name}=")
                .and_then(|_| write_one_line(&mut self.writer, &text, false))
        };
    }
}

impl Visit for LineVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.field(field, format_args!("{value}"));
        } else {
            self.field(field, format_args!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, format_args!("{value:?}"));
    }
}

/// Writes `text` so that it stays on the current line: line breaks, carriage returns and
/// the other control characters (a tab excepted) as escapes; with `message`, a leading
/// syslog priority marker (`<` and a digit) gets its `<` escaped as `\x3c`.
pub fn write_one_line(out: &mut impl fmt::Write, text: &str, message: bool) -> fmt::Result {
    let mut rest = text;
    if message && rest.starts_with('<') && rest[1..].starts_with(|c: char| c.is_ascii_digit()) {
        out.write_str("\\x3c")?;
        rest = &rest[1..];
    }
    for c in rest.chars() {
        match c {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_char('\t')?,
            c if c.is_control() => write!(out, "\\x{:02x}", c as u32)?,
            c => out.write_char(c)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::TRACE), 7);
    }

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(journal: bool, f: impl FnOnce()) -> String {
        let buf = Buffer::default();
        let writer = buf.clone();
        let sub = subscriber(
            EnvFilter::new("debug"),
            move || writer.clone(),
            journal,
            false,
        );
        tracing::subscriber::with_default(sub, f);
        let out = buf.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn user_text_cannot_start_a_journal_line_or_set_a_priority() {
        let text = "hello\n<3>ERROR forged\r\n<2>also\0 \x1b[31mred";
        let plugin = "demo\n<0>x";
        let out = capture(true, || {
            tracing::info!("{text}");
            tracing::info!(plugin, "<1>{text}");
            tracing::warn!(error = %text, "failed");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                r"<6>INFO hello\n<3>ERROR forged\r\n<2>also\x00 \x1b[31mred",
                r#"<6>INFO \x3c1>hello\n<3>ERROR forged\r\n<2>also\x00 \x1b[31mred plugin="demo\n<0>x""#,
                r"<4>WARN failed error=hello\n<3>ERROR forged\r\n<2>also\x00 \x1b[31mred",
            ],
            "{out}"
        );
    }

    #[test]
    fn the_plain_format_keeps_events_on_one_line_too() {
        let out = capture(false, || tracing::info!("a\nb"));
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.trim_end().ends_with(r"INFO a\nb"), "{out}");
    }

    #[test]
    fn ordinary_text_is_unchanged() {
        let mut s = String::new();
        write_one_line(&mut s, "System is ready <b> 3 < 4\ttab", true).unwrap();
        assert_eq!(s, "System is ready <b> 3 < 4\ttab");
        let mut s = String::new();
        write_one_line(&mut s, "<b>bold", true).unwrap();
        assert_eq!(s, "<b>bold");
    }
}
