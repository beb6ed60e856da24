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
use serde_json::{Value, json};

/// The tool.
pub struct DateTime;

type R<T> = Result<T, String>;

fn str_arg<'a>(input: &'a Value, name: &str) -> R<&'a str> {
    input
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{name}` must be a string"))
}

fn zone(input: &Value) -> R<TimeZone> {
    match input.get("timezone").and_then(Value::as_str) {
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

impl DateTime {
    fn run(&self, call: &ToolInvocation) -> R<Value> {
        let input = &call.input;
        match call.activity.as_str() {
            "now" => Ok(describe(&ZonedDateTime::now().with_time_zone(zone(input)?))),
            "add" => {
                let tz = zone(input)?;
                let start = datetime(str_arg(input, "datetime")?, &tz)?;
                let text = str_arg(input, "duration")?;
                let span: Span = text.trim().parse().map_err(|e| {
                    format!("cannot read `{text}` as a duration ({e}): use e.g. `1 day 2 hours`, `90m`, `2 weeks ago` or `P1DT2H`")
                })?;
                let end = start
                    .checked_add(span)
                    .map_err(|e| format!("adding `{text}` goes out of range: {e}"))?;
                Ok(describe(&end))
            }
            "difference" => {
                let tz = zone(input)?;
                let start = datetime(str_arg(input, "start")?, &tz)?;
                let end = datetime(str_arg(input, "end")?, &tz)?;
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
            }
            "parse" => {
                let tz = zone(input)?;
                let text = str_arg(input, "text")?;
                let z = match input.get("format").and_then(Value::as_str) {
                    None | Some("") => datetime(text, &tz)?,
                    Some(fmt) => {
                        let tm = jiff::fmt::strtime::parse(fmt, text).map_err(|e| {
                            format!("`{text}` does not match the format `{fmt}`: {e}")
                        })?;
                        match tm.to_zoned_datetime() {
                            Ok(z) => z,
                            Err(_) => tm
                                .to_datetime()
                                .and_then(|dt| dt.to_zoned_datetime(tz.clone()))
                                .or_else(|_| tm.to_date().and_then(|d| d.to_zoned_datetime(tz.clone())))
                                .map_err(|e| format!("`{text}` parsed with `{fmt}` is not a complete date-time: {e}"))?,
                        }
                    }
                };
                Ok(describe(&z))
            }
            "format" => {
                let tz = zone(input)?;
                let z = datetime(str_arg(input, "datetime")?, &tz)?;
                let z = if input.get("timezone").is_some() {
                    z.with_time_zone(tz)
                } else {
                    z
                };
                let fmt = str_arg(input, "format")?;
                let out = jiff::fmt::strtime::format(fmt, &z)
                    .map_err(|e| format!("bad format `{fmt}`: {e}"))?;
                Ok(json!({"formatted": out}))
            }
            other => Err(format!(
                "unknown activity `{other}`; use now, add, difference, parse or format"
            )),
        }
    }

    fn output(&self, call: &ToolInvocation) -> ToolOutput {
        match self.run(call) {
            Ok(v) => ToolOutput::ok(v.to_string()),
            Err(e) => ToolOutput::error(e),
        }
    }
}

fn schema(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
}

impl Tool for DateTime {
    type Config = NoConfig;
    const SYNC: bool = true;
    const ASYNC: bool = true;

    fn new(_: NoConfig) -> Result<Self, PluginError> {
        Ok(DateTime)
    }

    fn spec(&self) -> ToolSpec {
        let tz = json!({"type": "string", "description": "IANA time zone, e.g. Europe/Paris (default UTC)"});
        let dt = json!({"type": "string", "description": "RFC 3339, a date, a civil date-time in `timezone`, or `now`"});
        ToolSpec::new("DateTime", "Current time, date arithmetic, parsing and formatting in any time zone")
            .activity("now", "The current date and time in a time zone", schema(json!({"timezone": tz}), &[]))
            .activity(
                "add",
                "Adds a duration to a date-time (`1 day 2 hours`, `90m`, `2 weeks ago` subtracts, `P1DT2H`)",
                schema(json!({"datetime": dt, "duration": {"type": "string"}, "timezone": tz}), &["datetime", "duration"]),
            )
            .activity(
                "difference",
                "The time from `start` to `end`, in calendar units and in seconds",
                schema(json!({"start": dt, "end": dt, "timezone": tz}), &["start", "end"]),
            )
            .activity(
                "parse",
                "Reads a date-time, optionally with a strftime format such as %d/%m/%Y %H:%M",
                schema(json!({"text": {"type": "string"}, "format": {"type": "string"}, "timezone": tz}), &["text"]),
            )
            .activity(
                "format",
                "Formats a date-time with a strftime format such as %A %d %B %Y, optionally in another time zone",
                schema(json!({"datetime": dt, "format": {"type": "string"}, "timezone": tz}), &["datetime", "format"]),
            )
    }

    fn call(&self, call: ToolInvocation) -> Result<ToolOutput, PluginError> {
        Ok(self.output(&call))
    }

    async fn call_async(&self, call: ToolInvocation) -> Result<ToolOutput, PluginError> {
        Ok(self.output(&call))
    }
}

plugin_api::export_plugin! {
    id: "datetime",
    description: "Date and time: now, add, difference, parse, format, with IANA time zones",
    tool: DateTime,
}
