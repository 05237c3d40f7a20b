//! The configuration as envoyproxy/ratelimit's own config tests and README describe it, in
//! files written for these tests.

use super::{Config, Unit};

/// A domain with a limit at each kind of place: a key and value, a key alone, a nested rule,
/// an intermediate node with a limit of its own, a value whitelisted (no limit, no children).
const SHOP: &str = "
domain: shop
descriptors:
  - key: region
    value: eu
    rate_limit: { unit: minute, requests_per_unit: 10, name: eu_rule }
  - key: region
    rate_limit: { unit: Hour, requests_per_unit: 100 }
  - key: tenant
    value: acme
    rate_limit: { unit: day, requests_per_unit: 15 }
    descriptors:
      - key: path
        value: /orders
        rate_limit: { unit: day, requests_per_unit: 25 }
  - key: tenant
    descriptors:
      - key: path
        rate_limit: { unit: second, requests_per_unit: 5 }
  - key: tenant
    value: internal
";

fn config(files: &[(&str, &str)]) -> Config {
    Config::from_files(files.iter().copied(), false).unwrap()
}

fn error(files: &[(&str, &str)], merge: bool) -> String {
    Config::from_files(files.iter().copied(), merge)
        .unwrap_err()
        .to_string()
}

/// `(requests_per_unit, unit)` of the limit found, if any.
fn limit(config: &Config, domain: &str, entries: &[(&str, &str)]) -> Option<(u32, Unit)> {
    let found = config.find(domain, entries)?;
    Some((found.limit().requests_per_unit(), found.limit().unit()?))
}

#[test]
fn a_descriptor_finds_the_limit_at_exactly_its_depth() {
    let c = config(&[("shop.yaml", SHOP)]);
    // The exact key and value first, then the key alone for any other value (even empty).
    assert_eq!(
        limit(&c, "shop", &[("region", "eu")]),
        Some((10, Unit::Minute))
    );
    assert_eq!(
        limit(&c, "shop", &[("region", "us")]),
        Some((100, Unit::Hour))
    );
    assert_eq!(
        limit(&c, "shop", &[("region", "")]),
        Some((100, Unit::Hour))
    );
    assert_eq!(
        c.find("shop", &[("region", "eu")]).unwrap().limit().name(),
        "eu_rule"
    );
    // A nested rule; the intermediate node's own limit for a shorter descriptor.
    let orders = [("tenant", "acme"), ("path", "/orders")];
    assert_eq!(limit(&c, "shop", &orders), Some((25, Unit::Day)));
    assert_eq!(
        limit(&c, "shop", &[("tenant", "acme")]),
        Some((15, Unit::Day))
    );
    // Another value of the tenant falls to the key-only node, and its nested key-only rule.
    let other = [("tenant", "globex"), ("path", "/x")];
    assert_eq!(limit(&c, "shop", &other), Some((5, Unit::Second)));
    // No limit at the request's depth: a deeper request past a leaf, a shorter one above a
    // node without a limit, a whitelisted value, an unknown key or domain.
    assert_eq!(limit(&c, "shop", &[("region", "eu"), ("x", "y")]), None);
    assert_eq!(limit(&c, "shop", &[("tenant", "globex")]), None);
    assert_eq!(limit(&c, "shop", &[("tenant", "internal")]), None);
    assert_eq!(limit(&c, "shop", &[("colour", "red")]), None);
    assert_eq!(limit(&c, "elsewhere", &[("region", "eu")]), None);
    assert!(c.has_domain("shop") && !c.has_domain("elsewhere"));
}

