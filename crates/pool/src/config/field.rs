//! The vocabulary of validation: a bad field ([`FieldError`]), every bad field of one settings
//! object ([`ConfigErrors`]), a changed field ([`ConfigChange`]), and the [`Applier`] that
//! checks and applies raw settings field by field, naming each under its dotted path.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// One bad field: its dotted path, the offending value and why it was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `pool.headers_timeout`.
    pub field: String,
    /// The value as given.
    pub value: String,
    /// Why it was refused.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.field, self.value, self.reason)
    }
}

/// Every bad field of one settings object; nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigErrors(pub Vec<FieldError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// One field a settings update changed, with its old and new value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigChange {
    /// Dotted path of the field.
    pub field: String,
    /// Value before the change.
    pub old: String,
    /// Value after the change.
    pub new: String,
}

/// Collects field errors and changes while settings are applied field by field.
pub(crate) struct Applier<'a> {
    prefix: &'a str,
    pub errors: Vec<FieldError>,
    pub changes: Vec<ConfigChange>,
}

impl<'a> Applier<'a> {
    /// An applier naming fields under `prefix` (e.g. `"pool."`).
    pub fn new(prefix: &'a str) -> Self {
        Applier {
            prefix,
            errors: Vec::new(),
            changes: Vec::new(),
        }
    }

    pub fn path(&self, field: &str) -> String {
        format!("{}{}", self.prefix, field)
    }

    pub fn error(&mut self, field: &str, value: impl fmt::Display, reason: impl Into<String>) {
        self.errors.push(FieldError {
            field: self.path(field),
            value: value.to_string(),
            reason: reason.into(),
        });
    }

    pub fn changed(&mut self, field: &str, old: String, new: String) {
        if old != new {
            self.changes.push(ConfigChange {
                field: self.path(field),
                old,
                new,
            });
        }
    }

    /// A duration greater than zero and at most [`MAX_DURATION`].
    pub fn duration(&mut self, field: &str, raw: &Option<String>, target: &mut Duration) {
        let Some(raw) = raw else { return };
        match parse_duration_setting(raw) {
            Ok(d) => {
                self.changed(field, show_duration(*target), show_duration(d));
                *target = d;
            }
            Err(reason) => self.error(field, quoted(raw), reason),
        }
    }

    /// An optional duration (absent: none), greater than zero and at most [`MAX_DURATION`] when
    /// given; absent leaves it as it is.
    pub fn optional_duration(
        &mut self,
        field: &str,
        raw: &Option<String>,
        target: &mut Option<Duration>,
    ) {
        let Some(raw) = raw else { return };
        match parse_duration_setting(raw) {
            Ok(d) => {
                let old = target.map_or_else(|| "none".to_owned(), show_duration);
                self.changed(field, old, show_duration(d));
                *target = Some(d);
            }
            Err(reason) => self.error(field, quoted(raw), reason),
        }
    }

    pub fn count<T>(&mut self, field: &str, raw: Option<i64>, min: i64, max: i64, target: &mut T)
    where
        T: TryFrom<i64> + Copy + fmt::Display,
    {
        let Some(v) = raw else { return };
        if v < min || v > max {
            return self.error(field, v, format!("must be between {min} and {max}"));
        }
        match T::try_from(v) {
            Ok(n) => {
                self.changed(field, target.to_string(), n.to_string());
                *target = n;
            }
            Err(_) => self.error(field, v, "out of range on this platform"),
        }
    }

    /// A limit of 1 to `max`; absent leaves it as it is (the caller's "unlimited").
    pub fn limit(&mut self, field: &str, raw: Option<i64>, max: u32, target: &mut Option<u32>) {
        let Some(v) = raw else { return };
        if v < 1 || v > i64::from(max) {
            return self.error(
                field,
                v,
                format!("must be between 1 and {max} (leave it out for no limit)"),
            );
        }
        let n = v as u32;
        self.changed(field, show_limit(*target), n.to_string());
        *target = Some(n);
    }

    pub fn ratio(&mut self, field: &str, raw: Option<f64>, target: &mut f64) {
        let Some(v) = raw else { return };
        if !(v > 0.0 && v <= 1.0) {
            return self.error(field, v, "must be greater than 0 and at most 1");
        }
        self.changed(field, target.to_string(), v.to_string());
        *target = v;
    }
}

/// The longest any duration setting may be: past any sane timeout or interval, and far short
/// of what deadline arithmetic on an `Instant` can hold.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Parses a duration setting such as `"500ms"`, `"30s"` or `"5m"`: greater than zero and at
/// most [`MAX_DURATION`]. The error is the reason, for a [`FieldError`] naming the field.
pub fn parse_duration_setting(raw: &str) -> Result<Duration, String> {
    match humantime::parse_duration(raw.trim()) {
        Ok(d) if d.is_zero() => Err("must be greater than zero".into()),
        Ok(d) if d > MAX_DURATION => Err(format!(
            "must be at most {}h (the longest duration poolserve takes)",
            MAX_DURATION.as_secs() / 3600
        )),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "not a duration ({e}); use e.g. \"500ms\", \"30s\", \"5m\""
        )),
    }
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

pub(crate) fn show_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn show_limit(l: Option<u32>) -> String {
    l.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
}
