//! What `run` insists on beyond `parse`: a pseudonym key of its own.

use super::*;

fn deployed(text: &str, key_env: Option<&str>) -> Result<Settings, ConfigError> {
    Settings::parse_deployed(text, |k| {
        (k == env::PSEUDONYM_KEY)
            .then(|| key_env.map(str::to_owned))
            .flatten()
    })
}

#[test]
fn a_deployment_refuses_a_default_placeholder_or_short_key() {
    const HOW: &str = "set a secret of at least 16 characters in users.pseudonym_key or \
                       EAI_GATEWAY_PSEUDONYM_KEY (e.g. `openssl rand -hex 32`); it names the \
                       Letta agents and masks user numbers in logs, so keep it stable";
    let with_key = |k: &str| format!("{MINIMAL}users: {{pseudonym_key: '{k}'}}\n");
    let cases = [
        (
            MINIMAL.to_owned(),
            None,
            format!(
                "users.pseudonym_key: missing, and EAI_GATEWAY_PSEUDONYM_KEY is not set either: {HOW}"
            ),
        ),
        (
            with_key("eai-gateway"),
            None,
            format!(
                "users.pseudonym_key: \"eai-gateway\" is the built-in default, the same in every installation: {HOW}"
            ),
        ),
        (
            with_key("change-me-please"),
            None,
            format!("users.pseudonym_key: \"change-me-please\" is a placeholder: {HOW}"),
        ),
        (
            with_key("CHANGEME"),
            None,
            format!("users.pseudonym_key: \"CHANGEME\" is a placeholder: {HOW}"),
        ),
        (
            with_key("placeholder"),
            None,
            format!("users.pseudonym_key: \"placeholder\" is a placeholder: {HOW}"),
        ),
        (
            with_key("k3y-0f-12-chr"),
            None,
            format!("users.pseudonym_key: a key of 13 characters is too short: {HOW}"),
        ),
        (
            MINIMAL.to_owned(),
            Some("Change_Me-later-please"),
            format!(
                "environment variable EAI_GATEWAY_PSEUDONYM_KEY: \"Change_Me-later-please\" is a placeholder: {HOW}"
            ),
        ),
        (
            with_key("a-good-key-of-the-file"),
            Some("eai-gateway"),
            format!(
                "environment variable EAI_GATEWAY_PSEUDONYM_KEY: \"eai-gateway\" is the built-in default, the same in every installation: {HOW}"
            ),
        ),
        (
            MINIMAL.to_owned(),
            Some("s3cr3t-12chr"),
            format!(
                "environment variable EAI_GATEWAY_PSEUDONYM_KEY: a key of 12 characters is too short: {HOW}"
            ),
        ),
        (
            MINIMAL.to_owned(),
            Some("tiny"),
            format!(
                "environment variable EAI_GATEWAY_PSEUDONYM_KEY: a key of 4 characters is too short: {HOW}"
            ),
        ),
    ];
    for (text, key_env, want) in cases {
        let err = deployed(&text, key_env).unwrap_err();
        assert_eq!(err.to_string(), want, "{text:?} {key_env:?}");
    }
    // A secret is never shown, even when refused.
    let err = deployed(&with_key("s3cr3t-12chr"), None).unwrap_err();
    assert!(!err.to_string().contains("s3cr3t"), "{err}");
    // Other mistakes come first.
    let err = deployed(&format!("{MINIMAL}threads: 0\n"), None).unwrap_err();
    assert_eq!(err.key, "threads");
    // `parse` (tests, tools) still takes the built-in key.
    assert_eq!(
        parse(MINIMAL).unwrap().users.pseudonym_key,
        DEFAULT_PSEUDONYM_KEY
    );
}

#[test]
fn a_deployment_takes_a_good_key_from_the_file_or_the_variable() {
    let good = "9f2c4e7a1b3d5f60";
    let from_file = deployed(
        &format!("{MINIMAL}users: {{pseudonym_key: '{good}'}}\n"),
        None,
    )
    .unwrap();
    assert_eq!(from_file.users.pseudonym_key, good);
    let from_env = deployed(
        &format!("{MINIMAL}users: {{pseudonym_key: change-me-please}}\n"),
        Some(good),
    )
    .unwrap();
    assert_eq!(from_env.users.pseudonym_key, good);
    // An empty variable is no variable.
    assert!(deployed(MINIMAL, Some("")).is_err());
}
