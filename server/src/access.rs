//! Which tenant's steps may go where: the pools a tenant may target (`pool_tenants`; a pool not
//! listed is open to every tenant), and the tenants that may run the `shell` action
//! (`shell_tenants`; by default only `default`, the tenant of unauthenticated submits). Checked
//! by the shard when it validates a submit, before anything is rendered or stored.

use std::collections::{BTreeMap, BTreeSet};

use noetl_contract::playbook::{Playbook, DEFAULT_POOL};

/// The action that runs a program on the worker's host.
const SHELL: &str = "shell";

/// Who may target which pool, and who may run `shell`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Pool → the tenants whose steps may run in it. A pool not listed is open.
    pub pools: BTreeMap<String, BTreeSet<String>>,
    /// The tenants whose steps may use the `shell` action.
    pub shell: BTreeSet<String>,
}

impl Access {
    /// Why `tenant` may not submit `playbook` (the first step it may not run, its pool, and
    /// whether it is `shell`), or `Ok` when every step is allowed.
    pub fn check(&self, tenant: &str, playbook: &Playbook) -> Result<(), String> {
        for step in &playbook.steps {
            let pool = step.pool.as_deref().unwrap_or(DEFAULT_POOL);
            if self
                .pools
                .get(pool)
                .is_some_and(|tenants| !tenants.contains(tenant))
            {
                return Err(format!(
                    "step {:?}: pool {pool:?} is not open to tenant {tenant:?} (pool_tenants)",
                    step.name
                ));
            }
            if step.action == SHELL && !self.shell.contains(tenant) {
                return Err(format!(
                    "step {:?} (pool {pool:?}): the shell action is not open to tenant {tenant:?} \
                     (shell_tenants)",
                    step.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn playbook(steps: serde_json::Value) -> Playbook {
        serde_json::from_value(serde_json::json!({"name": "p", "steps": steps})).expect("playbook")
    }

    fn access() -> Access {
        Access {
            pools: [("gpu".to_owned(), ["a".to_owned()].into())].into(),
            shell: ["default".to_owned()].into(),
        }
    }

    #[test]
    fn a_listed_pool_is_open_to_its_tenants_only_and_others_to_all() {
        let gpu = playbook(serde_json::json!([
            {"name": "open", "action": "noop"},
            {"name": "train", "action": "noop", "pool": "gpu"}
        ]));
        assert_eq!(access().check("a", &gpu), Ok(()));
        let refused = access().check("b", &gpu).expect_err("b may not use gpu");
        assert!(refused.contains(r#"step "train""#), "{refused}");
        assert!(refused.contains(r#"pool "gpu""#), "{refused}");
        let elsewhere = playbook(serde_json::json!([
            {"name": "x", "action": "noop", "pool": "io"}
        ]));
        assert_eq!(access().check("b", &elsewhere), Ok(()));
    }

    #[test]
    fn shell_is_opt_in_per_tenant() {
        let shell = playbook(serde_json::json!([
            {"name": "run", "action": "shell", "with": {"argv": ["true"]}}
        ]));
        assert_eq!(access().check("default", &shell), Ok(()));
        let refused = access().check("a", &shell).expect_err("a did not opt in");
        assert!(refused.contains(r#"step "run""#), "{refused}");
        assert!(refused.contains("shell"), "{refused}");
        assert!(refused.contains(r#"pool "default""#), "{refused}");
    }
}
