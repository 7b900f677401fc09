//! Lints: rules in `abac.yaml` that cannot do what their author meant, given
//! the routes in `moltgate.yaml`. `moltgate check` prints them, and the
//! gateway logs them at start ([`log`]).
//!
//! A policy file loads even with these problems (so a reload never fails
//! because a route is missing), which is why they are lints and not load
//! errors. What is found:
//!
//! - a `resources` glob that matches no configured route path: a **warning**
//!   (routes change on restart, and one policies directory may serve gateways
//!   with different routes); with a did-you-mean when a route is close;
//! - a rule none of whose `resources` globs can match any route path at all
//!   (route paths always start with `/`, so `v1/messages` never matches): an
//!   **error**, since no configuration can make that rule apply; `check` exits
//!   non-zero;
//! - an `actions` glob that matches nothing the gateway asks for (`forward`,
//!   `read`, `command:<name>`): a warning;
//! - no Allow rule that can allow `forward` on any route, so every message is
//!   denied (a warning naming the file to edit), and, when some routes are
//!   covered, each route that no Allow rule covers.
//!
//! Conditions are not evaluated: a rule "can allow" when its resource and
//! action globs match, whatever its conditions.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::yaml::did_you_mean;
use crate::policy::abac::{self, AbacPolicy, Effect, Glob};
use crate::policy::ABAC_FILE;

/// How serious a lint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Likely a mistake; `check` still succeeds.
    Warning,
    /// Certainly a mistake; `check` fails.
    Error,
}

/// One finding, located like a load error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lint {
    /// Warning or error.
    pub severity: Severity,
    /// The file to edit.
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong, and what to do.
    pub message: String,
}

impl fmt::Display for Lint {
    /// `file:line:col: warning: message`, or `file:line:col: message` for an
    /// error (the form of every other error).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        match self.severity {
            Severity::Warning => write!(f, ": warning: {}", self.message),
            Severity::Error => write!(f, ": {}", self.message),
        }
    }
}

/// The actions the gateway and `explain` ask for, besides `command:<name>`.
const PLAIN_ACTIONS: [&str; 2] = ["forward", "read"];

/// Lints `abac` against the configured route paths (each starts with `/`).
/// With no routes only the checks that need none run.
pub fn lint(abac: &AbacPolicy, route_paths: &[&str]) -> Vec<Lint> {
    let source = abac.source();
    let path = source.map_or_else(|| PathBuf::from(ABAC_FILE), |s| s.path.clone());
    let text = source.and_then(|s| s.text.as_deref()).unwrap_or("");
    let at = |severity, rule: &str, value: &str, message: String| {
        let pos = abac::locate_in_rule(text, rule, value);
        Lint {
            severity,
            path: path.clone(),
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
            message,
        }
    };
    let mut out = Vec::new();
    // One lint per dead pattern: the same glob in several rules is one mistake.
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for rule in abac.rules() {
        let never = rule.resources.iter().all(|g| !can_match_a_path(g));
        for glob in rule.resources.iter().filter(|g| dead(g, route_paths)) {
            if let Some((_, i)) = seen.iter().find(|(p, _)| *p == glob.as_str()) {
                let lint: &mut Lint = &mut out[*i];
                also_in(lint, &rule.id);
                continue;
            }
            let (severity, message) = dead_resource(glob, &rule.id, never, route_paths);
            seen.push((glob.as_str(), out.len()));
            out.push(at(severity, &rule.id, glob.as_str(), message));
        }
        for glob in rule.actions.iter().filter(|g| !can_match_an_action(g)) {
            let message = unknown_action(glob);
            out.push(at(Severity::Warning, &rule.id, glob.as_str(), message));
        }
    }
    out.extend(coverage(abac, &path, route_paths));
    out
}

/// Logs each lint at start: errors as errors, warnings as warnings.
pub fn log(lints: &[Lint]) {
    for l in lints {
        match l.severity {
            Severity::Warning => tracing::warn!(file = %l.path.display(), "{l}"),
            Severity::Error => tracing::error!(file = %l.path.display(), "{l}"),
        }
    }
}

/// Whether any lint is an error.
pub fn has_errors(lints: &[Lint]) -> bool {
    lints.iter().any(|l| l.severity == Severity::Error)
}

