//! Serde's and the URL parser's wording, which speaks of Rust types
//! ("expected usize", "struct ChatSettings"), told in the words of the
//! YAML file that the user wrote. Anything not recognised passes through:
//! a message that was already written for people stays as it was.

/// How a `key: value` mapping is called in messages.
const SECTION: &str = "a section of `key: value` lines";

/// A serde or serde_yaml_ng message, keeping its `at line N column M`.
pub(crate) fn serde_message(message: &str) -> String {
    let (body, at) = split_location(message);
    format!("{}{at}", phrase(body))
}

/// Why `url::Url::parse` refused a URL, to follow the URL in a message.
pub(crate) fn url_problem(error: &impl std::fmt::Display) -> String {
    const EXAMPLE: &str = "(expected e.g. http://host:8283)";
    match error.to_string().as_str() {
        "relative URL without a base" => format!("is not an absolute URL {EXAMPLE}"),
        "empty host" => format!("has no host {EXAMPLE}"),
        "invalid port number" => "has an invalid port number (expected 1 to 65535)".to_owned(),
        other => format!("is not a valid URL: {other} {EXAMPLE}"),
    }
}

/// Splits off the position serde_yaml_ng appends to a message.
fn split_location(message: &str) -> (&str, &str) {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(i) = message.rfind(" at line ")
        && let Some((line, column)) = message[i + " at line ".len()..].split_once(" column ")
        && digits(line)
        && digits(column)
    {
        return message.split_at(i);
    }
    if let Some(i) = message.rfind(" at position ")
        && digits(&message[i + " at position ".len()..])
    {
        return message.split_at(i);
    }
    (message, "")
}

fn phrase(body: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        // The expected part never contains ", expected "; the value may.
        if let Some((got, expected)) = body
            .strip_prefix(prefix)
            .and_then(|rest| rest.rsplit_once(", expected "))
        {
            return format!("got {}, expected {}", value(got), kind(expected));
        }
    }
    if let Some((len, expected)) = body
        .strip_prefix("invalid length ")
        .and_then(|rest| rest.split_once(", expected "))
    {
        return format!("got {len} items, expected {}", kind(expected));
    }
    if let Some(rest) = body.strip_prefix("missing field ") {
        return format!("missing key {rest}");
    }
    if let Some(rest) = body.strip_prefix("unknown field ") {
        let rest = rest.replace(", there are no fields", ": this section takes no keys");
        return format!("unknown key {rest}");
    }
    if let Some(rest) = body.strip_prefix("unknown variant ") {
        let rest = rest.replace(", there are no variants", "");
        return format!("unknown value {rest}");
    }
    if let Some(rest) = body.strip_prefix("duplicate field ") {
        return format!("the key {rest} appears twice");
    }
    match body {
        "invalid socket address syntax" => {
            "expected an ip:port address such as 127.0.0.1:8080".to_owned()
        }
        "relative URL without a base" => {
            "not an absolute URL (expected e.g. http://host:8283)".to_owned()
        }
        "EOF while parsing a value" => "the file is empty".to_owned(),
        other => other.to_owned(),
    }
}

/// serde's `Unexpected`: what the file holds.
fn value(got: &str) -> String {
    // The value sits between backticks; serde_yaml_ng may add a type
    // after it (`integer `99999999999999999999` as u128`).
    let ticked = |prefix: &str| {
        let rest = got.strip_prefix(prefix)?.strip_prefix('`')?;
        rest.split_once('`').map(|(v, _)| v.to_owned())
    };
    if let Some(text) = got.strip_prefix("string ") {
        return format!("the text {text}");
    }
    if let Some(v) = ticked("integer ")
        .or_else(|| ticked("floating point "))
        .or_else(|| ticked("boolean "))
    {
        return v;
    }
    if let Some(c) = ticked("character ") {
        return format!("the text {c:?}");
    }
    match got {
        "sequence" => "a list".to_owned(),
        "map" => SECTION.to_owned(),
        "unit value" => "nothing".to_owned(),
        "Option value" => "an optional value".to_owned(),
        "byte array" => "bytes".to_owned(),
        "enum" | "unit variant" | "newtype variant" | "tuple variant" | "struct variant" => {
            "a tagged value".to_owned()
        }
        other => other.to_owned(),
    }
}

/// serde's `Expected`: what the key takes.
fn kind(expected: &str) -> String {
    let words = match expected {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "u128" | "usize" => "a whole number (0 or more)",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" | "an integer" => "a whole number",
        "f32" | "f64" | "a float" => "a number",
        "a boolean" => "true or false",
        "a string" | "a borrowed string" | "path string" | "a character" | "a char" => "text",
        "a sequence" => "a list",
        "a map" | "map" | "a mapping" => SECTION,
        "socket address" => "an ip:port address such as 127.0.0.1:8080",
        "unit" | "null" => "nothing",
        "option" => "a value or nothing",
        other if other.starts_with("struct ") || other.starts_with("tuple struct ") => SECTION,
        // What serde_yaml_ng expects of an enum given a list or a section.
        "a YAML tag starting with '!'" => "one of the words this key takes",
        other if other.starts_with("enum ") => "one of the words this key takes",
        other => other,
    };
    words.to_owned()
}
