//! Routing by epoch, planning, retiring and checking successors, against the shared vectors
//! and hand-made histories.

use super::*;
use crate::id::NodeId;
use crate::test_vectors;
use proptest::prelude::*;

fn count(n: u32) -> ShardCount {
    ShardCount::new(n).expect("non-zero")
}

fn bootstrap(n: u32) -> Topology {
    Topology::bootstrap(count(n), DEFAULT_GRACE_MS).expect("valid bootstrap")
}

/// 2024-06-01, some time after the custom epoch.
const NOW: i64 = 1_717_200_000_000;

/// The document `from` plans for `n` shards at `at`, with the cluster's grace.
fn planned(from: &Topology, n: u32, at: i64) -> Topology {
    from.plan(count(n), at, 0)
        .expect("plans")
        .next
        .expect("a change")
}

/// Two shards grown to four at `NOW`.
fn grown() -> Topology {
    planned(&bootstrap(2), 4, NOW)
}

#[test]
fn shared_topology_vectors_route_with_the_epoch_at_the_id_timestamp() {
    let (topology, cases) = test_vectors::topology();
    assert_eq!(topology.epochs().len(), 3);
    assert!(!cases.is_empty());
    for case in cases {
        let route = topology.route(case.execution_id);
        assert_eq!(
            (route.shard_count, route.shard),
            (case.shard_count, case.shard),
            "id {}",
            case.execution_id
        );
    }
}

#[test]
fn bootstrap_routes_like_plain_shard_of() {
    let topology = bootstrap(4);
    let id = ExecutionId::new(42).expect("valid");
    assert_eq!(topology.route(id).shard, shard_of(id, count(4)));
    assert_eq!(topology.route(id).epoch, 1);
}

#[test]
fn malformed_histories_are_rejected() {
    assert_eq!(
        Topology::new(vec![], DEFAULT_GRACE_MS, vec![]),
        Err(Error::Empty)
    );
    let first = Epoch {
        epoch: 1,
        activate_at_ms: CUSTOM_EPOCH_UNIX_MS,
        shard_count: count(2),
    };
    let late_first = Epoch {
        activate_at_ms: CUSTOM_EPOCH_UNIX_MS + 1,
        ..first
    };
    assert_eq!(
        Topology::new(vec![late_first], DEFAULT_GRACE_MS, vec![]),
        Err(Error::FirstEpoch)
    );
    let not_later = Epoch { epoch: 2, ..first };
    assert!(matches!(
        Topology::new(vec![first, not_later], DEFAULT_GRACE_MS, vec![]),
        Err(Error::OutOfOrder { epoch: 2, .. })
    ));
    assert_eq!(
        Topology::new(vec![first], 10, vec![]),
        Err(Error::Grace(10))
    );
    let beyond = Retirement {
        shard: ShardId::new(2),
        retired_at_ms: NOW,
        data: RetiredData::Kept,
    };
    assert_eq!(
        Topology::new(vec![first], DEFAULT_GRACE_MS, vec![beyond]),
        Err(Error::Retirement(ShardId::new(2)))
    );
    let json = r#"{"epochs":[{"epoch":1,"activate_at_ms":1704067200000,"shard_count":0}]}"#;
    assert!(serde_json::from_str::<Topology>(json).is_err());
}

#[test]
fn documents_without_grace_or_retirements_read_with_the_defaults() {
    let json = r#"{"epochs":[{"epoch":1,"activate_at_ms":1704067200000,"shard_count":2}]}"#;
    let topology: Topology = serde_json::from_str(json).expect("an early document");
    assert_eq!(topology, bootstrap(2));
    let round_trip: Topology =
        serde_json::from_str(&serde_json::to_string(&topology).expect("serialises"))
            .expect("reads back");
    assert_eq!(round_trip, topology);
}

#[test]
fn planning_the_current_count_changes_nothing() {
    let plan = bootstrap(2).plan(count(2), NOW, 0).expect("plans");
    assert_eq!(plan.next, None);
    assert!(plan.added.is_empty() && plan.draining.is_empty());
}

#[test]
fn growing_adds_shards_that_activate_a_grace_from_now() {
    let plan = bootstrap(2).plan(count(4), NOW, 0).expect("plans");
    let next = plan.next.clone().expect("a change");
    assert_eq!(plan.added, vec![ShardId::new(2), ShardId::new(3)]);
    assert!(plan.draining.is_empty());
    assert_eq!(plan.activate_at_ms(), Some(NOW + DEFAULT_GRACE_MS));
    assert_eq!(next.latest().epoch, 2);
    assert_eq!(
        next.shard_state(ShardId::new(3), NOW),
        ShardState::Activating
    );
    let after = NOW + DEFAULT_GRACE_MS;
    assert_eq!(next.shard_state(ShardId::new(3), after), ShardState::Active);
    bootstrap(2)
        .check_successor(&next, NOW)
        .expect("a valid successor");
    let later = bootstrap(2).plan(count(4), NOW, 120_000).expect("plans");
    assert_eq!(later.activate_at_ms(), Some(NOW + 120_000));
    let never_sooner = bootstrap(2).plan(count(4), NOW, 5).expect("plans");
    assert_eq!(never_sooner.activate_at_ms(), Some(NOW + DEFAULT_GRACE_MS));
}

