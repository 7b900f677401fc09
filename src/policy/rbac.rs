//! RBAC: `policies/permissions.yaml` maps roles to permissions, and people
//! or `platform:user_id` accounts to roles.
//!
//! It exists so roles can be granted without minting new JWTs (webhook
//! senders have no JWT at all), and so commands are an allowlist: an action
//! `command:<name>` needs a role granting the permission `command:<name>`
//! (globs such as `command:*` allowed), on top of any ABAC allow.
//!
//! ```yaml
//! roles:                       # role -> permissions (globs allowed)
//!   admin: [system:reboot, file:delete, "command:*"]
//!   user: [message:send, document:generate, command:help]
//!   oncall: []                 # a role used only by ABAC `roles` conditions
//! subjects:                    # optional: person or platform:user_id -> roles
//!   alice: [admin]             # a person (Subject::person)
//!   "slack:U024BE7LH": user    # an account (Subject::platform + Subject::id)
//! ```
//!
//! A subject's roles are its JWT roles, then those of its person, then those
//! of its account. Every role named under `subjects:` must be declared under
//! `roles:`, so a typo is a load error rather than a silent lack of access.
//!
//! RBAC depends only on [`crate::policy::subject`] and [`crate::policy::glob`];
//! ABAC depends on RBAC (for roles and grants), never the other way round.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::config::yaml::{did_you_mean, locate, parse_str, FileError};
use crate::policy::glob::Glob;
use crate::policy::subject::Subject;

/// The role and permission pattern that granted a permission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The subject's role that holds the permission.
    pub role: String,
    /// The permission pattern as written in `permissions.yaml`.
    pub permission: String,
}

/// Roles of people (by person id).
type People = HashMap<String, Vec<String>>;
/// Roles of accounts: platform -> user id -> roles.
type Accounts = HashMap<String, HashMap<String, Vec<String>>>;

/// A compiled `permissions.yaml`.
#[derive(Debug, Default)]
pub struct Permissions {
    roles: HashMap<String, Vec<Glob>>,
    people: People,
    /// platform -> user id -> roles, so lookups need no formatted key.
    accounts: Accounts,
}

impl Permissions {
    /// Parses and compiles `permissions.yaml`. On failure the error carries
    /// every problem found (each bad permission, each bad subject), each at
    /// `file:line:col`.
    pub fn from_yaml(path: &Path, text: &str) -> Result<Self, FileError> {
        let raw: RawFile = parse_str(path, text)?;
        let mut errors = Vec::new();
        let roles = compile_roles(path, text, &raw.roles, &mut errors);
        let (people, accounts) = assign_subjects(path, text, raw.subjects, &roles, &mut errors);
        FileError::sort_by_position(&mut errors);
        FileError::check(errors)?;
        Ok(Self {
            roles,
            people,
            accounts,
        })
    }

    /// The subject's roles: JWT roles, then its person's, then its account's
    /// (may repeat a role).
    pub fn roles_of<'a>(&'a self, s: &'a Subject) -> impl Iterator<Item = &'a str> + 'a {
        let person = s.person.as_deref().and_then(|p| self.people.get(p));
        let accounts = s.platform.as_deref().and_then(|p| self.accounts.get(p));
        let account = accounts.and_then(|m| m.get(&s.id));
        // `platform:<tenant>:<user>` names one user of one tenant (WeCom and
        // DingTalk user ids are unique per corp only).
        let in_tenant = match (accounts, s.tenant.as_deref()) {
            (Some(m), Some(t)) if !t.is_empty() => m.get(&format!("{t}:{}", s.id)),
            _ => None,
        };
        s.roles
            .iter()
            .chain(person.into_iter().flatten())
            .chain(in_tenant.into_iter().flatten())
            .chain(account.into_iter().flatten())
            .map(String::as_str)
    }

    /// The subject's roles, deduplicated, in first-seen order (for explain).
    pub fn effective_roles(&self, s: &Subject) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in self.roles_of(s) {
            if !out.iter().any(|x| x == r) {
                out.push(r.to_string());
            }
        }
        out
    }

    /// Whether the subject holds `role` from any source.
    pub fn has_role(&self, s: &Subject, role: &str) -> bool {
        self.roles_of(s).any(|r| r == role)
    }

    /// The first of the subject's roles (in `roles_of` order) granting
    /// `permission`, and the pattern that granted it.
    pub fn grant(&self, s: &Subject, permission: &str) -> Option<Grant> {
        self.roles_of(s).find_map(|role| {
            let g = self
                .roles
                .get(role)?
                .iter()
                .find(|g| g.is_match(permission))?;
            Some(Grant {
                role: role.to_string(),
                permission: g.as_str().to_string(),
            })
        })
    }

    /// Declared role names, for checks and explain output.
    pub fn role_names(&self) -> impl Iterator<Item = &str> {
        self.roles.keys().map(String::as_str)
    }
}

