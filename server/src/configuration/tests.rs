use super::*;

fn settings(shards: Option<&str>) -> Settings {
    Settings {
        shards: shards.map(str::to_owned),
        ..Settings::default()
    }
}

const TWO: &str = "postgres://u@h/a,postgres://u@h/b";

#[test]
fn serves_every_shard_by_default() {
    let config = ServerConfig::from_settings(settings(Some(TWO)), None).expect("valid");
    assert_eq!(config.serve, vec![ShardId::new(0), ShardId::new(1)]);
}

#[test]
fn serves_a_subset_without_repeats() {
    let config = ServerConfig::from_settings(settings(Some(TWO)), Some(vec![1, 1])).expect("valid");
    assert_eq!(config.serve, vec![ShardId::new(1)]);
}

#[test]
fn a_shard_outside_noetl_shards_is_a_clear_error() {
    let error = ServerConfig::from_settings(settings(Some(TWO)), Some(vec![2]))
        .expect_err("shard 2 does not exist");
    assert!(error.to_string().contains("lists only 2 shards"), "{error}");
}

#[test]
fn missing_noetl_shards_is_a_clear_error() {
    let error = ServerConfig::from_settings(settings(None), None).expect_err("required");
    assert!(
        error.to_string().contains("NOETL_SHARDS is not set"),
        "{error}"
    );
}

#[test]
fn zero_limits_are_refused() {
    let zero_batch = Settings {
        max_batch: 0,
        ..settings(Some(TWO))
    };
    let error = ServerConfig::from_settings(zero_batch, None).expect_err("zero batch");
    assert!(error.to_string().contains("max_batch"), "{error}");
}

#[test]
fn pools_are_open_and_shell_is_the_default_tenants_unless_configured() {
    let config = ServerConfig::from_settings(settings(Some(TWO)), None).expect("valid");
    assert!(config.access.pools.is_empty());
    assert_eq!(config.access.shell, [DEFAULT_TENANT.to_owned()].into());
    let tuned = Settings {
        pool_tenants: [("gpu".to_owned(), vec![" a".to_owned(), "b".to_owned()])].into(),
        shell_tenants: vec![],
        ..settings(Some(TWO))
    };
    let access = ServerConfig::from_settings(tuned, None)
        .expect("valid")
        .access;
    assert_eq!(
        access.pools,
        [("gpu".to_owned(), ["a".to_owned(), "b".to_owned()].into())].into()
    );
    assert!(access.shell.is_empty());
    for (pool, tenants, named) in [
        (
            "a.b",
            vec!["a".to_owned()],
            "invalid pool name in pool_tenants",
        ),
        ("gpu", vec![], "lists no tenant"),
        ("gpu", vec![" ".to_owned()], "empty tenant"),
    ] {
        let bad = Settings {
            pool_tenants: [(pool.to_owned(), tenants)].into(),
            ..settings(Some(TWO))
        };
        let error = ServerConfig::from_settings(bad, None).expect_err(named);
        assert!(format!("{error:#}").contains(named), "{error:#}");
    }
}

#[test]
fn max_loop_items_defaults_to_10000_and_is_bounded() {
    let config = ServerConfig::from_settings(settings(Some(TWO)), None).expect("valid");
    assert_eq!(config.max_loop_items, 10_000);
    for (items, refused) in [(0, "at least 1"), (1_000_001, "at most 1000000")] {
        let bad = Settings {
            max_loop_items: items,
            ..settings(Some(TWO))
        };
        let error = ServerConfig::from_settings(bad, None).expect_err("out of bounds");
        assert_eq!(
            error.to_string(),
            format!("max_loop_items must be {refused}")
        );
    }
}

