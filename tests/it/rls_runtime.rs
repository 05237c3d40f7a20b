//! envoyproxy/ratelimit's runtime directory (`tollgate::envoy::Runtime`): which files load and
//! under which names, and reloads by each `RUNTIME_WATCH_ROOT`, on real directories.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{TempDir, swap_link};
use tollgate::envoy::{RateLimitService, Runtime, ServiceSettings};

fn domain(name: &str, rpu: u32) -> String {
    format!(
        "domain: {name}\ndescriptors:\n  - key: k\n    rate_limit: {{ unit: minute, requests_per_unit: {rpu} }}\n"
    )
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn names(runtime: &Runtime) -> Vec<String> {
    runtime
        .files()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

#[test]
fn files_are_named_as_the_peer_names_them() {
    let dir = TempDir::new("rls-names");
    let root = dir.0.join("current");
    write(&root.join("srv/config/basic.yaml"), &domain("a", 1));
    write(&root.join("srv/config/nested/more.yml"), &domain("b", 1));
    write(&root.join("srv/config/.hidden"), &domain("c", 1));
    write(&root.join("srv/other/ignored.yaml"), &domain("d", 1));
    let watch_root = Runtime {
        root: root.clone(),
        subdirectory: "srv".into(),
        ..Runtime::default()
    };
    assert_eq!(
        names(&watch_root),
        [
            "config..hidden",
            "config.basic.yaml",
            "config.nested.more.yml"
        ]
    );
    let plain = Runtime {
        watch_root: false,
        ignore_dotfiles: true,
        ..watch_root.clone()
    };
    assert_eq!(names(&plain), ["basic.yaml", "nested.more.yml"]);
    // With RUNTIME_WATCH_ROOT and no subdirectory the peer loads nothing: no domain.
    let nothing = Runtime {
        subdirectory: String::new(),
        ..watch_root.clone()
    };
    assert!(names(&nothing).is_empty());
    assert_eq!(nothing.load().unwrap().domains().count(), 0);
    // One bad file fails the load, naming it.
    write(
        &root.join("srv/config/bad.yaml"),
        "domain: a\ndescriptors:\n  - key: ''\n",
    );
    let error = plain.load().unwrap_err().to_string();
    assert_eq!(error, "bad.yaml: descriptor has empty key");
}

#[test]
fn a_configmap_mount_loads_its_copies_unless_dotfiles_are_ignored() {
    // What Kubernetes makes: ..<timestamp>/file, ..data -> ..<timestamp>, file -> ..data/file.
    let dir = TempDir::new("rls-configmap");
    let config = dir.0.join("config");
    write(&config.join("..2026_12_06/limits.yaml"), &domain("shop", 5));
    std::os::unix::fs::symlink("..2026_12_06", config.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/limits.yaml", config.join("limits.yaml")).unwrap();
    let runtime = Runtime {
        root: dir.0.clone(),
        watch_root: false,
        ..Runtime::default()
    };
    // The timestamped directory is walked (a link to a directory is not): the domain twice.
    let error = runtime.load().unwrap_err().to_string();
    assert_eq!(error, "limits.yaml: duplicate domain 'shop' in config file");
    let ignoring = Runtime {
        ignore_dotfiles: true,
        ..runtime
    };
    assert_eq!(names(&ignoring), ["limits.yaml"]);
    assert!(ignoring.load().unwrap().has_domain("shop"));
}

fn service() -> RateLimitService {
    let store = tollgate::MemoryStore::new();
    RateLimitService::on_store(store, Duration::from_secs(1), ServiceSettings::default()).unwrap()
}

/// Waits (at most 2 s) until `service`'s configuration has `domain`.
async fn loaded(service: &RateLimitService, domain: &str) {
    let start = Instant::now();
    while !service.config().is_some_and(|c| c.has_domain(domain)) {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{domain} not loaded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn watch_root_reloads_when_the_root_is_swapped() {
    let dir = TempDir::new("rls-watch-root");
    write(&dir.0.join("v1/srv/config/a.yaml"), &domain("one", 1));
    write(&dir.0.join("v2/srv/config/a.yaml"), &domain("two", 1));
    std::os::unix::fs::symlink("v1", dir.0.join("current")).unwrap();
    let runtime = Runtime {
        root: dir.0.join("current"),
        subdirectory: "srv".into(),
        ..Runtime::default()
    };
    let service = service();
    service.set_config(runtime.load().unwrap());
    let _watcher = runtime.watch(service.clone()).unwrap();
    swap_link("v2", &dir.0.join("current"));
    loaded(&service, "two").await;
    // And again: the root's directory is still watched.
    write(&dir.0.join("v3/srv/config/a.yaml"), &domain("three", 1));
    swap_link("v3", &dir.0.join("current"));
    loaded(&service, "three").await;
}

#[tokio::test]
async fn without_watch_root_any_change_in_the_directory_reloads() {
    let dir = TempDir::new("rls-watch-dir");
    let config = dir.0.join("config");
    write(&config.join("a.yaml"), &domain("one", 1));
    let runtime = Runtime {
        root: dir.0.clone(),
        watch_root: false,
        ..Runtime::default()
    };
    let service = service();
    service.set_config(runtime.load().unwrap());
    let _watcher = runtime.watch(service.clone()).unwrap();
    write(&config.join("b.yaml"), &domain("two", 1));
    loaded(&service, "two").await;
    std::fs::remove_file(config.join("a.yaml")).unwrap();
    let start = Instant::now();
    while service.config().unwrap().has_domain("one") {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "a removed file still loaded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
