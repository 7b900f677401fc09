//! The compiled rules of `abac.yaml` and the index that finds the few rules a
//! request can match, so a decision never scans all of them.
//!
//! Rules are indexed by action (literal actions in a map, glob actions in one
//! shared bucket) and then by resource: literal resources in a map, glob
//! resources by their literal prefix cut after its last `/`. A lookup probes
//! the request path's own `/`-prefixes, so it costs a handful of hash lookups
//! whatever the number of rules.

use std::collections::HashMap;
use std::sync::Arc;

use super::conditions::Conditions;
use super::decision::Effect;
use crate::policy::glob::Glob;

/// One compiled rule.
#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) id: Arc<str>,
    pub(crate) effect: Effect,
    pub(crate) resources: Vec<Glob>,
    pub(crate) actions: Vec<Glob>,
    pub(crate) conditions: Conditions,
    pub(crate) confirm: bool,
}

/// Rules reachable from one action, by resource.
#[derive(Debug, Default)]
struct ResourceIndex {
    /// Literal resources.
    exact: HashMap<Box<str>, Vec<u32>>,
    /// Glob resources, keyed by their literal prefix cut after its last `/`;
    /// entries are (rule, resource glob) so only that glob is tested.
    by_prefix: HashMap<Box<str>, Vec<(u32, u32)>>,
}

impl ResourceIndex {
    fn insert(&mut self, rule: u32, res_idx: u32, glob: &Glob) {
        if glob.is_literal() {
            self.exact
                .entry(glob.as_str().into())
                .or_default()
                .push(rule);
        } else {
            let p = glob.literal_prefix();
            let key = p.rfind('/').map_or("", |i| &p[..=i]);
            self.by_prefix
                .entry(key.into())
                .or_default()
                .push((rule, res_idx));
        }
    }

    fn candidates(&self, rules: &[Rule], resource: &str, f: &mut impl FnMut(usize)) {
        if let Some(v) = self.exact.get(resource) {
            v.iter().for_each(|&i| f(i as usize));
        }
        if self.by_prefix.is_empty() {
            return;
        }
        let mut probe = |key: &str| {
            if let Some(v) = self.by_prefix.get(key) {
                for &(rule, res) in v {
                    let r = &rules[rule as usize];
                    if r.resources
                        .get(res as usize)
                        .is_some_and(|g| g.is_match(resource))
                    {
                        f(rule as usize);
                    }
                }
            }
        };
        probe("");
        for (i, _) in resource.match_indices('/') {
            probe(&resource[..=i]);
        }
    }
}

/// The action and resource index over a rule list.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Literal actions.
    by_action: HashMap<Box<str>, ResourceIndex>,
    /// Rules with at least one glob action; the action is re-checked per rule.
    glob_actions: ResourceIndex,
}

impl Index {
    pub(crate) fn build(rules: &[Rule]) -> Self {
        let mut index = Index::default();
        for (ri, rule) in rules.iter().enumerate() {
            let ri = ri as u32;
            let has_glob_action = rule.actions.iter().any(|a| !a.is_literal());
            let mut literal_actions: Vec<&str> = rule
                .actions
                .iter()
                .filter(|a| a.is_literal())
                .map(|a| a.as_str())
                .collect();
            literal_actions.sort_unstable();
            literal_actions.dedup();
            for (gi, glob) in rule.resources.iter().enumerate() {
                for a in &literal_actions {
                    index
                        .by_action
                        .entry((*a).into())
                        .or_default()
                        .insert(ri, gi as u32, glob);
                }
                if has_glob_action {
                    index.glob_actions.insert(ri, gi as u32, glob);
                }
            }
        }
        index
    }

    /// Calls `f` with every rule whose resource and action match (possibly
    /// more than once for the same rule).
    pub(crate) fn candidates(
        &self,
        rules: &[Rule],
        resource: &str,
        action: &str,
        mut f: impl FnMut(usize),
    ) {
        if let Some(ri) = self.by_action.get(action) {
            ri.candidates(rules, resource, &mut f);
        }
        self.glob_actions.candidates(rules, resource, &mut |i| {
            if rules[i].actions.iter().any(|a| a.is_match(action)) {
                f(i);
            }
        });
    }
}
