//! Identity linking (`policies/identities.yaml`): which platform accounts
//! belong to one person.
//!
//! It exists so that a person who talks to the assistant from Telegram in the
//! morning and from WeCom in the afternoon continues one conversation: the
//! context cache keys a linked person's private chats by the person, not by
//! the account (see [`crate::context::conversation_key`]), and the second-step
//! confirmation accepts a code only from the person it was sent to.
//!
//! ```yaml
//! people:
//!   zhangsan: ["generic:user_123", "telegram:555", "wecom:zhangsan"]
//! ```
//!
//! An account is `platform:user_id`, or `platform:<tenant>:user_id` for one
//! user of one tenant (a WeCom corp id, a DingTalk corp id, a Slack team id). An unknown platform, a malformed person
//! id, or an account listed twice is an error located at `file:line:col`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::config::yaml::{did_you_mean, locate, parse_str};
use crate::config::FileError;

/// The built-in platforms an account may name (and the loaded adapters').
pub use crate::config::route::PLATFORM_NAMES as PLATFORMS;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentitiesFile {
    #[serde(default)]
    people: BTreeMap<String, Vec<String>>,
}

/// Compiled identity links: account → person, looked up without allocating.
#[derive(Debug, Clone, Default)]
pub struct Identities {
    /// platform → user id → person id.
    by_account: HashMap<String, HashMap<String, Arc<str>>>,
    /// person id → accounts, as written (for `explain` and diagnostics).
    people: BTreeMap<Arc<str>, Vec<String>>,
}

impl Identities {
    /// Parses and checks `identities.yaml` (`text`, read from `path`).
    pub fn from_yaml(path: &Path, text: &str) -> Result<Self, FileError> {
        Self::from_yaml_with(path, text, &[])
    }

    /// [`Self::from_yaml`], where accounts may also name the platforms of
    /// `adapters` (the declarative adapters loaded with this file).
    pub fn from_yaml_with(path: &Path, text: &str, adapters: &[&str]) -> Result<Self, FileError> {
        let file: IdentitiesFile = parse_str(path, text)?;
        let mut out = Identities::default();
        for (person, accounts) in file.people {
            if !valid_person_id(&person) {
                return Err(FileError::at(
                    path,
                    find_token(text, &person, 0),
                    format!(
                        "invalid person id '{person}'; expected letters, digits, '_', '-' or '.' (at most 128)"
                    ),
                ));
            }
            let person: Arc<str> = Arc::from(person.as_str());
            for account in &accounts {
                let (platform, user) = parse_account(account, adapters)
                    .map_err(|msg| FileError::at(path, find_token(text, account, 0), msg))?;
                let users = out.by_account.entry(platform.to_string()).or_default();
                if let Some(owner) = users.get(user) {
                    let msg = if **owner == *person {
                        format!("account '{account}' is listed twice under '{person}'")
                    } else {
                        format!(
                            "account '{account}' is listed under both '{owner}' and '{person}'; an account belongs to one person"
                        )
                    };
                    return Err(FileError::at(path, find_token(text, account, 1), msg));
                }
                users.insert(user.to_string(), person.clone());
            }
            out.people.insert(person, accounts);
        }
        Ok(out)
    }

    /// The person linked to `user_id` of `tenant` on `platform`, if any:
    /// `platform:<tenant>:<user_id>` first (user ids of WeCom and DingTalk
    /// are unique per corp only), then `platform:<user_id>`.
    pub fn person_of(&self, platform: &str, tenant: &str, user_id: &str) -> Option<&str> {
        let users = self.by_account.get(platform)?;
        let in_tenant = (!tenant.is_empty())
            .then(|| users.get(&format!("{tenant}:{user_id}")))
            .flatten();
        in_tenant.or_else(|| users.get(user_id)).map(|p| &**p)
    }

    /// The accounts linked to `person`, as written in the file.
    pub fn accounts_of(&self, person: &str) -> Option<&[String]> {
        self.people.get(person).map(Vec::as_slice)
    }

    /// Number of people.
    pub fn len(&self) -> usize {
        self.people.len()
    }

    /// True when no person is linked.
    pub fn is_empty(&self) -> bool {
        self.people.is_empty()
    }
}

/// Splits `platform:user_id`, checking the platform.
fn parse_account<'a>(account: &'a str, adapters: &[&str]) -> Result<(&'a str, &'a str), String> {
    let Some((platform, user)) = account.split_once(':') else {
        return Err(format!(
            "invalid account '{account}'; expected platform:user_id, like telegram:555"
        ));
    };
    if !PLATFORMS.contains(&platform) && !adapters.contains(&platform) {
        let known: Vec<&str> = PLATFORMS.iter().chain(adapters).copied().collect();
        let mut msg = format!("unknown platform '{platform}' in account '{account}'");
        if let Some(best) = did_you_mean(platform, known.iter().copied()) {
            msg.push_str(&format!(" (did you mean '{best}'?)"));
        }
        msg.push_str(&format!("; expected one of: {}", known.join(", ")));
        return Err(msg);
    }
    if user.is_empty() || user.trim() != user {
        return Err(format!(
            "invalid account '{account}'; the user id after '{platform}:' must be non-empty without surrounding spaces"
        ));
    }
    Ok((platform, user))
}