#[test]
fn wildcards_are_tried_in_order_after_the_exact_value() {
    let c = config(&[(
        "files.yaml",
        "
domain: d
descriptors:
  - key: file
    value: report.pdf
    rate_limit: { unit: minute, requests_per_unit: 50 }
  - key: file
    value: report*
    rate_limit: { unit: minute, requests_per_unit: 100 }
  - key: file
    value: re*
    rate_limit: { unit: minute, requests_per_unit: 200 }
  - key: path
    value: /api/*/items/*
    share_threshold: true
    rate_limit: { unit: hour, requests_per_unit: 7 }
",
    )]);
    assert_eq!(limit(&c, "d", &[("file", "report.pdf")]).unwrap().0, 50);
    assert_eq!(limit(&c, "d", &[("file", "report.csv")]).unwrap().0, 100);
    assert_eq!(limit(&c, "d", &[("file", "readme")]).unwrap().0, 200);
    assert_eq!(limit(&c, "d", &[("file", "xreport")]), None);

    // Without share_threshold each value counts on its own; with it, the pattern names the
    // counter, so every value it matches shares one.
    let own = c.find("d", &[("file", "report.csv")]).unwrap();
    assert_eq!(
        own.counter_key("", "d", &[("file", "report.csv")], 60),
        "d_file_report.csv_60"
    );
    let a = [("path", "/api/v1/items/9")];
    let b = [("path", "/api/v2/items/3")];
    let shared = c.find("d", &a).unwrap();
    assert_eq!(
        shared.counter_key("p:", "d", &a, 3600),
        "p:d_path_/api/*/items/*_3600"
    );
    let other = c.find("d", &b).unwrap();
    assert_eq!(
        other.counter_key("p:", "d", &b, 3600),
        shared.counter_key("p:", "d", &a, 3600)
    );
    assert_eq!(limit(&c, "d", &[("path", "/api/v1/things/9")]), None);
}

#[test]
fn counter_keys_and_windows_follow_the_peer() {
    let c = config(&[(
        "k.yaml",
        "
domain: domain
descriptors:
  - key: key
    value: value
    rate_limit: { unit: second, requests_per_unit: 1 }
  - key: key2
    value: value2
    descriptors:
      - key: subkey2
        value: subvalue2
        rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: key3
    value: value3
    rate_limit: { unit: hour, requests_per_unit: 1 }
    descriptors:
      - key: subkey3
        value: subvalue3
        rate_limit: { unit: day, requests_per_unit: 1 }
",
    )]);
    let key = |entries: &[(&str, &str)], now: u64| {
        let found = c.find("domain", entries).unwrap();
        let start = found.limit().unit().unwrap().window_start(now);
        found.counter_key("", "domain", entries, start)
    };
    assert_eq!(key(&[("key", "value")], 1234), "domain_key_value_1234");
    assert_eq!(
        key(&[("key2", "value2"), ("subkey2", "subvalue2")], 1234),
        "domain_key2_value2_subkey2_subvalue2_1200"
    );
    assert_eq!(
        key(&[("key3", "value3")], 1_000_000),
        "domain_key3_value3_997200"
    );
    assert_eq!(
        key(&[("key3", "value3"), ("subkey3", "subvalue3")], 1_000_000),
        "domain_key3_value3_subkey3_subvalue3_950400"
    );
    // The reset is whole seconds to the next window: a second is always 1, never 0.
    assert_eq!(Unit::Minute.until_reset(2222), 58);
    assert_eq!(Unit::Second.until_reset(2222), 1);
    assert_eq!(Unit::Minute.until_reset(2220), 60);
    // A week starts on a Thursday (the epoch's weekday); a month is 30 days.
    assert_eq!(Unit::Week.window_start(7 * 86_400 + 5), 7 * 86_400);
    assert_eq!(Unit::Month.window_start(31 * 86_400), 30 * 86_400);
    assert_eq!(Unit::from_name("wEeK"), Some(Unit::Week));
    assert_eq!(Unit::from_name("unknown"), None);
    assert_eq!(Unit::from_wire(7), Some(Unit::Week));
    assert_eq!(Unit::from_wire(0), None);
}

#[test]
fn every_config_error_has_the_peer_s_text() {
    let cases: &[(&str, &str)] = &[
        ("domain: ''\n", "config file cannot have empty domain"),
        ("", "config file cannot have empty domain"),
        (
            "domain: d\ndescriptors:\n  - key: ''\n",
            "descriptor has empty key",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    value: v\n  - key: k\n    value: v\n",
            "duplicate descriptor composite key 'd.k_v'",
        ),
        (
            "domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: b\n      - key: b\n",
            "duplicate descriptor composite key 'd.a.b'",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: fortnight, requests_per_unit: 1 }\n",
            "invalid rate limit unit 'fortnight'",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { requests_per_unit: 1 }\n",
            "invalid rate limit unit ''",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, unlimited: true }\n",
            "should not specify rate limit unit when unlimited",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      name: a\n      replaces: [ { name: a } ]\n",
            "replaces should not contain name of same descriptor",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      name: a\n      replaces: [ { name: '' } ]\n",
            "should not have an empty replaces entry",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    value: v\n    share_threshold: true\n",
            "share_threshold can only be used with wildcard values (containing '*'), but found key 'k_v'",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    ratelimit: { unit: second }\n",
            "config error, unknown key 'ratelimit'",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requestsperunit: 5 }\n",
            "config error, unknown key 'requestsperunit'",
        ),
        ("0.25: d\n", "config error, key is not of type string: 0.25"),
        (
            "domain: d\ndescriptors:\n  - a\n",
            "config error, yaml file contains list of type other than map: a",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 1.5 }\n",
            "error checking config",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(
            error(&[("f.yaml", text)], false),
            format!("f.yaml: {expected}"),
            "{text}"
        );
    }
    // Decode errors keep the peer's prefix (go-yaml's own words follow it there).
    for text in [
        "'''",
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: -5 }\n",
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: '5' }\n",
        "domain: d\ndescriptors:\n  - key: k\n    shadow_mode: maybe\n",
    ] {
        let message = error(&[("f.yaml", text)], false);
        assert!(
            message.starts_with("f.yaml: error loading config file: "),
            "{text}: {message}"
        );
    }
    // Metadata is the user's: any keys.
    let meta = "domain: d\ndescriptors:\n  - key: k\n    metadata: { anything: [1, 2.5, { deep: true }] }\n    rate_limit: { unit: second, requests_per_unit: 1 }\n";
    let c = config(&[("m.yaml", meta)]);
    let found = c.find("d", &[("k", "x")]).unwrap();
    assert_eq!(
        serde_json::Value::Object(found.limit().metadata().unwrap().clone()),
        serde_json::json!({"anything": [1, 2.5, {"deep": true}]})
    );
}

#[test]
fn domains_in_several_files_merge_only_when_asked() {
    let one = "domain: d\ndescriptors:\n  - key: key1\n    value: value1\n    rate_limit: { unit: minute, requests_per_unit: 10 }\n";
    let two = "domain: d\ndescriptors:\n  - key: key2\n    value: value2\n    rate_limit: { unit: minute, requests_per_unit: 20 }\n";
    assert_eq!(
        error(&[("one.yaml", one), ("two.yaml", two)], false),
        "two.yaml: duplicate domain 'd' in config file"
    );
    let merged = Config::from_files([("one.yaml", one), ("two.yaml", two)], true).unwrap();
    assert_eq!(limit(&merged, "d", &[("key1", "value1")]).unwrap().0, 10);
    assert_eq!(limit(&merged, "d", &[("key2", "value2")]).unwrap().0, 20);
    assert_eq!(
        error(&[("one.yaml", one), ("again.yaml", one)], true),
        "again.yaml: duplicate descriptor composite key 'd.key1_value1'"
    );
}

#[test]
fn limits_carry_their_flags_and_the_dump_lists_them() {
    let c = config(&[(
        "flags.yaml",
        "
domain: d
descriptors:
  - key: a
    shadow_mode: true
    quota_mode: true
    rate_limit: { unit: minute, requests_per_unit: 3, name: a_rule, replaces: [ { name: b_rule } ] }
  - key: b
    rate_limit: { unlimited: true }
  - key: c
    detailed_metric: true
    rate_limit: { unit: day, requests_per_unit: 9 }
",
    )]);
    let a = c.find("d", &[("a", "1")]).unwrap();
    let a = a.limit();
    assert!(a.is_shadow() && a.is_quota() && !a.is_unlimited());
    assert_eq!(a.replaces(), ["b_rule"]);
    assert!(c.find("d", &[("b", "x")]).unwrap().limit().is_unlimited());
    // The stats key is the rule's place, or the request's own values when detailed.
    assert_eq!(c.find("d", &[("a", "1")]).unwrap().stats_key(), "d.a");
    assert_eq!(c.find("d", &[("c", "v9")]).unwrap().stats_key(), "d.c_v9");
    assert_eq!(
        c.dump(),
        "d.a: unit=MINUTE requests_per_unit=3, shadow_mode: true, quota_mode: true\n\
         d.b: unit=UNKNOWN requests_per_unit=0, shadow_mode: false, quota_mode: false\n\
         d.c: unit=DAY requests_per_unit=9, shadow_mode: false, quota_mode: false\n"
    );
}
