//! A tracing subscriber that records the spans opened while it is the
//! default one: their names and the fields given when each was created.
//!
//! Tracing caches per call site whether anyone listens, so a test binary that
//! installs it should hold only tests that do.

use std::sync::Mutex;

/// The recorded spans, `(name, "field=value ...")`, in the order opened.
#[derive(Default)]
pub(crate) struct Spans(Mutex<Vec<(String, String)>>);

impl Spans {
    /// A recorder installed as this thread's default subscriber until the
    /// guard drops.
    pub(crate) fn install() -> (&'static Spans, tracing::subscriber::DefaultGuard) {
        let spans: &'static Spans = Box::leak(Box::default());
        (spans, tracing::subscriber::set_default(spans))
    }

    /// What was recorded so far.
    pub(crate) fn recorded(&self) -> Vec<(String, String)> {
        self.0.lock().expect("not poisoned").clone()
    }
}

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl tracing::Subscriber for &'static Spans {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = String::new();
        span.record(&mut Fields(&mut fields));
        let mut spans = self.0.lock().expect("not poisoned");
        spans.push((span.metadata().name().to_owned(), fields));
        tracing::span::Id::from_u64(spans.len() as u64)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
