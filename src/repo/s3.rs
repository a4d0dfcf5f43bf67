//! S3 repository (`s3://bucket/prefix`) via aws-sdk-s3.
//!
//! Uploads stream as multipart parts with a bounded number in flight, so
//! memory is about (in-flight parts + 2) × part size whatever the artifact
//! size. Small objects go in one PutObject. An upload that does not finish
//! is aborted on S3, never left dangling. Transient errors are retried by
//! the SDK's standard retry strategy (exponential backoff with jitter);
//! downloads resume from the last byte read with a ranged, ETag-pinned GET.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use async_trait::async_trait;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, ObjectLockEnabled, ObjectLockLegalHoldStatus,
    ObjectLockMode, ServerSideEncryption, StorageClass,
};
use aws_sdk_s3::Client;
use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, Semaphore};

use super::{
    check_key, Conditional, Leftover, ObjectInfo, ObjectReader, ObjectWriter, Precondition,
    Repository,
};
use crate::policy;

const DEFAULT_PART_MIB: usize = 8;
const PARTS_IN_FLIGHT: usize = 2;

#[derive(Clone)]
struct Target {
    client: Client,
    bucket: String,
    storage_class: Option<StorageClass>,
    sse_kms_key_id: Option<String>,
    /// Object Lock asked for by the policy: mode and days retained.
    lock: Option<(ObjectLockMode, u32)>,
}

pub struct S3Repo {
    url: String,
    prefix: String,
    part_size: usize,
    t: Target,
}

/// A conditional request the store refused: 412 Precondition Failed, or
/// 409 ConditionalRequestConflict (AWS, when another conditional write of
/// the key is in flight).
fn refused<E>(e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> bool {
    status(e).is_some_and(|c| matches!(c, 409 | 412))
}

fn status<E>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// The SDK's error Display is terse ("service error"); show the code and message.
fn sdk_err<E, R>(e: aws_sdk_s3::error::SdkError<E, R>) -> anyhow::Error
where
    E: std::error::Error + Send + Sync + 'static + aws_sdk_s3::error::ProvideErrorMetadata,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    use aws_sdk_s3::error::ProvideErrorMetadata;
    let msg = match (e.code(), e.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(inner) = src {
                s = format!("{s}: {inner}");
                src = inner.source();
            }
            crate::error::aws_credentials(&s).unwrap_or(s)
        }
    };
    anyhow!(msg)
}

impl S3Repo {
    pub async fn connect(
        cfg: &policy::Repository,
        bucket: String,
        prefix: String,
    ) -> Result<S3Repo> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(r) = &cfg.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(ep) = &cfg.endpoint {
            loader = loader.endpoint_url(ep);
        }
        let sdk = loader.load().await;
        // AWS_MAX_ATTEMPTS is the standard knob; drctl's default is more
        // patient than the SDK's 3 because a failed upload costs a whole
        // backup.
        let attempts = std::env::var("AWS_MAX_ATTEMPTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &u32| n >= 1)
            .unwrap_or(6);
        let mut b = aws_sdk_s3::config::Builder::from(&sdk).retry_config(
            RetryConfig::standard()
                .with_max_attempts(attempts)
                .with_max_backoff(Duration::from_secs(20)),
        );
        // A server that accepts and never answers must fail the request
        // in bounded time, not hang it: the connect, each attempt up to the
        // first byte of its answer (which includes sending a part's body),
        // and a body that stops flowing are each bounded, then retried.
        let bound = cfg.request_timeout();
        // And the requests together: see repo::silence.
        b = b.interceptor(super::silence::Silence::of(
            &cfg.url,
            super::silence::bound(bound, attempts),
        ));
        b = b
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(bound.min(Duration::from_secs(10)))
                    .read_timeout(bound)
                    .build(),
            )
            .stalled_stream_protection(
                aws_sdk_s3::config::StalledStreamProtectionConfig::enabled()
                    .grace_period(bound)
                    .build(),
            );
        if sdk.region().is_none() {
            b = b.region(Region::new("us-east-1"));
        }
        if cfg.force_path_style.unwrap_or(false) {
            b = b.force_path_style(true);
        }
        Ok(S3Repo {
            url: cfg.url.clone(),
            prefix,
            part_size: cfg
                .part_size_mib
                .map(|m| m as usize)
                .unwrap_or(DEFAULT_PART_MIB)
                << 20,
            t: Target {
                client: Client::from_conf(b.build()),
                bucket,
                storage_class: cfg.storage_class.as_deref().map(StorageClass::from),
                sse_kms_key_id: cfg.sse_kms_key_id.clone(),
                lock: cfg.object_lock_days.map(|d| {
                    let mode = match cfg.object_lock_mode.as_deref() {
                        Some("compliance") => ObjectLockMode::Compliance,
                        _ => ObjectLockMode::Governance,
                    };
                    (mode, d)
                }),
            },
        })
    }

    fn full_key(&self, key: &str) -> Result<String> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    /// A small object whole, with its ETag when the store gives one; None
    /// when it is absent.
    async fn get_object(&self, key: &str) -> Result<Option<(Vec<u8>, Option<String>)>> {
        let key = self.full_key(key)?;
        match self
            .t
            .client
            .get_object()
            .bucket(&self.t.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(out) => {
                let etag = out.e_tag.clone();
                let data = out
                    .body
                    .collect()
                    .await
                    .with_context(|| format!("GET s3://{}/{key}", self.t.bucket))?;
                Ok(Some((data.into_bytes().to_vec(), etag)))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(sdk_err(e)).with_context(|| format!("GET s3://{}/{key}", self.t.bucket)),
        }
    }

    /// HeadObject; None when the object is absent.
    async fn head_object(
        &self,
        key: &str,
    ) -> Result<Option<aws_sdk_s3::operation::head_object::HeadObjectOutput>> {
        let key = self.full_key(key)?;
        match self
            .t
            .client
            .head_object()
            .bucket(&self.t.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(sdk_err(e)).with_context(|| format!("HEAD s3://{}/{key}", self.t.bucket)),
        }
    }
}