/// Compiles every role's permission globs; a bad glob is reported and left out.
fn compile_roles(
    path: &Path,
    text: &str,
    raw: &BTreeMap<String, Vec<String>>,
    errors: &mut Vec<FileError>,
) -> HashMap<String, Vec<Glob>> {
    let mut roles = HashMap::with_capacity(raw.len());
    for (role, perms) in raw {
        let mut globs = Vec::with_capacity(perms.len());
        for p in perms {
            match Glob::new(p) {
                Ok(g) => globs.push(g),
                Err(e) => errors.push(FileError::at(
                    path,
                    locate(text, role),
                    format!("role '{role}': {e}"),
                )),
            }
        }
        roles.insert(role.clone(), globs);
    }
    roles
}

/// Splits `subjects:` into people and accounts; every named role must be declared.
fn assign_subjects(
    path: &Path,
    text: &str,
    subjects: BTreeMap<String, RoleList>,
    roles: &HashMap<String, Vec<Glob>>,
    errors: &mut Vec<FileError>,
) -> (People, Accounts) {
    let mut people = People::new();
    let mut accounts = Accounts::new();
    for (who, names) in subjects {
        for r in names.0.iter().filter(|r| !roles.contains_key(*r)) {
            let mut msg = format!("subject '{who}' has undeclared role '{r}'");
            match did_you_mean(r, roles.keys().map(String::as_str)) {
                Some(best) => msg.push_str(&format!(" (did you mean '{best}'?)")),
                None => msg.push_str("; declare it under roles: (an empty list is fine)"),
            }
            errors.push(FileError::at(path, locate(text, &who), msg));
        }
        match who.split_once(':') {
            Some((platform, id)) if !platform.is_empty() && !id.is_empty() => {
                accounts
                    .entry(platform.to_string())
                    .or_default()
                    .insert(id.to_string(), names.0);
            }
            Some(_) => errors.push(FileError::at(
                path,
                locate(text, &who),
                format!("subject '{who}' is malformed; expected a person or platform:user_id"),
            )),
            None => {
                people.insert(who, names.0);
            }
        }
    }
    (people, accounts)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    roles: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    subjects: BTreeMap<String, RoleList>,
}

/// One role name or a list of them.
struct RoleList(Vec<String>);

