//! Which traces are recorded: the OpenTelemetry samplers by their
//! standard names (`OTEL_TRACES_SAMPLER`), decided once per request from
//! its trace context.

use crate::context::TraceContext;
use crate::settings::SamplerKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Root {
    On,
    Off,
    /// Kept when the trace id's random part is below this bound.
    Ratio(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sampler {
    root: Root,
    /// Follow the caller's `sampled` flag when the trace came with the
    /// request; `root` decides only for traces that start here.
    parent_based: bool,
}

impl Sampler {
    pub(super) fn new(kind: SamplerKind, ratio: f64) -> Self {
        // As the OpenTelemetry SDKs compute it: the ratio of 2^63 against
        // the trace id's last 8 bytes shifted right once.
        let bound = (ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64;
        let (root, parent_based) = match kind {
            SamplerKind::AlwaysOn => (Root::On, false),
            SamplerKind::AlwaysOff => (Root::Off, false),
            SamplerKind::Traceidratio => (Root::Ratio(bound), false),
            SamplerKind::ParentbasedAlwaysOn => (Root::On, true),
            SamplerKind::ParentbasedAlwaysOff => (Root::Off, true),
            SamplerKind::ParentbasedTraceidratio => (Root::Ratio(bound), true),
        };
        Self { root, parent_based }
    }

    pub(super) fn sampled(&self, trace: &TraceContext) -> bool {
        if self.parent_based && trace.remote_parent().is_some() {
            return trace.sampled();
        }
        match self.root {
            Root::On => true,
            Root::Off => false,
            Root::Ratio(bound) => {
                let id = trace.trace_id_bytes();
                let mut low = [0u8; 8];
                low.copy_from_slice(&id[8..]);
                (u64::from_be_bytes(low) >> 1) < bound
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLED: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const UNSAMPLED: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    #[test]
    fn parent_based_follows_the_callers_flag_and_roots_decide_new_traces() {
        let sampled = TraceContext::from_header(Some(SAMPLED));
        let unsampled = TraceContext::from_header(Some(UNSAMPLED));
        let new = TraceContext::start();
        let on = Sampler::new(SamplerKind::ParentbasedAlwaysOn, 1.0);
        assert!(on.sampled(&sampled));
        assert!(!on.sampled(&unsampled));
        assert!(on.sampled(&new));
        let off = Sampler::new(SamplerKind::ParentbasedAlwaysOff, 1.0);
        assert!(off.sampled(&sampled));
        assert!(!off.sampled(&new));
        let always = Sampler::new(SamplerKind::AlwaysOn, 1.0);
        assert!(always.sampled(&unsampled));
        assert!(!Sampler::new(SamplerKind::AlwaysOff, 1.0).sampled(&sampled));
    }

    #[test]
    fn ratio_keeps_about_its_share() {
        let half = Sampler::new(SamplerKind::Traceidratio, 0.5);
        let kept = (0..4000)
            .filter(|_| half.sampled(&TraceContext::start()))
            .count();
        assert!((1700..2300).contains(&kept), "{kept}");
        assert!(!Sampler::new(SamplerKind::Traceidratio, 0.0).sampled(&TraceContext::start()));
        assert!(Sampler::new(SamplerKind::Traceidratio, 1.0).sampled(&TraceContext::start()));
    }
}