impl Target {
    /// Retain-until for an object written now, when the policy locks.
    fn retain_until(&self) -> Option<(ObjectLockMode, aws_smithy_types::DateTime)> {
        self.lock.as_ref().map(|(mode, days)| {
            let until = jiff::Timestamp::now().as_second() + i64::from(*days) * 86400;
            (mode.clone(), aws_smithy_types::DateTime::from_secs(until))
        })
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(data));
        if let Some(sc) = &self.storage_class {
            req = req.storage_class(sc.clone());
        }
        if let Some((mode, until)) = self.retain_until() {
            req = req
                .object_lock_mode(mode)
                .object_lock_retain_until_date(until);
        }
        if let Some(k) = &self.sse_kms_key_id {
            req = req
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(k);
        }
        req.send()
            .await
            .map_err(sdk_err)
            .with_context(|| format!("PutObject s3://{}/{key}", self.bucket))?;
        Ok(())
    }

    async fn create_upload(&self, key: &str) -> Result<String> {
        let mut req = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key);
        if let Some(sc) = &self.storage_class {
            req = req.storage_class(sc.clone());
        }
        if let Some((mode, until)) = self.retain_until() {
            req = req
                .object_lock_mode(mode)
                .object_lock_retain_until_date(until);
        }
        if let Some(k) = &self.sse_kms_key_id {
            req = req
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(k);
        }
        let out = req
            .send()
            .await
            .map_err(sdk_err)
            .with_context(|| format!("CreateMultipartUpload s3://{}/{key}", self.bucket))?;
        out.upload_id
            .context("CreateMultipartUpload returned no upload id")
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) {
        let r = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        match r {
            Ok(_) => tracing::info!(key, "aborted multipart upload"),
            Err(e) => {
                tracing::warn!(key, error = %sdk_err(e), "could not abort multipart upload; a bucket lifecycle rule for incomplete uploads will clean it")
            }
        }
    }
}

/// Sends full parts to an uploader task; see the module comment.
struct S3Writer {
    handle: Handle,
    t: Target,
    key: String,
    part_size: usize,
    buf: Vec<u8>,
    upload: Option<Upload>,
    written: u64,
    done: bool,
}

struct Upload {
    id: String,
    tx: Option<mpsc::Sender<(i32, Bytes)>>,
    next_part: i32,
    task: tokio::task::JoinHandle<Result<Vec<CompletedPart>>>,
}

