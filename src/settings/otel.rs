//! The `tracing:` section: OpenTelemetry span export over OTLP/HTTP
//! (protobuf). Off unless `otlp_endpoint` is set; the standard `OTEL_*`
//! variables override the file, with their standard meaning.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ConfigError, units};

/// Overrides `tracing.otlp_endpoint`: the collector's base URL.
pub const ENV_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Overrides `tracing.service_name`.
pub const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// Added to `tracing.resource_attributes` (`key=value,key=value`).
pub const ENV_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
/// Overrides `tracing.sampler`.
pub const ENV_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
/// Overrides `tracing.sampler_arg`.
pub const ENV_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";

/// The `tracing:` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingSettings {
    /// Collector base URL; spans go to `<endpoint>/v1/traces`. None: off.
    #[serde(with = "optional_url")]
    pub otlp_endpoint: Option<reqwest::Url>,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// More attributes of the exported resource.
    pub resource_attributes: BTreeMap<String, String>,
    /// Which traces are recorded.
    pub sampler: SamplerKind,
    /// The ratio of the `traceidratio` samplers, 0 to 1.
    pub sampler_arg: f64,
    /// Spans waiting for export; past it new spans are dropped and counted.
    pub queue_spans: usize,
}

impl Default for TracingSettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "eai-gateway".to_owned(),
            resource_attributes: BTreeMap::new(),
            sampler: SamplerKind::ParentbasedAlwaysOn,
            sampler_arg: 1.0,
            queue_spans: 4096,
        }
    }
}

/// The OpenTelemetry sampler names (`OTEL_TRACES_SAMPLER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// Every trace.
    AlwaysOn,
    /// No trace.
    AlwaysOff,
    /// `sampler_arg` of the traces, by trace id.
    Traceidratio,
    /// The caller's decision when it sent a `traceparent`, else every trace.
    ParentbasedAlwaysOn,
    /// The caller's decision when it sent a `traceparent`, else none.
    ParentbasedAlwaysOff,
    /// The caller's decision when it sent a `traceparent`, else by ratio.
    ParentbasedTraceidratio,
}

impl SamplerKind {
    fn parse(v: &str) -> Option<Self> {
        Some(match v.trim() {
            "always_on" => Self::AlwaysOn,
            "always_off" => Self::AlwaysOff,
            "traceidratio" => Self::Traceidratio,
            "parentbased_always_on" => Self::ParentbasedAlwaysOn,
            "parentbased_always_off" => Self::ParentbasedAlwaysOff,
            "parentbased_traceidratio" => Self::ParentbasedTraceidratio,
            _ => return None,
        })
    }
}

impl TracingSettings {
    /// Applies the `OTEL_*` variables; each error names its variable.
    pub(super) fn apply_env(
        &mut self,
        set: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        if let Some(v) = set(ENV_ENDPOINT) {
            self.otlp_endpoint =
                Some(units::http_url::parse(&v).map_err(|e| ConfigError::env(ENV_ENDPOINT, e))?);
        }
        if let Some(v) = set(ENV_SERVICE_NAME) {
            self.service_name = v;
        }
        if let Some(v) = set(ENV_RESOURCE_ATTRIBUTES) {
            for pair in v.split(',').filter(|p| !p.trim().is_empty()) {
                let (key, value) = pair.split_once('=').ok_or_else(|| {
                    ConfigError::env(
                        ENV_RESOURCE_ATTRIBUTES,
                        format!("{pair:?} is not key=value"),
                    )
                })?;
                // The spec percent-encodes values.
                let value = percent_encoding::percent_decode_str(value.trim())
                    .decode_utf8_lossy()
                    .into_owned();
                self.resource_attributes
                    .insert(key.trim().to_owned(), value);
            }
        }
        if let Some(v) = set(ENV_SAMPLER) {
            self.sampler = SamplerKind::parse(&v).ok_or_else(|| {
                ConfigError::env(ENV_SAMPLER, format!("{v:?} is not one of {SAMPLERS}"))
            })?;
        }
        if let Some(v) = set(ENV_SAMPLER_ARG) {
            self.sampler_arg = v
                .trim()
                .parse()
                .map_err(|_| ConfigError::env(ENV_SAMPLER_ARG, format!("{v:?} is not a number")))?;
        }
        Ok(())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sampler_arg) {
            return Err(ConfigError::out_of_range(
                "tracing.sampler_arg",
                self.sampler_arg,
                "must be between 0 and 1",
            ));
        }
        if self.service_name.trim().is_empty() {
            return Err(ConfigError::new(
                "tracing.service_name",
                "must not be empty",
            ));
        }
        if !(16..=1_000_000).contains(&self.queue_spans) {
            return Err(ConfigError::out_of_range(
                "tracing.queue_spans",
                self.queue_spans,
                "must be between 16 and 1000000",
            ));
        }
        Ok(())
    }
}

const SAMPLERS: &str = "always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio";

mod optional_url {
    use serde::{Deserialize, Deserializer, de};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<reqwest::Url>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(raw) => super::units::http_url::parse(&raw)
                .map(Some)
                .map_err(de::Error::custom),
        }
    }
}