/// Person ids become part of conversation keys, so keep them plain.
fn valid_person_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Position of the `nth` (0-based) occurrence of `needle` in `text` as a whole
/// token (not inside a longer account such as `telegram:5551` for
/// `telegram:555`); falls back to the first plain occurrence.
fn find_token(text: &str, needle: &str, nth: usize) -> Option<(usize, usize)> {
    let word = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@');
    let mut seen = 0;
    for (offset, _) in text.match_indices(needle) {
        let before = text[..offset].chars().next_back();
        let after = text[offset + needle.len()..].chars().next();
        if before.is_some_and(word) || after.is_some_and(word) {
            continue;
        }
        if seen == nth {
            let line = text[..offset].matches('\n').count() + 1;
            let column = text[..offset]
                .rfind('\n')
                .map_or(offset, |nl| offset - nl - 1)
                + 1;
            return Some((line, column));
        }
        seen += 1;
    }
    locate(text, needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "policies/identities.yaml";

    fn load(text: &str) -> Result<Identities, FileError> {
        Identities::from_yaml(Path::new(PATH), text)
    }

    #[test]
    fn links_accounts_to_people() {
        let ids = load(
            "people:\n  zhangsan: [\"generic:user_123\", telegram:555, \"wecom:zhangsan\"]\n  lisi:\n    - slack:U42\n",
        )
        .unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids.person_of("telegram", "", "555"), Some("zhangsan"));
        assert_eq!(ids.person_of("generic", "", "user_123"), Some("zhangsan"));
        assert_eq!(ids.person_of("wecom", "", "zhangsan"), Some("zhangsan"));
        assert_eq!(ids.person_of("slack", "", "U42"), Some("lisi"));
        assert_eq!(ids.person_of("telegram", "", "556"), None);
        assert_eq!(ids.person_of("slack", "", "555"), None);
        assert_eq!(
            ids.accounts_of("lisi"),
            Some(&["slack:U42".to_string()][..])
        );
    }

    #[test]
    fn empty_and_default() {
        assert!(load("people: {}\n").unwrap().is_empty());
        assert!(load("{}\n").unwrap().is_empty());
        assert!(Identities::default()
            .person_of("generic", "", "x")
            .is_none());
    }

    #[test]
    fn account_under_two_people_is_located() {
        let e = load("people:\n  a: [telegram:555]\n  b:\n    - wecom:x\n    - telegram:555\n")
            .unwrap_err();
        assert_eq!((e.line, e.column), (Some(5), Some(7)), "{e}");
        assert!(e.message.contains("under both 'a' and 'b'"), "{e}");
    }

    #[test]
    fn prefix_of_another_account_is_not_confused() {
        let e =
            load("people:\n  a: [telegram:5551, telegram:555]\n  b: [telegram:555]\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn unknown_platform_suggests() {
        let e = load("people:\n  a: [\"telgram:555\"]\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(
            e.message.contains("unknown platform 'telgram'")
                && e.message.contains("did you mean 'telegram'?"),
            "{e}"
        );
    }

    #[test]
    fn malformed_entries() {
        for (text, needle) in [
            ("people:\n  a: [nocolon]\n", "expected platform:user_id"),
            ("people:\n  a: [\"slack:\"]\n", "must be non-empty"),
            ("people:\n  \"a b\": [slack:x]\n", "invalid person id"),
            (
                "people:\n  a: [slack:x]\npeeple: {}\n",
                "did you mean 'people'?",
            ),
            ("people:\n  a: slack:x\n", "invalid type"),
        ] {
            let e = load(text).unwrap_err();
            assert!(e.message.contains(needle), "{text:?}: {e}");
            assert!(e.line.is_some(), "{text:?}: {e}");
        }
    }

    #[test]
    fn shipped_example_loads() {
        let text = include_str!("../../policies/identities.yaml");
        let ids = load(text).unwrap();
        assert_eq!(ids.person_of("telegram", "", "555"), Some("zhangsan"));
    }

    #[test]
    fn tenant_qualified_accounts_come_first() {
        let ids = Identities::from_yaml(
            Path::new("identities.yaml"),
            "people:\n  zhangsan: [\"wecom:corp1:zs\"]\n  other: [\"wecom:zs\"]\n",
        )
        .unwrap();
        assert_eq!(ids.person_of("wecom", "corp1", "zs"), Some("zhangsan"));
        // Another corp's `zs` is not corp1's.
        assert_eq!(ids.person_of("wecom", "corp2", "zs"), Some("other"));
        assert_eq!(ids.person_of("wecom", "", "zs"), Some("other"));
    }

    #[test]
    fn accounts_may_name_a_loaded_adapters_platform() {
        let path = Path::new("policies/identities.yaml");
        let text = "people:\n  alice: [\"telegram:555\", \"github_issues:octocat\"]\n";
        let ids = Identities::from_yaml_with(path, text, &["github_issues"]).unwrap();
        assert!(!ids.is_empty());
        let err = Identities::from_yaml(path, text).unwrap_err().to_string();
        assert!(err.contains("unknown platform 'github_issues'"), "{err}");
        let typo = "people:\n  alice: [\"github_isues:octocat\"]\n";
        let err = Identities::from_yaml_with(path, typo, &["github_issues"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("(did you mean 'github_issues'?)"), "{err}");
    }
}
