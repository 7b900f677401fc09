//! Lint: accounts in `identities.yaml` and `permissions.yaml` that name a
//! user without its tenant, on a platform that this config serves for
//! several tenants.
//!
//! WeCom and DingTalk user ids are unique only within one corp: with two
//! WeCom corps behind one gateway, `wecom:zhangsan` matches the zhangsan of
//! either, so it would give one corp's user another corp's roles or person.
//! `wecom:<corp_id>:zhangsan` names one of them. `moltgate check` warns.

use std::collections::BTreeSet;
use std::path::Path;

use crate::config::{Config, PlatformKind};
use crate::policy::lint::{Lint, Severity};
use crate::policy::{IDENTITIES_FILE, PERMISSIONS_FILE};

/// Platforms whose user ids are unique per tenant only, and that `config`
/// serves for more than one tenant (WeCom: distinct `corp_id`s; DingTalk:
/// more than one route, since its corp is not in the config).
pub fn multi_tenant_platforms(config: &Config) -> Vec<&'static str> {
    let corps: BTreeSet<String> = config
        .routes
        .iter()
        .filter(|r| r.platform == PlatformKind::Wecom)
        .filter_map(|r| r.secrets.corp_id.as_ref().map(|c| c.0.clone()))
        .collect();
    let dingtalk_routes = config
        .routes
        .iter()
        .filter(|r| r.platform == PlatformKind::Dingtalk)
        .count();
    let mut out = Vec::new();
    if corps.len() > 1 {
        out.push("wecom");
    }
    if dingtalk_routes > 1 {
        out.push("dingtalk");
    }
    out
}

/// Warns about each `platform:user` account without a tenant, for the
/// `platforms` that serve several tenants.
pub fn bare_accounts(dir: &Path, platforms: &[&'static str]) -> Vec<Lint> {
    let mut out = Vec::new();
    for file in [IDENTITIES_FILE, PERMISSIONS_FILE] {
        let path = dir.join(file);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for (line_no, line) in text.lines().enumerate() {
            let code = line.split('#').next().unwrap_or("");
            for (col, platform, user) in accounts_in(code, platforms) {
                out.push(Lint {
                    severity: Severity::Warning,
                    path: path.clone(),
                    line: Some(line_no + 1),
                    column: Some(col + 1),
                    message: format!(
                        "account '{platform}:{user}' names no tenant, and this config serves several {platform} tenants: write '{platform}:<corp_id>:{user}'"
                    ),
                });
            }
        }
    }
    out
}

/// `(byte column, platform, user)` of each tenant-less account on a line.
fn accounts_in<'a>(
    line: &'a str,
    platforms: &[&'static str],
) -> Vec<(usize, &'static str, &'a str)> {
    let mut found = Vec::new();
    for platform in platforms {
        let prefix = format!("{platform}:");
        let mut from = 0;
        while let Some(at) = line[from..].find(&prefix) {
            let start = from + at;
            from = start + prefix.len();
            let before = line[..start].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let rest = &line[from..];
            let end = rest
                .find(|c: char| c.is_whitespace() || "\"',[]{}".contains(c))
                .unwrap_or(rest.len());
            let account = rest[..end].trim_end_matches(':');
            if !account.is_empty() && !account.contains(':') {
                found.push((start, *platform, account));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_accounts_without_a_tenant() {
        let line = r#"  zhangsan: ["wecom:zs", "wecom:corp1:ls", "telegram:5", "dingtalk:d1"]"#;
        let found = accounts_in(line, &["wecom", "dingtalk"]);
        let names: Vec<_> = found.iter().map(|(_, p, u)| format!("{p}:{u}")).collect();
        assert_eq!(names, ["wecom:zs", "dingtalk:d1"]);
        assert_eq!(&line[found[0].0..found[0].0 + 8], "wecom:zs");
        // A key (permissions.yaml subjects) too; a tenant-qualified key is fine.
        assert_eq!(accounts_in(r#"  "wecom:zs": [admin]"#, &["wecom"]).len(), 1);
        assert!(accounts_in(r#"  "wecom:corp1:zs": [admin]"#, &["wecom"]).is_empty());
    }

    #[test]
    fn lints_name_file_line_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(IDENTITIES_FILE),
            "people:\n  zs: [\"wecom:zs\"]\n",
        )
        .unwrap();
        let lints = bare_accounts(dir.path(), &["wecom"]);
        assert_eq!(lints.len(), 1);
        let text = lints[0].to_string();
        assert!(text.ends_with("identities.yaml:2:9: warning: account 'wecom:zs' names no tenant, and this config serves several wecom tenants: write 'wecom:<corp_id>:zs'"), "{text}");
        assert!(bare_accounts(dir.path(), &[]).is_empty());
    }
}
