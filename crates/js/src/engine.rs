//! One QuickJS engine: a runtime with its limits and a context holding the prelude.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rquickjs::{Context, Function, Runtime};

use crate::{JsError, Limits};

const PRELUDE: &str = include_str!("prelude.js");

/// The clock the interrupt handler reads: a deadline in microseconds since the engine started,
/// moved forward by the prelude before each document (`__outpost_tick`).
struct Clock {
    /// When the engine was built; deadlines count from here.
    start: Instant,
    /// The current deadline, in microseconds since `start`.
    deadline_us: AtomicU64,
    /// Set by the interrupt handler when it stopped a function, so the caller can tell a
    /// timeout from another failure.
    fired: AtomicBool,
    /// The time one document may take.
    timeout: Duration,
}

impl Clock {
    fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn reset(&self) {
        let limit = u64::try_from(self.timeout.as_micros()).unwrap_or(u64::MAX);
        self.deadline_us
            .store(self.now_us().saturating_add(limit), Ordering::Relaxed);
    }
}

/// A runtime and its context, with the prelude loaded.
pub struct Engine {
    // Field order matters: the context must be dropped before its runtime.
    context: Context,
    _runtime: Runtime,
    clock: Arc<Clock>,
}

impl Engine {
    pub fn new(limits: &Limits) -> Result<Engine, JsError> {
        let runtime = Runtime::new().map_err(|e| JsError::Engine(e.to_string()))?;
        runtime.set_memory_limit(limits.memory_bytes);
        let clock = Arc::new(Clock {
            start: Instant::now(),
            deadline_us: AtomicU64::new(u64::MAX),
            fired: AtomicBool::new(false),
            timeout: limits.timeout,
        });
        let watched = clock.clone();
        runtime.set_interrupt_handler(Some(Box::new(move || {
            let late = watched.now_us() > watched.deadline_us.load(Ordering::Relaxed);
            if late {
                watched.fired.store(true, Ordering::Relaxed);
            }
            late
        })));
        let context = Context::full(&runtime).map_err(|e| JsError::Engine(e.to_string()))?;
        let ticking = clock.clone();
        context
            .with(|ctx| -> rquickjs::Result<()> {
                let tick = Function::new(ctx.clone(), move || ticking.reset())?;
                ctx.globals().set("__outpost_tick", tick)?;
                ctx.eval::<(), _>(PRELUDE)
            })
            .map_err(|e| JsError::Engine(format!("prelude failed to load: {e}")))?;
        Ok(Engine {
            context,
            _runtime: runtime,
            clock,
        })
    }

    /// Runs one operation of the prelude on JSON arguments and returns its JSON answer. An
    /// error here leaves the engine in an unknown state: the caller builds a new one.
    pub fn call(&mut self, op: &str, args: &str) -> Result<String, JsError> {
        self.clock.fired.store(false, Ordering::Relaxed);
        self.clock.reset();
        let clock = self.clock.clone();
        let result = self.context.with(|ctx| {
            let dispatch: Function = ctx
                .globals()
                .get("__outpost_dispatch")
                .map_err(|e| JsError::Engine(e.to_string()))?;
            match dispatch.call::<_, String>((op, args)) {
                Ok(text) => Ok(text),
                Err(rquickjs::Error::Exception) => {
                    let thrown = ctx.catch();
                    let message = thrown
                        .as_exception()
                        .and_then(|e| e.message())
                        .or_else(|| thrown.as_string().and_then(|s| s.to_string().ok()))
                        .unwrap_or_else(|| "uncaught exception".to_owned());
                    Err(JsError::Engine(message))
                }
                Err(e) => Err(JsError::Engine(e.to_string())),
            }
        });
        self.clock.deadline_us.store(u64::MAX, Ordering::Relaxed);
        match result {
            Err(_) if clock.fired.load(Ordering::Relaxed) => Err(JsError::Timeout(clock.timeout)),
            other => other,
        }
    }
}
