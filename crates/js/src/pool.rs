//! The pool of engines, each on its own thread, and the typed calls into it.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::engine::Engine;
use crate::{JsError, Limits, MapOutcome, ReduceOutcome, Verdict};

/// A call waiting for an engine: the prelude's operation, its JSON arguments and where the
/// answer goes.
struct Job {
    op: &'static str,
    args: String,
    reply: oneshot::Sender<Result<String, JsError>>,
}

/// A pool of QuickJS engines on their own threads. Cloning shares the pool; the threads end
/// when the last clone is dropped.
#[derive(Clone)]
pub struct Sandbox {
    /// Where calls wait for a free engine.
    jobs: mpsc::Sender<Job>,
    limits: Limits,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("limits", &self.limits)
            .finish()
    }
}

/// What every operation answers: its result and what the functions logged.
#[derive(Deserialize)]
struct Answer<T> {
    result: T,
    #[serde(default)]
    logs: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum MapEntry {
    Rows(Vec<(Value, Value)>),
    Failed { error: String },
}

#[derive(Deserialize)]
struct ReduceAnswer {
    value: Option<Value>,
    error: Option<String>,
    #[serde(default)]
    builtin: bool,
}

#[derive(Deserialize)]
struct FilterAnswer {
    pass: Option<bool>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct ValidateAnswer {
    ok: Option<bool>,
    forbidden: Option<Value>,
    unauthorized: Option<Value>,
    error: Option<String>,
}

impl Sandbox {
    /// Starts `limits.workers` engines (at least one), each built on its thread when first
    /// needed. Should no thread start, every call answers [`JsError::Closed`].
    pub fn new(limits: Limits) -> Sandbox {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..limits.workers.max(1) {
            let queue = queue.clone();
            let started = std::thread::Builder::new()
                .name(format!("outpost-js-{n}"))
                .spawn(move || work(&queue, limits));
            if let Err(e) = started {
                tracing::error!(error = %e, "cannot start a javascript worker thread");
            }
        }
        Sandbox { jobs, limits }
    }

