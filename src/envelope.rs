//! Building the one `Envelope` every platform's message becomes.
//!
//! All platforms go through [`build`], so the conversation key, the command
//! and the ids are derived the same way everywhere.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::platform::PlatformMessage;
use crate::policy::dlp;
use crate::proto::v1::{Content, Conversation, Envelope, Sender};

/// The leading command of `text`: `"/backup now"` → `"backup"`,
/// `"/start@my_bot"` → `"start"`. Empty when the text is not a command.
///
/// The text is read as DLP reads it ([`dlp::fold`]: invisible format
/// characters dropped, NFKC) and trimmed, so `"\u{200b}/reboot"`,
/// `"／reboot"` (full-width solidus), `"/ｒｅｂｏｏｔ"` and `"\u{3000}/reboot"`
/// are the command `reboot`, as a person reading them would see it, and
/// cannot slip past RBAC as plain text.
pub fn command_of(text: &str) -> String {
    let folded = dlp::fold(text);
    let Some(rest) = folded.trim_start().strip_prefix('/') else {
        return String::new();
    };
    let word = rest.split(|c: char| c.is_whitespace()).next().unwrap_or("");
    let word = word.split('@').next().unwrap_or("");
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        word.to_ascii_lowercase()
    } else {
        String::new()
    }
}

/// The message's command, lower-case without its slash: the platform's own
/// command field when it has one (a Discord interaction, a Slack slash
/// command, a Telegram `bot_command` entity), else a leading `/word` of the
/// text. Empty when there is none. Authorisation and the Envelope both use
/// this, so a command with options cannot pass as plain text.
pub fn command(msg: &PlatformMessage) -> String {
    match &msg.command {
        Some(c) => c.clone(),
        None => command_of(&msg.text),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Builds the Envelope for a verified message on `route`, in conversation
/// `conversation_key` (see [`crate::context::conversation_key`]).
pub fn build(
    platform: &str,
    route: &str,
    conversation_key: String,
    msg: &PlatformMessage,
    roles: Vec<String>,
    device_type: String,
) -> Envelope {
    Envelope {
        id: uuid::Uuid::new_v4().to_string(),
        platform: platform.to_string(),
        platform_message_id: msg.message_id.clone(),
        tenant: msg.tenant.clone(),
        sender: Some(Sender {
            id: msg.sender_id.clone(),
            name: msg.sender_name.clone(),
            person_id: String::new(),
            roles,
            device_type,
            attributes: msg.attributes.clone().into_iter().collect(),
        }),
        conversation: Some(Conversation {
            id: conversation_key,
            room_id: msg.room_id.clone(),
            thread_id: msg.thread_id.clone(),
            chat_type: msg.chat_type.as_str().to_string(),
        }),
        content: Some(Content {
            text: msg.text.clone(),
            attachments: Vec::new(),
            mentions: msg.mentions.clone(),
            command: command(msg),
        }),
        received_at: now_millis(),
        context: None,
        verdict: None,
        route: route.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(command_of("/backup now"), "backup");
        assert_eq!(command_of("  /start@my_bot"), "start");
        assert_eq!(command_of("/Reboot"), "reboot");
        assert_eq!(command_of("hello /x"), "");
        assert_eq!(command_of("/"), "");
        assert_eq!(command_of("/../etc"), "");
    }

    /// Issue 10, item 5: what reads as `/reboot` is the command `reboot`.
    #[test]
    fn command_evasions_are_normalised() {
        for text in [
            "\u{200b}/reboot",
            "／reboot",
            " /reboot",
            "\u{3000}/reboot now",
            "\u{a0}/reboot",
            "\u{feff}/reboot",
            "\u{2060}\u{200d}/reboot",
            "/ｒｅｂｏｏｔ",
            "／ＲＥＢＯＯＴ",
            "/re\u{200b}boot",
            "/reboot\u{200b} now",
            "\u{202e}/reboot",
            "\u{115f}/reboot@my_bot",
        ] {
            assert_eq!(command_of(text), "reboot", "{text:?}");
        }
        // Still not commands: a slash later in the text, or a look-alike that
        // NFKC does not turn into `/` (division slash, fraction slash).
        for text in [
            "say \u{200b}/reboot",
            "\u{2215}reboot",
            "\u{2044}reboot",
            "/重启",
        ] {
            assert_eq!(command_of(text), "", "{text:?}");
        }
    }

    #[test]
    fn the_platform_command_field_wins_over_the_text() {
        let mut m = PlatformMessage {
            text: "prod eu-west".into(),
            command: Some("deploy".into()),
            ..Default::default()
        };
        assert_eq!(command(&m), "deploy");
        m.command = None;
        assert_eq!(command(&m), "");
        m.text = "/Backup now".into();
        assert_eq!(command(&m), "backup");
        let env = build("slack", "/r", "k".into(), &m, Vec::new(), String::new());
        let content = env.content.unwrap();
        assert_eq!(content.command, "backup");
        assert_eq!(env.conversation.unwrap().chat_type, "private");
    }
}