async fn upload_parts(
    t: Target,
    key: String,
    upload_id: String,
    mut rx: mpsc::Receiver<(i32, Bytes)>,
) -> Result<Vec<CompletedPart>> {
    let sem = Arc::new(Semaphore::new(PARTS_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    let mut parts = Vec::new();
    let collect = |r: Result<Result<CompletedPart>, tokio::task::JoinError>,
                   parts: &mut Vec<CompletedPart>|
     -> Result<()> {
        parts.push(r.context("part upload task failed")??);
        Ok(())
    };
    while let Some((n, data)) = rx.recv().await {
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        let (t, key, id) = (t.clone(), key.clone(), upload_id.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let out = t
                .client
                .upload_part()
                .bucket(&t.bucket)
                .key(&key)
                .upload_id(&id)
                .part_number(n)
                .body(ByteStream::from(data))
                .send()
                .await
                .map_err(sdk_err)
                .with_context(|| format!("UploadPart {n} of s3://{}/{key}", t.bucket))?;
            Ok(CompletedPart::builder()
                .part_number(n)
                .set_e_tag(out.e_tag)
                .build())
        });
        while let Some(r) = tasks.try_join_next() {
            collect(r, &mut parts)?;
        }
    }
    while let Some(r) = tasks.join_next().await {
        collect(r, &mut parts)?;
    }
    parts.sort_by_key(|p| p.part_number);
    Ok(parts)
}

impl S3Writer {
    fn send_part(&mut self) -> io::Result<()> {
        let data = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(self.part_size),
        ));
        if self.upload.is_none() {
            let id = self
                .handle
                .block_on(self.t.create_upload(&self.key))
                .map_err(io::Error::other)?;
            let (tx, rx) = mpsc::channel(1);
            let task = self.handle.spawn(upload_parts(
                self.t.clone(),
                self.key.clone(),
                id.clone(),
                rx,
            ));
            self.upload = Some(Upload {
                id,
                tx: Some(tx),
                next_part: 1,
                task,
            });
        }
        let up = self.upload.as_mut().expect("upload started");
        let n = up.next_part;
        up.next_part += 1;
        let tx = up.tx.as_ref().expect("sender open until finish");
        if tx.blocking_send((n, data)).is_err() {
            // The uploader stopped early: it has the error.
            let up = self.upload.as_mut().expect("upload started");
            up.tx = None;
            let err = match self.handle.block_on(&mut up.task) {
                Ok(Err(e)) => format!("{e:#}"),
                Ok(Ok(_)) => "uploader ended early".into(),
                Err(e) => e.to_string(),
            };
            return Err(io::Error::other(err));
        }
        Ok(())
    }

    fn complete(&mut self) -> Result<()> {
        let Some(up) = self.upload.as_mut() else {
            let data = Bytes::from(std::mem::take(&mut self.buf));
            return self.handle.block_on(self.t.put(&self.key, data));
        };
        up.tx = None; // close the channel: the uploader drains and returns
        let parts = self
            .handle
            .block_on(&mut up.task)
            .context("uploader task panicked")??;
        let out = CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
            .build();
        self.handle
            .block_on(
                self.t
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.t.bucket)
                    .key(&self.key)
                    .upload_id(&up.id)
                    .multipart_upload(out)
                    .send(),
            )
            .map_err(sdk_err)
            .with_context(|| {
                format!(
                    "CompleteMultipartUpload s3://{}/{}",
                    self.t.bucket, self.key
                )
            })?;
        Ok(())
    }
}