impl<'de> Deserialize<'de> for RoleList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a role name or a list of role names")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(vec![v.to_string()])
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(r) = seq.next_element::<String>()? {
                    out.push(r);
                }
                Ok(out)
            }
        }
        d.deserialize_any(V).map(RoleList)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "policies/permissions.yaml";

    fn load(text: &str) -> Result<Permissions, FileError> {
        Permissions::from_yaml(Path::new(P), text)
    }

    fn ok(text: &str) -> Permissions {
        load(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn subject(roles: &[&str]) -> Subject {
        Subject {
            id: "U1".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            ..Subject::default()
        }
    }

    #[test]
    fn seed_loads_unchanged() {
        let p = ok(include_str!("../../tests/fixtures/seed/permissions.yaml"));
        let s = subject(&["admin"]);
        assert_eq!(
            p.grant(&s, "system:reboot"),
            Some(Grant {
                role: "admin".into(),
                permission: "system:reboot".into()
            })
        );
        assert_eq!(p.grant(&s, "message:send"), None);
        assert!(p.grant(&subject(&["user"]), "document:generate").is_some());
        assert_eq!(p.grant(&subject(&["nobody"]), "message:send"), None);
    }

    #[test]
    fn shipped_example_loads() {
        let p = ok(include_str!("../../policies/permissions.yaml"));
        assert!(p.grant(&subject(&["admin"]), "command:reboot").is_some());
        assert!(p.grant(&subject(&["user"]), "command:reboot").is_none());
    }

    #[test]
    fn subjects_add_roles_by_person_and_account() {
        let p = ok("roles:\n  admin: ['command:*']\n  user: [command:help]\nsubjects:\n  alice: [admin]\n  'slack:U1': user\n");
        let mut s = subject(&["jwt_role"]);
        assert_eq!(p.effective_roles(&s), ["jwt_role"]);
        s.platform = Some("slack".into());
        assert_eq!(p.effective_roles(&s), ["jwt_role", "user"]);
        s.person = Some("alice".into());
        assert_eq!(p.effective_roles(&s), ["jwt_role", "admin", "user"]);
        assert!(p.has_role(&s, "admin"));
        assert_eq!(
            p.grant(&s, "command:reboot"),
            Some(Grant {
                role: "admin".into(),
                permission: "command:*".into()
            })
        );
        s.platform = Some("discord".into());
        s.person = None;
        assert!(!p.has_role(&s, "user"));
    }

    /// Every bad permission and subject is reported, not only the first.
    #[test]
    fn every_error_is_reported() {
        let e = load("roles:\n  admin: ['', 'a***']\n  user: []\nsubjects:\n  alice: [admn]\n  ':x': user\n  bob: [user, ghost]\n")
            .err()
            .unwrap_or_else(|| panic!("expected errors"));
        let lines: Vec<usize> = e.clone().split().iter().filter_map(|d| d.line).collect();
        assert_eq!(lines, [2, 2, 5, 6, 7], "{e}");
        let shown = e.to_string();
        assert!(shown.contains("role 'admin': empty pattern"), "{shown}");
        assert!(shown.contains("'***' is ambiguous"), "{shown}");
        assert!(
            shown.contains("undeclared role 'admn' (did you mean 'admin'?)"),
            "{shown}"
        );
        assert!(shown.contains("subject ':x' is malformed"), "{shown}");
        assert!(shown.contains("undeclared role 'ghost'"), "{shown}");
    }

    #[test]
    fn errors_are_located() {
        let e = load("roles:\n  admin: []\nsubjects:\n  alice: [admn]\n").err();
        let e = e.unwrap_or_else(|| panic!("expected error"));
        assert_eq!(e.line, Some(4), "{e}");
        assert!(
            e.message
                .contains("undeclared role 'admn' (did you mean 'admin'?)"),
            "{e}"
        );
        let e = load("roles: {}\nsubject: {}\n")
            .err()
            .unwrap_or_else(|| panic!("expected error"));
        assert!(
            e.to_string().starts_with(
                "policies/permissions.yaml:2:1: unknown key 'subject' (did you mean 'subjects'?)"
            ),
            "{e}"
        );
        let e = load("roles:\n  admin: ['']\n")
            .err()
            .unwrap_or_else(|| panic!("expected error"));
        assert_eq!(e.line, Some(2), "{e}");
        let e = load("roles: { a: [] }\nsubjects:\n  ':x': a\n")
            .err()
            .unwrap_or_else(|| panic!("expected error"));
        assert!(e.message.contains("malformed"), "{e}");
    }

    #[test]
    fn a_tenant_qualified_subject_names_one_tenants_user() {
        let p = ok("roles:\n  admin: [\"command:*\"]\nsubjects:\n  \"wecom:corp1:zs\": [admin]\n");
        let zs = |tenant: &str| Subject {
            id: "zs".into(),
            platform: Some("wecom".into()),
            tenant: Some(tenant.into()),
            ..Subject::default()
        };
        assert!(p.has_role(&zs("corp1"), "admin"));
        assert!(
            !p.has_role(&zs("corp2"), "admin"),
            "another corp's zs is someone else"
        );
    }
}