#[test]
fn shrinking_drains_the_shards_beyond_the_new_count() {
    let grown = grown();
    let later = NOW + DEFAULT_GRACE_MS;
    let plan = grown.plan(count(3), later, 0).expect("plans");
    assert_eq!(plan.draining, vec![ShardId::new(3)]);
    let shrunk = plan.next.expect("a change");
    assert_eq!(
        shrunk.shard_state(ShardId::new(3), later),
        ShardState::Draining
    );
    assert_eq!(
        shrunk.shard_state(ShardId::new(2), later),
        ShardState::Active
    );
    assert_eq!(shrunk.served_shards().len(), 4);
}

#[test]
fn a_change_planned_while_another_is_pending_activates_after_it() {
    let grown = grown();
    let pending = grown.latest().activate_at_ms;
    // Planned at once, with a grace that would land on the same instant.
    let next = planned(&grown, 3, NOW);
    assert!(next.latest().activate_at_ms > pending);
}

#[test]
fn only_draining_shards_retire_and_their_data_decision_is_kept() {
    let grown = grown();
    let later = NOW + DEFAULT_GRACE_MS;
    assert!(matches!(
        grown.retire(ShardId::new(3), RetiredData::Kept, later),
        Err(ChangeError::NotDraining {
            state: ShardState::Active,
            ..
        })
    ));
    let shrunk = planned(&grown, 3, later);
    let activation = shrunk.latest().activate_at_ms;
    // Until a grace after the shrink activates, submits minted before it may still land.
    for too_early in [later, activation, activation + DEFAULT_GRACE_MS - 1] {
        assert!(matches!(
            shrunk.retire(ShardId::new(3), RetiredData::Kept, too_early),
            Err(ChangeError::StillReceiving { .. })
        ));
    }
    let retired = shrunk
        .retire(
            ShardId::new(3),
            RetiredData::Discarded,
            activation + DEFAULT_GRACE_MS,
        )
        .expect("a draining shard retires");
    assert_eq!(
        retired.shard_state(ShardId::new(3), later),
        ShardState::Retired
    );
    assert_eq!(retired.served_shards().len(), 3);
    assert!(matches!(
        retired.retire(ShardId::new(9), RetiredData::Kept, later),
        Err(ChangeError::NotDraining { .. })
    ));
    assert_eq!(
        retired.plan(count(4), later, 0).err(),
        Some(ChangeError::GrowsOverRetired(ShardId::new(3)))
    );
    shrunk
        .check_successor(&retired, later)
        .expect("retiring appends");
    assert_eq!(
        retired.check_successor(&shrunk, later),
        Err(ChangeError::RewritesRetirement(ShardId::new(3)))
    );
}

#[test]
fn successors_must_append_after_the_grace_and_keep_the_grace() {
    let current = bootstrap(2);
    let soon = Topology::new(
        vec![
            current.latest(),
            Epoch {
                epoch: 2,
                activate_at_ms: NOW + 10,
                shard_count: count(3),
            },
        ],
        DEFAULT_GRACE_MS,
        vec![],
    )
    .expect("well formed");
    assert!(matches!(
        current.check_successor(&soon, NOW),
        Err(ChangeError::TooSoon { epoch: 2, .. })
    ));
    let rewritten = bootstrap(3);
    assert_eq!(
        current.check_successor(&rewritten, NOW),
        Err(ChangeError::RewritesEpoch(1))
    );
    let other_grace = Topology::bootstrap(count(2), 5_000).expect("valid");
    assert!(matches!(
        current.check_successor(&other_grace, NOW),
        Err(ChangeError::GraceChanged { .. })
    ));
}

#[test]
fn a_server_notices_an_activated_epoch_that_was_rewritten() {
    let grown = grown();
    let recorded = grown.epochs().to_vec();
    let activation = grown.latest().activate_at_ms;
    let other = planned(&bootstrap(2), 3, NOW);
    // Before epoch 2 activates no id was minted under it.
    assert_eq!(other.rewritten_epoch(&recorded, activation - 1), None);
    assert_eq!(
        other.rewritten_epoch(&recorded, activation),
        Some(recorded[1])
    );
    assert_eq!(
        bootstrap(2).rewritten_epoch(&recorded, activation),
        Some(recorded[1])
    );
    assert_eq!(grown.rewritten_epoch(&recorded, activation), None);
}

fn id_at(unix_ms: i64, sequence: u16) -> ExecutionId {
    let node = NodeId::try_from(7).expect("valid node");
    ExecutionId::from_parts(unix_ms, node, sequence).expect("valid id")
}

proptest! {
    /// Whatever changes are applied, every id minted before a change was planned keeps the
    /// shard it had: the property that lets the shard count change without moving data.
    #[test]
    fn appending_epochs_never_moves_an_existing_id(
        changes in proptest::collection::vec((1u32..64, 0i64..120_000), 1..12),
        offsets in proptest::collection::vec((0i64..100_000_000, any::<u16>()), 1..64),
    ) {
        let mut topology = bootstrap(2);
        let mut now = NOW;
        for (desired, wait) in changes {
            now += wait;
            let ids: Vec<ExecutionId> = offsets
                .iter()
                .map(|(back, seq)| id_at((now - back).max(CUSTOM_EPOCH_UNIX_MS), seq & 0xfff))
                .collect();
            let before: Vec<Route> = ids.iter().map(|id| topology.route(*id)).collect();
            let plan = topology.plan(count(desired), now, 0).expect("plans");
            if let Some(next) = plan.next {
                topology.check_successor(&next, now).expect("plans are valid successors");
                let after: Vec<Route> = ids.iter().map(|id| next.route(*id)).collect();
                prop_assert_eq!(before, after);
                topology = next;
            }
        }
    }
}