/// Notes on `lint` that its pattern also appears in rule `id`.
fn also_in(lint: &mut Lint, id: &str) {
    if lint.message.contains("; also in rule") {
        lint.message = lint
            .message
            .replace("; also in rule '", "; also in rules '");
        lint.message.push_str(&format!(", '{id}'"));
    } else {
        lint.message.push_str(&format!("; also in rule '{id}'"));
    }
}

/// Whether the glob can match some path starting with `/`.
fn can_match_a_path(g: &Glob) -> bool {
    g.literal_prefix().is_empty() || g.literal_prefix().starts_with('/')
}

/// Whether the glob can match `forward`, `read` or some `command:<name>`.
fn can_match_an_action(g: &Glob) -> bool {
    let p = g.literal_prefix();
    PLAIN_ACTIONS.iter().any(|a| g.is_match(a))
        || p.starts_with("command:")
        || "command:".starts_with(p)
}

/// A resource glob that matches none of the routes (never true without routes
/// unless it can match no path at all).
fn dead(g: &Glob, routes: &[&str]) -> bool {
    if routes.is_empty() {
        !can_match_a_path(g)
    } else {
        !routes.iter().any(|r| g.is_match(r))
    }
}

/// The message about a dead resource glob, and how serious it is.
fn dead_resource(g: &Glob, rule: &str, never: bool, routes: &[&str]) -> (Severity, String) {
    let pattern = g.as_str();
    let mut msg = if never {
        format!(
            "resource '{pattern}' can match no route path (route paths start with '/'), so rule '{rule}' never applies"
        )
    } else {
        format!("resource '{pattern}' matches no route")
    };
    if !routes.is_empty() {
        msg.push_str(&format!(" (routes: {})", list(routes)));
    }
    let slashed = format!("/{pattern}");
    let hint = routes
        .iter()
        .find(|r| !can_match_a_path(g) && **r == slashed)
        .copied()
        .or_else(|| {
            // Edit distance says little about a pattern with wildcards.
            g.is_literal()
                .then(|| did_you_mean(pattern, routes.iter().copied()))
                .flatten()
        });
    if let Some(best) = hint {
        msg.push_str(&format!("; did you mean '{best}'?"));
    }
    let severity = if never {
        Severity::Error
    } else {
        Severity::Warning
    };
    (severity, msg)
}

fn unknown_action(g: &Glob) -> String {
    let known = ["forward", "read", "command:<name>"];
    let mut msg = format!(
        "action '{}' is never asked for (actions are forward, read and command:<name>)",
        g.as_str()
    );
    if let Some(best) = did_you_mean(g.as_str(), known) {
        msg.push_str(&format!("; did you mean '{best}'?"));
    }
    msg
}

/// Routes on which no Allow rule can allow `forward`.
fn coverage(abac: &AbacPolicy, path: &Path, routes: &[&str]) -> Vec<Lint> {
    let allows = |route: &str| {
        abac.rules().iter().any(|r| {
            r.effect == Effect::Allow
                && r.resources.iter().any(|g| g.is_match(route))
                && r.actions.iter().any(|g| g.is_match("forward"))
        })
    };
    let uncovered: Vec<&str> = routes.iter().copied().filter(|r| !allows(r)).collect();
    let whole = |message: String| Lint {
        severity: Severity::Warning,
        path: path.to_path_buf(),
        line: None,
        column: None,
        message,
    };
    if uncovered.is_empty() {
        return Vec::new();
    }
    if uncovered.len() == routes.len() {
        let missing = if abac.source().is_some_and(|s| s.text.is_none()) {
            " (the file does not exist)"
        } else {
            ""
        };
        return vec![whole(format!(
            "no Allow rule can allow 'forward' on any route (routes: {}): every message will be denied; add one to {}{missing}",
            list(routes),
            path.display()
        ))];
    }
    uncovered
        .into_iter()
        .map(|r| {
            whole(format!(
                "no Allow rule can allow 'forward' on route '{r}': every message on it will be denied"
            ))
        })
        .collect()
}

