//! A decision as envoyproxy/ratelimit's limiter and service tests describe it, on counters
//! given by hand.

use super::{Descriptor, Hits, Plan, RequestError, Settings, Status};
use crate::envoy::{Config, Unit};

const DOMAIN: &str = "
domain: d
descriptors:
  - key: a
    rate_limit: { unit: minute, requests_per_unit: 20, name: a_rule }
  - key: b
    rate_limit: { unit: hour, requests_per_unit: 10, name: b_rule, replaces: [ { name: a_rule } ] }
  - key: free
    rate_limit: { unlimited: true, replaces: [ { name: c_rule } ] }
  - key: c
    rate_limit: { unit: second, requests_per_unit: 5, name: c_rule }
  - key: q
    quota_mode: true
    rate_limit: { unit: minute, requests_per_unit: 2 }
  - key: s
    shadow_mode: true
    rate_limit: { unit: minute, requests_per_unit: 1 }
";

fn config() -> Config {
    Config::from_files([("d.yaml", DOMAIN)], false).unwrap()
}

fn one<'a>(key: &'a str, value: &'a str) -> Descriptor<'a> {
    Descriptor {
        entries: vec![(key, value)],
        ..Descriptor::default()
    }
}

/// Decides `descriptors` with each counter at `after`.
fn decide(
    descriptors: &[Descriptor<'_>],
    hits_addend: u32,
    after: &[u64],
    settings: Settings,
) -> (Vec<Status>, Vec<Hits>, bool) {
    let plan = Plan::new(&config(), "d", descriptors, hits_addend).unwrap();
    plan.statuses(&settings, after, 2222)
}

#[test]
fn a_counted_limit_is_over_only_past_its_limit_and_says_what_is_left() {
    // (after, hits) -> (over, remaining) on a limit of 20, as the peer's vectors say.
    for (after, hits, over, remaining) in [
        (5, 3, false, 15),
        (19, 3, false, 1),
        (20, 1, false, 0),
        (21, 1, true, 0),
        (22, 3, true, 0),
        (22, 7, true, 0),
        (21, 0, true, 0),
    ] {
        let descriptor = Descriptor {
            hits_addend: Some(hits),
            ..one("a", "x")
        };
        let (statuses, counted, overall) = decide(&[descriptor], 1, &[after], Settings::default());
        let status = &statuses[0];
        assert_eq!(
            (status.over_limit, status.limit_remaining),
            (over, remaining),
            "{after}/{hits}"
        );
        assert_eq!(overall, over);
        assert_eq!(
            status.current_limit,
            Some((20, Unit::Minute, "a_rule".to_owned()))
        );
        // A minute at 2222 s ends in 58 s.
        assert_eq!(status.duration_until_reset, Some(58));
        assert_eq!(counted[0].total, hits);
    }
}

#[test]
fn hits_split_into_within_near_and_over_as_the_peer_counts_them() {
    let hits = |after, hits| {
        let descriptor = Descriptor {
            hits_addend: Some(hits),
            ..one("a", "x")
        };
        decide(&[descriptor], 1, &[after], Settings::default()).1[0]
    };
    // A limit of 20: near from 16 on.
    let over = hits(22, 3);
    assert_eq!(
        (over.over_limit, over.near_limit, over.within_limit),
        (2, 1, 0)
    );
    let over = hits(22, 7);
    assert_eq!((over.over_limit, over.near_limit), (2, 4));
    let within = hits(18, 4);
    assert_eq!((within.within_limit, within.near_limit), (4, 2));
    let far = hits(30, 2);
    assert_eq!((far.over_limit, far.near_limit), (2, 0));
}

#[test]
fn costs_come_from_the_descriptor_then_the_request() {
    let plan = |descriptors: &[Descriptor<'_>], request| {
        let plan = Plan::new(&config(), "d", descriptors, request).unwrap();
        let counts = plan.counts("p:", "d", descriptors, 2222);
        counts.iter().map(|c| c.hits).collect::<Vec<_>>()
    };
    let own = Descriptor {
        hits_addend: Some(0),
        ..one("a", "x")
    };
    assert_eq!(plan(&[one("a", "x")], 0), [1]);
    assert_eq!(plan(&[one("a", "x")], 4), [4]);
    assert_eq!(plan(&[own.clone(), one("c", "y")], 4), [0, 4]);
    let counts = Plan::new(&config(), "d", &[one("a", "x")], 1)
        .unwrap()
        .counts("p:", "d", &[one("a", "x")], 2222);
    assert_eq!(counts[0].key, "p:d_a_x_2220");
    assert_eq!(counts[0].window_s, 60);
}

#[test]
fn replaced_and_unlimited_limits_are_not_counted() {
    let descriptors = [
        one("a", "1"),
        one("b", "2"),
        one("free", "3"),
        one("c", "4"),
    ];
    let plan = Plan::new(&config(), "d", &descriptors, 1).unwrap();
    // b replaces a; free (unlimited, never counted) replaces c.
    let counts = plan.counts("", "d", &descriptors, 2222);
    assert_eq!(counts.len(), 1);
    assert_eq!(
        (counts[0].descriptor, counts[0].key.as_str()),
        (1, "d_b_2_0")
    );
    let (statuses, _, over) = plan.statuses(&Settings::default(), &[11], 2222);
    let none = Status {
        over_limit: false,
        current_limit: None,
        limit_remaining: 0,
        duration_until_reset: None,
        quota: false,
    };
    assert_eq!(statuses[0], none);
    assert!(statuses[1].over_limit && over);
    assert_eq!(statuses[2].limit_remaining, u32::MAX);
    assert_eq!(statuses[2].current_limit, None);
    assert_eq!(statuses[3], none);
}

#[test]
fn quotas_shadow_mode_and_the_overall_code() {
    let default = Settings::default();
    // A quota alone over: over. One of two quotas over: not; both: over. Every quota over
    // beside a plain descriptor within: over all the same.
    let q = one("q", "1");
    assert!(decide(std::slice::from_ref(&q), 1, &[3], default).2);
    assert!(!decide(&[q.clone(), one("q", "2")], 1, &[3, 1], default).2);
    assert!(decide(&[q.clone(), one("q", "2")], 1, &[3, 3], default).2);
    assert!(decide(&[q.clone(), one("a", "x")], 1, &[3, 1], default).2);
    // QUOTA_MODE makes every descriptor a quota, one without a limit too.
    let quota = Settings {
        quota_mode: true,
        ..default
    };
    assert!(!decide(&[one("a", "x"), one("c", "y")], 1, &[21, 1], quota).2);
    assert!(decide(&[one("a", "x"), one("c", "y")], 1, &[21, 6], quota).2);
    assert!(!decide(&[one("a", "x"), one("nothing", "y")], 1, &[21], quota).2);
    // A rule in shadow mode answers OK with nothing left, and never makes the request over.
    let (statuses, hits, over) = decide(&[one("s", "1")], 1, &[2], default);
    assert!(!statuses[0].over_limit && !over);
    assert_eq!(statuses[0].limit_remaining, 0);
    assert_eq!(hits[0].shadow_mode, 1);
    // SHADOW_MODE: the descriptor says over, the request is not.
    let shadow = Settings {
        shadow_mode: true,
        ..default
    };
    let (statuses, _, over) = decide(&[one("a", "x")], 1, &[21], shadow);
    assert!(statuses[0].over_limit && !over);
}

#[test]
fn a_request_s_own_limit_applies_only_in_a_known_domain() {
    let descriptor = Descriptor {
        limit: Some((3, Unit::Hour as i32)),
        ..one("zzz", "v")
    };
    let plan = Plan::new(&config(), "d", std::slice::from_ref(&descriptor), 1).unwrap();
    let matched = plan.limits()[0].as_ref().unwrap();
    assert_eq!(matched.limit().requests_per_unit(), 3);
    assert_eq!(matched.limit().name(), "");
    assert_eq!(matched.stats_key(), "d.zzz_v");
    // Its counter is the descriptor's own, as a rule's would be.
    let counts = plan.counts("", "d", std::slice::from_ref(&descriptor), 7200);
    assert_eq!(counts[0].key, "d_zzz_v_7200");
    let unknown = Plan::new(&config(), "other", std::slice::from_ref(&descriptor), 1).unwrap();
    assert!(unknown.limits()[0].is_none());
    let no_unit = Descriptor {
        limit: Some((3, 0)),
        ..one("zzz", "v")
    };
    assert_eq!(
        Plan::new(&config(), "d", &[no_unit], 1).unwrap_err(),
        RequestError::OverrideUnit(0)
    );
}

#[test]
fn an_empty_domain_or_descriptor_list_is_the_peer_s_error() {
    let config = config();
    let empty = Plan::new(&config, "", &[one("a", "x")], 1).unwrap_err();
    assert_eq!(empty.to_string(), "rate limit domain must not be empty");
    let none = Plan::new(&config, "d", &[], 1).unwrap_err();
    assert_eq!(
        none.to_string(),
        "rate limit descriptor list must not be empty"
    );
}