    /// The limits calls run under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        op: &'static str,
        args: Value,
    ) -> Result<T, JsError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                op,
                args: args.to_string(),
                reply,
            })
            .map_err(|_| JsError::Closed)?;
        let text = answer.await.map_err(|_| JsError::Closed)??;
        let answer: Answer<T> = serde_json::from_str(&text)
            .map_err(|e| JsError::Engine(format!("unexpected answer from the engine: {e}")))?;
        for line in answer.logs {
            tracing::info!(target: "outpost_js", op, message = %line, "design document function logged");
        }
        Ok(answer.result)
    }

    /// Runs map functions over documents (each given as JSON text): for each document, what
    /// each function emitted, or why it failed on that document. `sig` identifies the
    /// functions and `lib` (a design document's `views.lib`) for the compiled-function cache. A
    /// function that runs past the time limit fails on that document only.
    pub async fn map(
        &self,
        sig: &str,
        sources: &[String],
        lib: Option<&Value>,
        docs: &[String],
    ) -> Result<Vec<Vec<MapOutcome>>, JsError> {
        let args =
            |docs: &[String]| json!({ "sig": sig, "sources": sources, "lib": lib, "docs": docs });
        match self.call::<Vec<Vec<MapEntry>>>("map", args(docs)).await {
            Ok(rows) => Ok(rows.into_iter().map(map_outcomes).collect()),
            Err(JsError::Timeout(limit)) => {
                // Which document ran away is not known: run them one at a time, and only that
                // one fails.
                let mut out = Vec::with_capacity(docs.len());
                for doc in docs {
                    match self
                        .call::<Vec<Vec<MapEntry>>>("map", args(std::slice::from_ref(doc)))
                        .await
                    {
                        Ok(mut rows) => out.push(map_outcomes(rows.pop().unwrap_or_default())),
                        Err(JsError::Timeout(_)) => out.push(
                            sources
                                .iter()
                                .map(|_| {
                                    Err(format!("timeout: the function ran longer than {limit:?}"))
                                })
                                .collect(),
                        ),
                        Err(e) => return Err(e),
                    }
                }
                Ok(out)
            }
            Err(e) => Err(e),
        }
    }

    /// Runs a reduce function (JavaScript source or a built-in name such as `_sum`) on keys
    /// (`[key, docid]` pairs; ignored on rereduce) and values.
    pub async fn reduce(
        &self,
        sig: &str,
        source: &str,
        lib: Option<&Value>,
        keys: &[Value],
        values: &[Value],
        rereduce: bool,
    ) -> Result<ReduceOutcome, JsError> {
        let args = json!({
            "sig": sig, "source": source, "lib": lib,
            "keys": keys, "values": values, "rereduce": rereduce,
        });
        let answer: ReduceAnswer = self.call("reduce", args).await?;
        Ok(match (answer.error, answer.builtin) {
            (Some(e), true) => ReduceOutcome::BuiltinError(e),
            (Some(e), false) => ReduceOutcome::Failed(e),
            (None, _) => ReduceOutcome::Value(answer.value.unwrap_or(Value::Null)),
        })
    }

    /// Runs a filter function over documents (JSON text) with the request object `req`: for
    /// each document, whether it passes or why the function failed on it.
    pub async fn filter(
        &self,
        sig: &str,
        source: &str,
        ddoc: &Value,
        docs: &[String],
        req: &Value,
    ) -> Result<Vec<Result<bool, String>>, JsError> {
        let args = json!({ "sig": sig, "source": source, "ddoc": ddoc, "docs": docs, "req": req });
        let answers: Vec<FilterAnswer> = self.call("filter", args).await?;
        Ok(answers
            .into_iter()
            .map(|a| match (a.pass, a.error) {
                (_, Some(e)) => Err(e),
                (pass, None) => Ok(pass.unwrap_or(false)),
            })
            .collect())
    }

    /// Runs `validate_doc_update(newDoc, oldDoc, userCtx, secObj)`.
    #[allow(clippy::too_many_arguments)]
    pub async fn validate(
        &self,
        sig: &str,
        source: &str,
        ddoc: &Value,
        new_doc: &Value,
        old_doc: Option<&Value>,
        user_ctx: &Value,
        sec_obj: &Value,
    ) -> Result<Verdict, JsError> {
        let args = json!({
            "sig": sig, "source": source, "ddoc": ddoc, "newDoc": new_doc,
            "oldDoc": old_doc, "userCtx": user_ctx, "secObj": sec_obj,
        });
        let answer: ValidateAnswer = self.call("validate", args).await?;
        Ok(if let Some(message) = answer.forbidden {
            Verdict::Forbidden(message)
        } else if let Some(message) = answer.unauthorized {
            Verdict::Unauthorized(message)
        } else if let Some(error) = answer.error {
            Verdict::Failed(error)
        } else if answer.ok == Some(true) {
            Verdict::Allowed
        } else {
            Verdict::Failed("the validation answered nothing".to_owned())
        })
    }
}

fn map_outcomes(entries: Vec<MapEntry>) -> Vec<MapOutcome> {
    entries
        .into_iter()
        .map(|e| match e {
            MapEntry::Rows(rows) => Ok(rows),
            MapEntry::Failed { error } => Err(error),
        })
        .collect()
}

/// A worker: takes calls from the queue until the pool is dropped. An engine whose call failed
/// as a whole (stopped, out of memory) is thrown away and built again for the next call.
fn work(queue: &Mutex<mpsc::Receiver<Job>>, limits: Limits) {
    let mut engine: Option<Engine> = None;
    loop {
        let job = {
            let Ok(queue) = queue.lock() else { return };
            match queue.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let result = match engine.as_mut() {
            Some(e) => e.call(job.op, &job.args),
            None => match Engine::new(&limits) {
                Ok(e) => engine.insert(e).call(job.op, &job.args),
                Err(e) => Err(e),
            },
        };
        if result.is_err() {
            engine = None;
        }
        // The caller may have gone away (its request was cancelled); nothing to do then.
        let _ = job.reply.send(result);
    }
}