impl Write for S3Writer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.part_size - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        self.written += n as u64;
        if self.buf.len() == self.part_size {
            self.send_part()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for S3Writer {
    fn finish(mut self: Box<Self>) -> Result<u64> {
        // The last part may be short; a multipart upload needs >= 1 part.
        if self.upload.is_some() && !self.buf.is_empty() {
            self.send_part()?;
        }
        self.complete()?;
        self.done = true;
        Ok(self.written)
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(up) = self.upload.take() {
            up.task.abort();
            let (t, key, id, handle) =
                (self.t.clone(), self.key.clone(), up.id, self.handle.clone());
            // A fresh thread has no runtime context, so block_on is legal
            // whichever thread drops us.
            let _ = std::thread::spawn(move || handle.block_on(t.abort_upload(&key, &id))).join();
        }
    }
}

/// Blocking reader over GetObject that resumes after transient errors.
struct S3Reader {
    handle: Handle,
    t: Target,
    key: String,
    etag: Option<String>,
    size: u64,
    offset: u64,
    body: Option<ByteStream>,
    chunk: Bytes,
}

impl S3Reader {
    fn refill(&mut self) -> io::Result<()> {
        let mut failures = 0u32;
        loop {
            if self.body.is_none() {
                let mut req = self
                    .t
                    .client
                    .get_object()
                    .bucket(&self.t.bucket)
                    .key(&self.key)
                    .range(format!("bytes={}-", self.offset));
                if let Some(e) = &self.etag {
                    req = req.if_match(e);
                }
                // The SDK has retried by the time send() fails: another
                // round here would multiply the bound on a dead server.
                match self.handle.block_on(req.send()) {
                    Ok(out) => self.body = Some(out.body),
                    Err(e) => {
                        return Err(io::Error::other(format!(
                            "GET s3://{}/{} at byte {}: {:#}",
                            self.t.bucket,
                            self.key,
                            self.offset,
                            sdk_err(e)
                        )));
                    }
                }
            }
            let body = self.body.as_mut().expect("body set");
            match self.handle.block_on(body.try_next()) {
                Ok(Some(c)) => {
                    self.chunk = c;
                    return Ok(());
                }
                Ok(None) if self.offset >= self.size => return Ok(()),
                Ok(None) | Err(_) => {
                    // Truncated or broken stream: resume from where we are.
                    failures += 1;
                    self.body = None;
                    if failures >= 5 || crate::cancel::requested() {
                        return Err(io::Error::other(format!(
                            "download of s3://{}/{} kept failing at byte {}",
                            self.t.bucket, self.key, self.offset
                        )));
                    }
                    tracing::warn!(key = %self.key, offset = self.offset, "S3 download interrupted; resuming");
                    std::thread::sleep(Duration::from_millis(200 << failures));
                }
            }
        }
    }
}

impl Read for S3Reader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.chunk.is_empty() {
            if self.offset >= self.size {
                return Ok(0);
            }
            self.refill()?;
            if self.chunk.is_empty() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        self.offset += n as u64;
        Ok(n)
    }
}

#[async_trait]
impl Repository for S3Repo {
    fn url(&self) -> &str {
        &self.url
    }

