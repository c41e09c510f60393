//! Prometheus metrics of the controller, served on `/metrics`.

use std::time::Instant;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`Error::metric_label`].
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Every metric, registered under the prefix `lvs_controller`.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<ErrorLabels, Counter>,
    duration: Histogram,
    managed: Family<KindLabels, Gauge>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("lvs_controller");
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        // 1 ms .. ~33 s: a reconcile translates the whole cluster (cached) and writes.
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let managed = Family::<KindLabels, Gauge>::default();
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciles of VirtualServices", reconciles.clone());
        registry.register("reconcile_errors", "Failed reconciles, by reason", errors.clone());
        registry.register("reconcile_duration_seconds", "Duration of reconciles", duration.clone());
        registry.register(
            "managed_objects",
            "Objects the controller manages: VirtualServices, and the LvsNodes it wrote",
            managed.clone(),
        );
        registry.register("leader", "1 while this replica holds the lease and writes", leader.clone());
        let build = Family::<BuildLabels, Gauge>::default();
        build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("build_info", "The controller's version (always 1)", build);
        Self { registry, reconciles, errors, duration, managed, leader }
    }
}

impl Metrics {
    /// Count a reconcile; its duration is recorded when the guard drops.
    pub fn reconcile(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer { histogram: &self.duration, start: Instant::now() }
    }

    pub fn reconcile_failed(&self, error: &Error) {
        self.errors.get_or_create(&ErrorLabels { reason: error.metric_label() }).inc();
    }

    pub fn set_managed(&self, virtual_services: usize, lvs_nodes: usize) {
        let set = |kind, count: usize| {
            self.managed.get_or_create(&KindLabels { kind }).set(i64::try_from(count).unwrap_or(i64::MAX))
        };
        set("VirtualService", virtual_services);
        set("LvsNode", lvs_nodes);
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// Observes the reconcile's duration when dropped.
pub struct ReconcileTimer<'a> {
    histogram: &'a Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of metrics with a series in every family.
    fn every_series() -> String {
        let metrics = Metrics::default();
        drop(metrics.reconcile());
        metrics.reconcile_failed(&Error::CleanupPending(vec!["lvs1".into()]));
        metrics.set_managed(3, 2);
        metrics.set_leader(true);
        metrics.encode()
    }

    #[test]
    fn metrics_are_exposed_with_their_labels() {
        let text = every_series();
        for line in [
            "lvs_controller_reconciles_total 1",
            r#"lvs_controller_reconcile_errors_total{reason="cleanup_pending"} 1"#,
            "lvs_controller_reconcile_duration_seconds_count 1",
            r#"lvs_controller_managed_objects{kind="LvsNode"} 2"#,
            r#"lvs_controller_managed_objects{kind="VirtualService"} 3"#,
            "lvs_controller_leader 1",
            &format!(r#"lvs_controller_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION")),
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
    }

    /// Every `lvs_controller_` metric that the monitoring kit (alerts,
    /// dashboard) and the docs use is one the controller serves.
    #[test]
    fn the_monitoring_kit_and_the_docs_use_metrics_that_exist() {
        let text = every_series();
        let served: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split(['{', ' ']).next())
            .collect();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut checked = 0;
        for file in ["deploy/monitoring/alerts.yaml", "deploy/monitoring/dashboard.json", "docs/metrics.md"] {
            let content = std::fs::read_to_string(root.join(file)).unwrap();
            for (at, _) in content.match_indices("lvs_controller_") {
                let name: String =
                    content[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                // A histogram is served as its _bucket, _sum and _count.
                let histogram = format!("{name}_bucket");
                assert!(
                    served.contains(name.as_str()) || served.contains(histogram.as_str()),
                    "{file} uses {name}, which the controller does not serve"
                );
                checked += 1;
            }
        }
        assert!(checked > 5, "only {checked} uses found");
    }
}