#[test]
fn retention_is_30_days_unless_set_per_tenant_and_never_zero() {
    let config = ServerConfig::from_settings(settings(Some(TWO)), None).expect("valid");
    assert_eq!(
        config.retention.default,
        Duration::from_secs(30 * 24 * 3600)
    );
    assert!(config.retention.tenants.is_empty());
    assert!(config.rendering.secret_headers.is_secret("x-api-key"));
    let joined =
        serde_json::json!({"tenant_retention_ms": "a=1000, b=5", "secret_headers": "X-Token"});
    let tuned = Settings {
        shards: Some(TWO.to_owned()),
        ..Settings::deserialize(joined).expect("a joined table")
    };
    let config = ServerConfig::from_settings(tuned, None).expect("valid");
    assert_eq!(
        config.retention.tenants,
        [
            ("a".to_owned(), Duration::from_millis(1000)),
            ("b".to_owned(), Duration::from_millis(5))
        ]
        .into()
    );
    let headers = &config.rendering.secret_headers;
    assert!(headers.is_secret("x-token") && headers.is_secret("Cookie"));
    assert!(!headers.is_secret("x-api-key"));
    for (raw, named) in [
        (
            serde_json::json!({"tenant_retention_ms": "a"}),
            "name=milliseconds",
        ),
        (
            serde_json::json!({"tenant_retention_ms": "a=x"}),
            "milliseconds",
        ),
    ] {
        let error = Settings::deserialize(raw).expect_err(named);
        assert!(error.to_string().contains(named), "{error}");
    }
    for bad in [
        Settings {
            tenant_retention_ms: [("a".to_owned(), 0)].into(),
            ..settings(Some(TWO))
        },
        Settings {
            retention_ms: 0,
            ..settings(Some(TWO))
        },
    ] {
        let error = ServerConfig::from_settings(bad, None).expect_err("zero");
        assert!(error.to_string().contains("retention_ms"), "{error}");
    }
}

#[test]
fn template_budgets_are_read_and_bounded() {
    let config = ServerConfig::from_settings(settings(Some(TWO)), None).expect("valid");
    assert_eq!(config.rendering.budget, template::Budget::default());
    let tuned = Settings {
        template_fuel: 5,
        template_max_bytes: 6,
        template_max_depth: 7,
        template_deadline_ms: 8,
        ..settings(Some(TWO))
    };
    let rendering = ServerConfig::from_settings(tuned, None)
        .expect("valid")
        .rendering;
    assert_eq!(
        (rendering.budget, rendering.deadline),
        (
            template::Budget {
                fuel: 5,
                max_bytes: 6,
                max_depth: 7
            },
            std::time::Duration::from_millis(8)
        )
    );
    for (deep, zero) in [(101, 1), (1, 0)] {
        let bad = Settings {
            template_max_depth: deep,
            template_fuel: zero,
            ..settings(Some(TWO))
        };
        let error = ServerConfig::from_settings(bad, None).expect_err("out of bounds");
        assert!(error.to_string().contains("template_"), "{error}");
    }
}

#[test]
fn the_longest_step_is_bounded_by_a_day_and_bounds_the_default() {
    let config = ServerConfig::from_settings(settings(Some(TWO)), None).expect("valid");
    assert_eq!(config.leases.max_timeout_ms, MAX_TIMEOUT_MS);
    let lowered = Settings {
        max_step_timeout_ms: 60_000,
        default_step_timeout_ms: 60_000,
        ..settings(Some(TWO))
    };
    let leases = ServerConfig::from_settings(lowered, None)
        .expect("valid")
        .leases;
    assert_eq!(
        (leases.max_timeout_ms, leases.default_timeout_ms),
        (60_000, 60_000)
    );
    for (max, default, named) in [
        (0, 1, "max_step_timeout_ms must be at least 1"),
        (MAX_TIMEOUT_MS + 1, 1, "max_step_timeout_ms must be at most"),
        (
            60_000,
            60_001,
            "default_step_timeout_ms (60001) must not exceed",
        ),
    ] {
        let bad = Settings {
            max_step_timeout_ms: max,
            default_step_timeout_ms: default,
            ..settings(Some(TWO))
        };
        let error = ServerConfig::from_settings(bad, None).expect_err(named);
        assert!(error.to_string().contains(named), "{error}");
    }
}