/// The first few routes, comma-separated.
fn list(routes: &[&str]) -> String {
    const SHOWN: usize = 5;
    let mut out = routes
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if routes.len() > SHOWN {
        out.push_str(&format!(", and {} more", routes.len() - SHOWN));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "policies/abac.yaml";

    fn policy(text: &str) -> AbacPolicy {
        AbacPolicy::from_yaml(Path::new(P), text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn lines(text: &str, routes: &[&str]) -> Vec<String> {
        lint(&policy(text), routes)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn resource_without_leading_slash_is_flagged_with_suggestion() {
        let text = "policies:\n  - id: api\n    effect: Allow\n    resources: [\"v1/messages\", \"/hooks/**\"]\n    actions: [forward]\n";
        let out = lines(text, &["/v1/messages", "/hooks/slack/demo"]);
        assert_eq!(
            out,
            [
                "policies/abac.yaml:4:17: warning: resource 'v1/messages' matches no route (routes: /v1/messages, /hooks/slack/demo); did you mean '/v1/messages'?",
                "policies/abac.yaml: warning: no Allow rule can allow 'forward' on route '/v1/messages': every message on it will be denied",
            ]
        );
    }

    #[test]
    fn a_rule_that_can_never_apply_is_an_error() {
        let text = "policies:\n  - { id: api, effect: Allow, resources: ['v1/messages'], actions: [forward] }\n";
        let lints = lint(&policy(text), &["/v1/messages"]);
        assert!(has_errors(&lints));
        assert_eq!(
            lints[0].to_string(),
            "policies/abac.yaml:2:43: resource 'v1/messages' can match no route path (route paths start with '/'), so rule 'api' never applies (routes: /v1/messages); did you mean '/v1/messages'?"
        );
        assert_eq!(
            lints[1].to_string(),
            "policies/abac.yaml: warning: no Allow rule can allow 'forward' on any route (routes: /v1/messages): every message will be denied; add one to policies/abac.yaml"
        );
        // Without routes, only the structural error remains.
        let lints = lint(&policy(text), &[]);
        assert_eq!(lints.len(), 1);
        assert_eq!(lints[0].severity, Severity::Error);
    }

    #[test]
    fn bare_star_covers_every_route_and_action() {
        let text = "policies:\n  - { id: all, effect: Allow, resources: ['*'], actions: ['*'] }\n";
        assert!(lines(text, &["/v1/messages", "/hooks/slack/demo"]).is_empty());
        let text =
            "policies:\n  - { id: all, effect: Allow, resources: ['**'], actions: [forward] }\n";
        assert!(lines(text, &["/v1/messages"]).is_empty());
    }

    #[test]
    fn unknown_actions_and_uncovered_routes() {
        let text = "policies:\n  - id: a\n    effect: Allow\n    resources: ['/v1/**']\n    actions: [fowrard, 'command:*', 'comm*', read]\n  - { id: d, effect: Deny, resources: ['/hooks/**'], actions: [forward] }\n";
        let out = lines(text, &["/v1/messages", "/hooks/x"]);
        assert_eq!(
            out,
            [
                "policies/abac.yaml:5:15: warning: action 'fowrard' is never asked for (actions are forward, read and command:<name>); did you mean 'forward'?",
                "policies/abac.yaml: warning: no Allow rule can allow 'forward' on any route (routes: /v1/messages, /hooks/x): every message will be denied; add one to policies/abac.yaml",
            ]
        );
    }

    #[test]
    fn missing_file_is_named() {
        let out: Vec<String> = lint(
            &AbacPolicy::missing(Path::new("p/abac.yaml")),
            &["/v1/messages"],
        )
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            out,
            ["p/abac.yaml: warning: no Allow rule can allow 'forward' on any route (routes: /v1/messages): every message will be denied; add one to p/abac.yaml (the file does not exist)"]
        );
    }

    /// The shipped policies with the demo config's one route: the seed rule's
    /// path and the webhook rules have no route there, each said once.
    #[test]
    fn shipped_policies_against_the_demo_routes() {
        let text = include_str!("../../policies/abac.yaml");
        let out = lines(text, &["/v1/messages"]);
        assert_eq!(
            out,
            [
                "policies/abac.yaml:25:17: warning: resource '/api/v1/messages/*' matches no route (routes: /v1/messages)",
                "policies/abac.yaml:33:33: warning: resource '/hooks/**' matches no route (routes: /v1/messages); also in rules 'local_demo_commands', 'reboot_needs_confirmation'",
            ]
        );
        let many = ["/v1/messages", "/hooks/slack/demo", "/api/v1/messages/1"];
        assert!(lines(text, &many).is_empty());
    }
}
