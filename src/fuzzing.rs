//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the test that
//! replays their corpus, so the corpus is exercised by every `cargo test`.

use crate::ids::UserRules;
use crate::routes;
use crate::routes::chat::ChatRules;
use crate::settings::Settings;

/// Request decoding and validation of the native routes: JSON body of a
/// chat, then the same bytes as a path parameter.
pub fn decode_request(data: &[u8]) {
    let rules = ChatRules {
        users: UserRules::standard(),
        max_message_chars: 4096,
    };
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data)
        && let Ok(req) = routes::chat::decode(&value, &rules)
    {
        // What passed validation must be safe to log and to put in a URL.
        assert!(!req.user.masked().contains(req.user.as_str()));
        assert!(req.user.as_str().bytes().all(|b| b.is_ascii_graphic()));
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(user) = routes::agent::user_from_path(&rules.users, text)
    {
        assert!(!user.as_str().contains('/'));
    }
}

/// Settings parsing and validation (without the environment).
pub fn parse_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Settings::parse(text, |_| None);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn replay(target: &str, run: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            run(&data);
            count += 1;
        }
        assert!(count >= 10, "{target}: only {count} corpus files");
    }

    #[test]
    fn decode_request_corpus_replays_cleanly() {
        replay("decode_request", super::decode_request);
    }

    #[test]
    fn parse_config_corpus_replays_cleanly() {
        replay("parse_config", super::parse_config);
    }
}