    async fn put_bytes(&self, key: &str, data: Vec<u8>) -> Result<()> {
        let key = self.full_key(key)?;
        self.t.put(&key, Bytes::from(data)).await
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_object(key).await?.map(|(data, _)| data))
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        Ok(self
            .head_object(key)
            .await?
            .map(|out| out.content_length.unwrap_or(0).max(0) as u64))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let full = format!("{}{prefix}", self.prefix);
        let mut out = Vec::new();
        let mut pages = self
            .t
            .client
            .list_objects_v2()
            .bucket(&self.t.bucket)
            .prefix(&full)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page
                .map_err(sdk_err)
                .with_context(|| format!("LIST s3://{}/{full}", self.t.bucket))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    if let Some(rel) = k.strip_prefix(&self.prefix) {
                        out.push(ObjectInfo {
                            key: rel.to_string(),
                            size: o.size().unwrap_or(0).max(0) as u64,
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn leftovers(&self, prefix: &str) -> Result<Vec<Leftover>> {
        let full = format!("{}{prefix}", self.prefix);
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let page = self
                .t
                .client
                .list_multipart_uploads()
                .bucket(&self.t.bucket)
                .prefix(&full)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(sdk_err)
                .with_context(|| format!("ListMultipartUploads s3://{}/{full}", self.t.bucket))?;
            let now = std::time::SystemTime::now();
            for u in page.uploads() {
                let (Some(k), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                let Some(rel) = k.strip_prefix(&self.prefix) else {
                    continue;
                };
                let age = u
                    .initiated()
                    .and_then(|t| std::time::SystemTime::try_from(*t).ok())
                    .and_then(|t| now.duration_since(t).ok())
                    .unwrap_or_default();
                out.push(Leftover {
                    key: rel.to_string(),
                    size: 0,
                    age,
                    upload_id: Some(id.to_string()),
                });
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(String::from);
            id_marker = page.next_upload_id_marker().map(String::from);
            if key_marker.is_none() {
                break;
            }
        }
        Ok(out)
    }

    async fn remove_leftover(&self, l: &Leftover) -> Result<()> {
        let Some(id) = &l.upload_id else {
            return Ok(());
        };
        let key = self.full_key(&l.key)?;
        self.t
            .client
            .abort_multipart_upload()
            .bucket(&self.t.bucket)
            .key(&key)
            .upload_id(id)
            .send()
            .await
            .map_err(sdk_err)
            .with_context(|| format!("AbortMultipartUpload s3://{}/{key}", self.t.bucket))?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let key = self.full_key(key)?;
        self.t
            .client
            .delete_object()
            .bucket(&self.t.bucket)
            .key(&key)
            .send()
            .await
            .map_err(sdk_err)
            .with_context(|| format!("DELETE s3://{}/{key}", self.t.bucket))?;
        Ok(())
    }

    fn conditional_writes(&self) -> bool {
        true
    }

    async fn put_if(&self, key: &str, data: Vec<u8>, cond: &Precondition) -> Result<Conditional> {
        let key = self.full_key(key)?;
        // No storage class and no Object Lock: a lease is rewritten every
        // few minutes and deleted at the end; locking each version would
        // keep thousands of them.
        let mut req = self
            .t
            .client
            .put_object()
            .bucket(&self.t.bucket)
            .key(&key)
            .content_type("application/json")
            .body(ByteStream::from(data));
        req = match cond {
            Precondition::Absent => req.if_none_match("*"),
            Precondition::Matches(etag) => req.if_match(etag),
        };
        if let Some(k) = &self.t.sse_kms_key_id {
            req = req
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(k);
        }
        match req.send().await {
            Ok(out) => Ok(Conditional::Written(out.e_tag.ok_or_else(|| {
                anyhow!(
                    "PutObject s3://{}/{key}: the store returned no ETag",
                    self.t.bucket
                )
            })?)),
            Err(e) if refused(&e) => Ok(Conditional::Refused),
            Err(e) => Err(sdk_err(e))
                .with_context(|| format!("conditional PutObject s3://{}/{key}", self.t.bucket)),
        }
    }

    async fn get_tagged(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        match self.get_object(key).await? {
            Some((data, Some(etag))) => Ok(Some((data, etag))),
            Some((_, None)) => Err(anyhow!(
                "GET s3://{}/{}: the store returned no ETag",
                self.t.bucket,
                self.full_key(key)?
            )),
            None => Ok(None),
        }
    }

    async fn delete_if(&self, key: &str, etag: &str) -> Result<bool> {
        let key = self.full_key(key)?;
        match self
            .t
            .client
            .delete_object()
            .bucket(&self.t.bucket)
            .key(&key)
            .if_match(etag)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if refused(&e) => Ok(false),
            // Gone already: nothing of ours to delete.
            Err(e) if status(&e) == Some(404) => Ok(false),
            Err(e) => Err(sdk_err(e))
                .with_context(|| format!("conditional DELETE s3://{}/{key}", self.t.bucket)),
        }
    }

    async fn locked_until(&self, key: &str) -> Result<Option<jiff::Timestamp>> {
        let Some(out) = self.head_object(key).await? else {
            return Ok(None);
        };
        if out.object_lock_legal_hold_status == Some(ObjectLockLegalHoldStatus::On) {
            // Held until someone lifts the hold: no date ends it.
            return Ok(Some(jiff::Timestamp::MAX));
        }
        Ok(out
            .object_lock_retain_until_date
            .and_then(|d| jiff::Timestamp::new(d.secs(), d.subsec_nanos() as i32).ok()))
    }

    async fn lockable(&self) -> Result<bool> {
        use aws_sdk_s3::error::ProvideErrorMetadata;
        match self
            .t
            .client
            .get_object_lock_configuration()
            .bucket(&self.t.bucket)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .object_lock_configuration
                .and_then(|c| c.object_lock_enabled)
                == Some(ObjectLockEnabled::Enabled)),
            Err(e) if e.code() == Some("ObjectLockConfigurationNotFoundError") => Ok(false),
            Err(e) => Err(sdk_err(e))
                .with_context(|| format!("GetObjectLockConfiguration s3://{}", self.t.bucket)),
        }
    }

    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        let key = self.full_key(key)?;
        Ok(Box::new(S3Writer {
            handle: Handle::current(),
            t: self.t.clone(),
            key,
            part_size: self.part_size,
            buf: Vec::with_capacity(self.part_size),
            upload: None,
            written: 0,
            done: false,
        }))
    }

    async fn reader(&self, key: &str) -> Result<ObjectReader> {
        let key = self.full_key(key)?;
        let out = self
            .t
            .client
            .get_object()
            .bucket(&self.t.bucket)
            .key(&key)
            .send()
            .await
            .map_err(sdk_err)
            .with_context(|| format!("GET s3://{}/{key}", self.t.bucket))?;
        Ok(Box::new(S3Reader {
            handle: Handle::current(),
            size: out.content_length.unwrap_or(0).max(0) as u64,
            etag: out.e_tag.clone(),
            t: self.t.clone(),
            key,
            offset: 0,
            body: Some(out.body),
            chunk: Bytes::new(),
        }))
    }
}
