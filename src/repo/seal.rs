//! Seals for the plain JSON files drctl writes to a repository (backup
//! manifests, WAL sidecars): a `"seal"` member holding the sha256 of the
//! file's canonical content (every other field, as drctl serializes it), so
//! a flipped byte anywhere, even in a timestamp or a row count that still
//! parses, is detected without any key. Pure code.
//!
//! The seal covers the parsed value re-serialized, not the file's bytes:
//! whitespace may change, a value may not. Files written before seals
//! existed have none: they are read, and reported as "unsealed".

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

const SEAL: &str = "seal";

/// What a file's seal says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seal {
    Intact,
    /// Written before seals existed.
    Unsealed,
}

fn digest<T: Serialize>(v: &T) -> String {
    hex::encode(Sha256::digest(
        serde_json::to_vec(v).expect("drctl's own types serialize"),
    ))
}

/// Pretty JSON of `v` with its seal.
pub fn to_json<T: Serialize>(v: &T) -> String {
    let mut doc = serde_json::to_value(v).expect("drctl's own types serialize");
    if let serde_json::Value::Object(map) = &mut doc {
        map.insert(SEAL.into(), digest(v).into());
    }
    serde_json::to_string_pretty(&doc).expect("JSON values serialize")
}

/// Parse a sealed file; a seal that does not match its content is an
/// error naming what was expected, never a value.
pub fn from_json<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<(T, Seal), String> {
    let mut doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let seal = match &mut doc {
        serde_json::Value::Object(map) => map.remove(SEAL),
        _ => None,
    };
    let v: T = serde_json::from_value(doc).map_err(|e| format!("not valid: {e}"))?;
    match seal {
        None => Ok((v, Seal::Unsealed)),
        Some(serde_json::Value::String(s)) if s == digest(&v) => Ok((v, Seal::Intact)),
        Some(_) => {
            Err("corrupt: its seal (sha256 of its content) does not match what it says".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Doc {
        at: String,
        rows: i64,
    }

    #[test]
    fn a_changed_value_breaks_the_seal_and_whitespace_does_not() {
        let d = Doc {
            at: "2026-11-22T10:15:00Z".into(),
            rows: 5000,
        };
        let text = to_json(&d);
        assert_eq!(
            from_json::<Doc>(text.as_bytes()).unwrap(),
            (d, Seal::Intact)
        );
        let flipped = text.replace("5000", "5001");
        assert!(from_json::<Doc>(flipped.as_bytes())
            .unwrap_err()
            .contains("seal"));
        let flipped = text.replace("10:15", "10:16");
        assert!(from_json::<Doc>(flipped.as_bytes()).is_err());
        let compact =
            serde_json::to_string(&serde_json::from_str::<serde_json::Value>(&text).unwrap())
                .unwrap();
        assert!(from_json::<Doc>(compact.as_bytes()).is_ok());
        // A flipped seal is a broken seal too.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let bad = text.replace(v["seal"].as_str().unwrap(), &"0".repeat(64));
        assert!(from_json::<Doc>(bad.as_bytes()).is_err());
        // Files from before seals: read, and said so.
        assert_eq!(
            from_json::<Doc>(br#"{"at": "x", "rows": 1}"#).unwrap().1,
            Seal::Unsealed
        );
    }
}
