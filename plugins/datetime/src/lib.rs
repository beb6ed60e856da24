//! The DateTime tool, on jiff (IANA time zones bundled, so it answers the same on every
//! machine).
//!
//! Activities: `now`, `add`, `difference`, `parse`, `format`. Date-times are read as RFC 3339
//! (`2026-11-24T08:00:00Z`, `2026-11-24T09:00:00+01:00`), with a zone annotation
//! (`2026-11-24T09:00:00+01:00[Europe/Paris]`), as a civil date-time or date in the given time
//! zone (`2026-11-24 09:00`, `2026-11-24`), or as `now`. Durations are friendly (`1 day 2 hours`,
//! `3h 30m`, `2 weeks ago`) or ISO 8601 (`P1DT2H`).

use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, Unit, ZonedDateTime};
use plugin_api::prelude::*;

/// The tool.
pub struct DateTime;

type R<T> = Result<T, String>;

fn zone(name: Option<&str>) -> R<TimeZone> {
    match name {
        None | Some("") => Ok(TimeZone::UTC),
        Some(name) => TimeZone::get(name).map_err(|_| {
            format!("unknown time zone `{name}`: use an IANA name such as UTC, Europe/Paris or America/New_York")
        }),
    }
}
/// Reads a date-time in the ways the module docs list; civil times are in `tz`.
fn datetime(text: &str, tz: &TimeZone) -> R<ZonedDateTime> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("now") {
        return Ok(ZonedDateTime::now().with_time_zone(tz.clone()));
    }
    if let Ok(z) = t.parse::<ZonedDateTime>() {
        return Ok(z);
    }
    if let Ok(ts) = t.parse::<Timestamp>() {
        return Ok(ts.to_zoned_datetime(tz.clone()));
    }
    if let Ok(dt) = t.parse::<jiff::civil::DateTime>() {
        return dt
            .to_zoned_datetime(tz.clone())
            .map_err(|e| format!("`{t}` does not exist in that time zone: {e}"));
    }
    if let Ok(d) = t.parse::<jiff::civil::Date>() {
        return d
            .to_zoned_datetime(tz.clone())
            .map_err(|e| format!("`{t}` does not exist in that time zone: {e}"));
    }
    Err(format!(
        "cannot read `{t}` as a date-time: use RFC 3339 (2026-11-24T08:00:00Z), a date (2026-11-24), \
         a civil date-time (2026-11-24 08:00) or `now`"
    ))
}

fn describe(z: &ZonedDateTime) -> Value {
    json!({
        "datetime": z.to_string(),
        "rfc3339": z.timestamp().display_with_offset(z.offset()).to_string(),
        "timezone": z.time_zone().iana_name().unwrap_or("fixed offset"),
        "weekday": format!("{:?}", z.weekday()),
        "unix_seconds": z.timestamp().as_second(),
    })
}

/// A result for the model: the value as structured data, or what went wrong as an error result
/// it can act on.
fn output(result: R<Value>) -> ToolOutput {
    match result {
        Ok(v) => ToolOutput::json(v),
        Err(e) => ToolOutput::error(e),
    }
}

/// The current date and time in a time zone.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Now {
    /// IANA time zone, e.g. Europe/Paris (default UTC)
    pub timezone: Option<String>,
}

impl Activity<DateTime> for Now {
    const NAME: &'static str = "now";
    type Output = ToolOutput;

    fn run(self, _: &DateTime) -> Result<ToolOutput, PluginError> {
        let tz = zone(self.timezone.as_deref());
        Ok(output(tz.map(|tz| {
            describe(&ZonedDateTime::now().with_time_zone(tz))
        })))
    }
}

/// Adds a duration to a date-time (`1 day 2 hours`, `90m`, `2 weeks ago` subtracts, `P1DT2H`).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Add {
    /// RFC 3339, a date, a civil date-time in `timezone`, or `now`
    pub datetime: String,
    /// The duration to add
    pub duration: String,
    /// IANA time zone, e.g. Europe/Paris (default UTC)
    pub timezone: Option<String>,
}

impl Activity<DateTime> for Add {
    const NAME: &'static str = "add";
    type Output = ToolOutput;

    fn run(self, _: &DateTime) -> Result<ToolOutput, PluginError> {
        Ok(output((|| {
            let start = datetime(&self.datetime, &zone(self.timezone.as_deref())?)?;
            let text = &self.duration;
            let span: Span = text.trim().parse().map_err(|e| {
                format!("cannot read `{text}` as a duration ({e}): use e.g. `1 day 2 hours`, `90m`, `2 weeks ago` or `P1DT2H`")
            })?;
            let end = start
                .checked_add(span)
                .map_err(|e| format!("adding `{text}` goes out of range: {e}"))?;
            Ok(describe(&end))
        })()))
    }
}

