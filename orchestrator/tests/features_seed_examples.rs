//! The seeds' own examples must work with the catalog: seed 000's "Feature Combinations" and
//! seed 001's "Recommended Configurations" (names mapped as docs/features.md decides), each on
//! the IOMMU server fixture, valid under its risk tolerance.

use std::path::PathBuf;

use hv_orchestrator::features::{resolve, Catalog, Risk, Selection};
use hv_orchestrator::host::detect;

fn check(features: &[&str], risk_tolerance: Option<&str>) -> hv_orchestrator::features::Resolution {
    let catalog = Catalog::builtin().unwrap();
    let root =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts/server-iommu-2gpu");
    let host = detect(&root).unwrap();
    let selection = Selection {
        tier: None,
        extra: features.iter().map(|s| s.to_string()).collect(),
        risk_tolerance: risk_tolerance.map(str::to_string),
    };
    let resolution = resolve(&catalog, &selection, Some(&host)).unwrap();
    assert!(
        resolution.is_valid(),
        "{features:?}: {:?}",
        resolution.errors
    );
    resolution
}

#[test]
fn test_seed_000_combinations_resolve() {
    let security = check(
        &[
            "security-base",
            "ssh-hardening",
            "firewall",
            "audit-logging",
            "ai-security",
            "ids-ips",
            "vulnerability-scanning",
            "compliance",
        ],
        None,
    );
    assert!(
        security.enabled.contains(&"monitoring".to_string()),
        "ai-security pulls monitoring"
    );
    let workstation = check(
        &[
            "core",
            "desktop-kde",
            "dev-tools",
            "container-support",
            "kubernetes-tools",
            "database-tools",
            "web-dashboard",
        ],
        None,
    );
    assert!(!workstation.enabled.contains(&"desktop-xfce".to_string()));
    let cluster = check(
        &[
            "clustering",
            "high-availability",
            "storage-distributed",
            "monitoring",
            "alerting",
            "backup-enterprise",
            "disaster-recovery",
        ],
        None,
    );
    assert_eq!(cluster.tier, "enterprise");
    check(
        &[
            "multi-tenant",
            "network-isolation",
            "federation",
            "web-dashboard",
            "rest-api",
            "monitoring",
            "compliance",
        ],
        None,
    );
}

#[test]
fn test_seed_001_recommended_configurations_fit_their_risk_tolerance() {
    // Home lab: monitoring, localBackup, webDashboard, cliEnhancements (balanced).
    check(
        &["monitoring", "backup-basic", "web-dashboard", "cli-tools"],
        Some("balanced"),
    );
    // Development: monitoring, api, devEnvironments, snapshots (core), webDashboard (accepting).
    check(
        &["monitoring", "rest-api", "dev-tools", "web-dashboard"],
        Some("accepting"),
    );
    // Production: monitoring, threatDetection, remoteBackup, microSegmentation, encryption,
    // auditLogging (cautious).
    let production = check(
        &[
            "monitoring",
            "threat-detection",
            "backup-remote",
            "network-isolation",
            "storage-encryption",
            "audit-logging",
        ],
        Some("cautious"),
    );
    assert_eq!(production.risk, Risk::Moderate);
    // Security-critical: auditLogging, threatDetection (paranoid; behavioralAnalysis and
    // forensics have no catalog feature).
    let critical = check(&["audit-logging", "threat-detection"], Some("paranoid"));
    assert_eq!(critical.risk, Risk::Low);
}
