//! Repository URLs (`file:///path`, `s3://bucket/prefix`): pure parsing,
//! shared by policy validation and the drivers.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoUrl {
    File(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl RepoUrl {
    pub fn parse(url: &str) -> Result<RepoUrl, String> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "'{url}' must be an absolute path: file:///var/lib/drctl/repo"
                ));
            }
            if path.split('/').any(|c| c == "..") {
                return Err(format!("'{url}' must not contain '..'"));
            }
            return Ok(RepoUrl::File(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("'{url}' names no bucket: s3://bucket/prefix"));
            }
            let prefix = prefix.trim_matches('/');
            let prefix = if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            };
            return Ok(RepoUrl::S3 {
                bucket: bucket.to_string(),
                prefix,
            });
        }
        Err(format!(
            "'{url}' is not a repository URL; use file:///path or s3://bucket/prefix"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            RepoUrl::parse("file:///var/lib/drctl").unwrap(),
            RepoUrl::File("/var/lib/drctl".into())
        );
        assert_eq!(
            RepoUrl::parse("s3://b/pg/prod/").unwrap(),
            RepoUrl::S3 {
                bucket: "b".into(),
                prefix: "pg/prod/".into()
            }
        );
        assert_eq!(
            RepoUrl::parse("s3://b").unwrap(),
            RepoUrl::S3 {
                bucket: "b".into(),
                prefix: "".into()
            }
        );
        assert!(RepoUrl::parse("file://relative").is_err());
        assert!(RepoUrl::parse("/var/lib").is_err());
        assert!(RepoUrl::parse("s3:///x").is_err());
    }
}