/// The time from `start` to `end`, in calendar units and in seconds.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Difference {
    /// RFC 3339, a date, a civil date-time in `timezone`, or `now`
    pub start: String,
    /// RFC 3339, a date, a civil date-time in `timezone`, or `now`
    pub end: String,
    /// IANA time zone, e.g. Europe/Paris (default UTC)
    pub timezone: Option<String>,
}

impl Activity<DateTime> for Difference {
    const NAME: &'static str = "difference";
    type Output = ToolOutput;

    fn run(self, _: &DateTime) -> Result<ToolOutput, PluginError> {
        Ok(output((|| {
            let tz = zone(self.timezone.as_deref())?;
            let start = datetime(&self.start, &tz)?;
            let end = datetime(&self.end, &tz)?;
            let span = start
                .until((Unit::Year, &end))
                .map_err(|e| format!("cannot compute the difference: {e}"))?;
            let seconds = span
                .total((Unit::Second, &start))
                .map_err(|e| format!("cannot compute the difference: {e}"))?;
            Ok(json!({
                "span": format!("{span:#}"),
                "iso8601": span.to_string(),
                "total_seconds": seconds,
                "total_days": seconds / 86_400.0,
            }))
        })()))
    }
}

/// Reads a date-time, optionally with a strftime format such as %d/%m/%Y %H:%M.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Parse {
    /// The text to read
    pub text: String,
    /// A strftime format; without one, the forms `datetime` accepts
    pub format: Option<String>,
    /// IANA time zone, e.g. Europe/Paris (default UTC)
    pub timezone: Option<String>,
}

impl Activity<DateTime> for Parse {
    const NAME: &'static str = "parse";
    type Output = ToolOutput;

    fn run(self, _: &DateTime) -> Result<ToolOutput, PluginError> {
        Ok(output((|| {
            let tz = zone(self.timezone.as_deref())?;
            let text = &self.text;
            let z = match self.format.as_deref() {
                None | Some("") => datetime(text, &tz)?,
                Some(fmt) => {
                    let tm = jiff::fmt::strtime::parse(fmt, text)
                        .map_err(|e| format!("`{text}` does not match the format `{fmt}`: {e}"))?;
                    match tm.to_zoned_datetime() {
                        Ok(z) => z,
                        Err(_) => tm
                            .to_datetime()
                            .and_then(|dt| dt.to_zoned_datetime(tz.clone()))
                            .or_else(|_| tm.to_date().and_then(|d| d.to_zoned_datetime(tz.clone())))
                            .map_err(|e| {
                                format!(
                                    "`{text}` parsed with `{fmt}` is not a complete date-time: {e}"
                                )
                            })?,
                    }
                }
            };
            Ok(describe(&z))
        })()))
    }
}

/// Formats a date-time with a strftime format such as %A %d %B %Y, optionally in another time
/// zone.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Format {
    /// RFC 3339, a date, a civil date-time in `timezone`, or `now`
    pub datetime: String,
    /// A strftime format
    pub format: String,
    /// IANA time zone, e.g. Europe/Paris (default UTC)
    pub timezone: Option<String>,
}

impl Activity<DateTime> for Format {
    const NAME: &'static str = "format";
    type Output = ToolOutput;

    fn run(self, _: &DateTime) -> Result<ToolOutput, PluginError> {
        Ok(output((|| {
            let tz = zone(self.timezone.as_deref())?;
            let z = datetime(&self.datetime, &tz)?;
            let z = if self.timezone.is_some() {
                z.with_time_zone(tz)
            } else {
                z
            };
            let fmt = &self.format;
            let out = jiff::fmt::strtime::format(fmt.as_str(), &z)
                .map_err(|e| format!("bad format `{fmt}`: {e}"))?;
            Ok(json!({"formatted": out}))
        })()))
    }
}

impl TypedTool for DateTime {
    type Config = NoConfig;
    const NAME: &'static str = "DateTime";
    const DESCRIPTION: &'static str =
        "Current time, date arithmetic, parsing and formatting in any time zone";

    fn new(_: NoConfig) -> Result<Self, PluginError> {
        Ok(DateTime)
    }

    fn activities(set: &mut Activities<Self>) {
        set.add::<Now>()
            .add::<Add>()
            .add::<Difference>()
            .add::<Parse>()
            .add::<Format>();
    }
}

plugin_api::export_plugin! {
    tool: DateTime,
    description: "Date and time: now, add, difference, parse, format, with IANA time zones",
}
