//! Linearizability checker for histories recorded by fault tests (leader
//! kills, partitions) against the registry seen as a key-value store.
//!
//! # Model
//!
//! Each key (an instance identity) holds `Option<String>`: absent, or the
//! registered content (e.g. its address). Every key starts absent.
//!
//! | [`Op`]              | effect            | acknowledged [`Outcome`] |
//! |---------------------|-------------------|--------------------------|
//! | `Put { key, value }`| key := `Some(value)` | [`Outcome::Ok`]       |
//! | `Delete { key }`    | key := `None`     | [`Outcome::Ok`]          |
//! | `Get { key }`       | none              | [`Outcome::Read`] of the current value |
//!
//! An operation whose client timed out or whose node crashed ends with
//! [`Outcome::Unknown`]: it may or may not have taken effect, at any time
//! after its invocation (its response time is taken as +infinity and its
//! result is unconstrained; an unknown read constrains nothing and is
//! dropped). [`Outcome::Failed`] is for an operation the server guarantees
//! did not take effect; it is dropped too.
//!
//! The model has no TTL or lease expiry: a test that checks its history must
//! keep every registration alive (or not use leases) for the whole run, or a
//! value disappearing without a `Delete` is reported as a violation.
//!
//! # Algorithm
//!
//! Linearizability is compositional (Herlihy & Wing 1990, §3.3), so
//! [`check`] partitions the history by key and checks each key on its own
//! (the "P-compositionality" of Horn & Kroening 2015). Each key's
//! sub-history is searched with Wing & Gong's algorithm (1993) with Lowe's
//! memoization (2017): the pair (set of operations already linearized, as a
//! bitset; model state) is cached, and a search branch that reaches a cached
//! pair is cut. The same scheme is used by Porcupine and Knossos.
//!
//! The search is exponential in the worst case, so it is bounded by a step
//! budget per key ([`DEFAULT_MAX_STEPS_PER_KEY`], or [`check_with_budget`]);
//! exceeding it gives [`Violation::Inconclusive`] instead of hanging.
//!
//! # Times
//!
//! Times are nanoseconds on a monotonic clock ([`Recorder`] measures them
//! from its creation). Intervals that touch (one returns at the instant the
//! other is invoked) are treated as overlapping, which can only hide a
//! violation, never invent one. A caller's recorded interval must contain
//! the real one: take the invocation time before sending the request and the
//! response time after the reply arrives, which is what [`Recorder`] does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

#[cfg(test)]
mod tests;

/// Search steps allowed per key by [`check`] before it gives up with
/// [`Violation::Inconclusive`]. One step considers one event of the
/// sub-history; a debug build does a few million per second.
pub const DEFAULT_MAX_STEPS_PER_KEY: u64 = 2_000_000;

/// One operation on the registry, seen as a register per key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// Register: sets `key` to `Some(value)`. Acknowledged with [`Outcome::Ok`].
    Put {
        /// Instance identity.
        key: String,
        /// Registered content, e.g. the instance address.
        value: String,
    },
    /// Deregister: sets `key` to `None`. Acknowledged with [`Outcome::Ok`]
    /// (also when the key was already absent).
    Delete {
        /// Instance identity.
        key: String,
    },
    /// Read: returns the current value of `key` in [`Outcome::Read`].
    Get {
        /// Instance identity.
        key: String,
    },
}

impl Op {
    /// `Op::Put { key, value }`.
    pub fn put(key: impl Into<String>, value: impl Into<String>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    /// `Op::Delete { key }`.
    pub fn delete(key: impl Into<String>) -> Op {
        Op::Delete { key: key.into() }
    }

    /// `Op::Get { key }`.
    pub fn get(key: impl Into<String>) -> Op {
        Op::Get { key: key.into() }
    }

    /// The key the operation acts on.
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } | Op::Get { key } => key,
        }
    }
}

/// How an operation ended, as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A `Put` or `Delete` was acknowledged: it took effect exactly once,
    /// between its invocation and its response.
    Ok,
    /// A `Get` returned this value (`None`: the key was absent).
    Read(Option<String>),
    /// No answer (timeout, connection reset, node killed): the operation may
    /// or may not take effect, at any time after its invocation. When in
    /// doubt, use this.
    Unknown,
    /// The operation definitely did not take effect (e.g. the node rejected
    /// it as not the leader before proposing it). It is left out of the
    /// check. Use [`Outcome::Unknown`] unless the server guarantees this.
    Failed,
}

/// One recorded operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Which client (test thread or task) issued it; for reports only.
    pub client: usize,
    /// The operation.
    pub op: Op,
    /// Invocation time, ns on a monotonic clock (taken before the request
    /// was sent).
    pub call_ns: u64,
    /// Response time, ns on the same clock (taken after the reply arrived).
    /// Required for [`Outcome::Ok`] and [`Outcome::Read`]; ignored for
    /// [`Outcome::Unknown`], which counts as never returning. `None` when
    /// the operation never ended.
    pub return_ns: Option<u64>,
    /// How it ended.
    pub outcome: Outcome,
}

/// Thread-safe history recorder. Clones share one history, so each test
/// thread can hold its own clone.
///
/// ```
/// use meshreg_tests::linearizability::{check, Op, Outcome, Recorder};
///
/// let rec = Recorder::new();
/// let t = rec.begin(0, Op::put("svc/a", "10.0.0.1:80"));
/// // ... send the request, wait for the reply ...
/// rec.end(t, Outcome::Ok);
/// let t = rec.begin(1, Op::get("svc/a"));
/// rec.end(t, Outcome::Read(Some("10.0.0.1:80".into())));
/// check(&rec.history()).expect("linearizable");
/// ```
#[derive(Debug, Clone)]
pub struct Recorder {
    id: u64,
    epoch: Instant,
    entries: Arc<Mutex<Vec<Entry>>>,
}

/// An operation begun with [`Recorder::begin`], to be passed to
/// [`Recorder::end`]. Dropping it without ending leaves the operation
/// [`Outcome::Unknown`].
#[derive(Debug)]
#[must_use = "pass the token to Recorder::end once the operation returns"]
pub struct Token {
    recorder: u64,
    index: usize,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty history whose clock starts now.
    pub fn new() -> Recorder {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Recorder {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            epoch: Instant::now(),
            entries: Arc::default(),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // A test thread that panicked mid-record must not hide the history.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the invocation of `op` by `client`, now. Call it just before
    /// sending the request.
    pub fn begin(&self, client: usize, op: Op) -> Token {
        let call_ns = self.now_ns();
        let mut entries = self.lock();
        entries.push(Entry {
            client,
            op,
            call_ns,
            return_ns: None,
            outcome: Outcome::Unknown,
        });
        Token {
            recorder: self.id,
            index: entries.len() - 1,
        }
    }

    /// Records the response to the operation of `token`, now. Call it just
    /// after the reply arrives (or the client gives up, with
    /// [`Outcome::Unknown`]).
    ///
    /// # Panics
    ///
    /// If `token` came from another recorder.
    pub fn end(&self, token: Token, outcome: Outcome) {
        let return_ns = self.now_ns();
        assert_eq!(
            token.recorder, self.id,
            "Recorder::end: token from another recorder"
        );
        let mut entries = self.lock();
        let entry = &mut entries[token.index];
        entry.return_ns = Some(return_ns);
        entry.outcome = outcome;
    }

    /// A copy of the history so far, in invocation order. Operations not
    /// ended yet appear as [`Outcome::Unknown`] with no response time.
    pub fn history(&self) -> Vec<Entry> {
        self.lock().clone()
    }
}

/// Why a history is not (shown to be) linearizable. `Display` renders the
/// failing key's sub-history, one operation a line, for CI logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// No order of `key`'s operations is consistent with both real time and
    /// the register semantics: some read saw a value it could not have seen
    /// (stale, lost or never written).
    NotLinearizable {
        /// The key whose sub-history fails.
        key: String,
        /// That sub-history as checked (failed operations and unknown reads
        /// left out), sorted by invocation time; `#i` in the report is
        /// `ops[i]`.
        ops: Vec<Entry>,
        /// One longest order of operations (indices into `ops`) the search
        /// could linearize before every extension failed.
        longest_prefix: Vec<usize>,
        /// The key's value after `longest_prefix`.
        state_after_prefix: Option<String>,
        /// Operations (indices into `ops`) that could have been next after
        /// `longest_prefix` by real time; each contradicts that state, or
        /// leads to a dead end later.
        next_candidates: Vec<usize>,
    },
    /// The search for `key` used up its step budget without an answer.
    /// Shorten the test, lower its concurrency per key, spread it over more
    /// keys, or raise the budget with [`check_with_budget`].
    Inconclusive {
        /// The key whose search was cut off.
        key: String,
        /// That sub-history, as for [`Violation::NotLinearizable`].
        ops: Vec<Entry>,
        /// Steps taken (the budget).
        steps: u64,
    },
    /// An entry cannot be checked: its outcome does not fit its operation,
    /// or its times are missing or reversed. A bug in the recording test.
    Malformed {
        /// Index of the entry in the history.
        index: usize,
        /// The entry (boxed to keep `Result<(), Violation>` small).
        entry: Box<Entry>,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl std::error::Error for Violation {}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::NotLinearizable {
                key,
                ops,
                longest_prefix,
                state_after_prefix,
                next_candidates,
            } => {
                writeln!(
                    f,
                    "history of key {key:?} is not linearizable ({} ops; times in ms from its first invocation):",
                    ops.len()
                )?;
                write_ops(f, ops)?;
                let list = |ix: &[usize]| {
                    ix.iter()
                        .map(|i| format!("#{i}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                writeln!(
                    f,
                    "longest linearizable prefix: [{}], leaving the value {}",
                    list(longest_prefix),
                    show_value(state_after_prefix.as_deref())
                )?;
                write!(
                    f,
                    "no order continues it: candidates for the next op [{}] each contradict that value or lead to a dead end",
                    list(next_candidates)
                )
            }
            Violation::Inconclusive { key, ops, steps } => {
                writeln!(
                    f,
                    "linearizability of key {key:?} undecided after {steps} search steps ({} ops; times in ms from its first invocation):",
                    ops.len()
                )?;
                write_ops(f, ops)?;
                write!(
                    f,
                    "lower the concurrency per key or raise the budget (check_with_budget)"
                )
            }
            Violation::Malformed {
                index,
                entry,
                reason,
            } => write!(
                f,
                "history entry {index} is malformed ({reason}): {entry:?}"
            ),
        }
    }
}

fn show_value(v: Option<&str>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "absent".to_owned(),
    }
}

fn write_ops(f: &mut fmt::Formatter<'_>, ops: &[Entry]) -> fmt::Result {
    let t0 = ops.iter().map(|e| e.call_ns).min().unwrap_or(0);
    let ms = |t: u64| (t - t0.min(t)) as f64 / 1e6;
    for (i, e) in ops.iter().enumerate() {
        let end = match (&e.outcome, e.return_ns) {
            (Outcome::Unknown, _) | (_, None) => format!("{:>10}", "?"),
            (_, Some(r)) => format!("{:>10.3}", ms(r)),
        };
        let op = match &e.op {
            Op::Put { value, .. } => format!("put {value:?}"),
            Op::Delete { .. } => "delete".to_owned(),
            Op::Get { .. } => "get".to_owned(),
        };
        let res = match &e.outcome {
            Outcome::Ok => "ok".to_owned(),
            Outcome::Read(v) => show_value(v.as_deref()),
            Outcome::Unknown => "unknown (may or may not have taken effect)".to_owned(),
            Outcome::Failed => "failed".to_owned(),
        };
        writeln!(
            f,
            "  #{i:<4} client {:<4} [{:>10.3} ..{end}]  {op} -> {res}",
            e.client,
            ms(e.call_ns)
        )?;
    }
    Ok(())
}

/// Checks that `history` is linearizable with respect to the per-key
/// register model (see the module docs), with a search budget of
/// [`DEFAULT_MAX_STEPS_PER_KEY`] per key.
///
/// Entries may be in any order. Returns the first failing key's
/// [`Violation::NotLinearizable`] if any key fails; otherwise
/// [`Violation::Inconclusive`] if some key's search ran out of budget;
/// [`Violation::Malformed`] (before any search) if an entry cannot be
/// checked.
pub fn check(history: &[Entry]) -> Result<(), Violation> {
    check_with_budget(history, DEFAULT_MAX_STEPS_PER_KEY)
}

/// [`check`] with a search budget of `max_steps_per_key` steps per key.
pub fn check_with_budget(history: &[Entry], max_steps_per_key: u64) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for (index, entry) in history.iter().enumerate() {
        if let Err(reason) = validate(entry) {
            return Err(Violation::Malformed {
                index,
                entry: Box::new(entry.clone()),
                reason,
            });
        }
        let dropped = matches!(
            (&entry.op, &entry.outcome),
            (_, Outcome::Failed) | (Op::Get { .. }, Outcome::Unknown)
        );
        if !dropped {
            by_key.entry(entry.op.key()).or_default().push(entry);
        }
    }
    let mut inconclusive = None;
    for (key, mut entries) in by_key {
        // A put with an unknown outcome whose value no read returned never
        // helps: had it taken effect, every read until the next write would
        // have returned its value, and none did, so any linearization that
        // places it has one that leaves it out. Dropping such puts keeps
        // the search small when a crash leaves many writes in doubt.
        let observed: std::collections::BTreeSet<&str> = entries
            .iter()
            .filter_map(|e| match &e.outcome {
                Outcome::Read(Some(v)) => Some(v.as_str()),
                _ => None,
            })
            .collect();
        entries.retain(|e| match (&e.op, &e.outcome) {
            (Op::Put { value, .. }, Outcome::Unknown) => observed.contains(value.as_str()),
            _ => true,
        });
        entries.sort_by_key(|e| (e.call_ns, end_time(e)));
        match check_key(&entries, max_steps_per_key) {
            Search::Linearizable => {}
            Search::Stuck {
                longest_prefix,
                state_after_prefix,
                next_candidates,
            } => {
                return Err(Violation::NotLinearizable {
                    key: key.to_owned(),
                    ops: entries.into_iter().cloned().collect(),
                    longest_prefix,
                    state_after_prefix,
                    next_candidates,
                })
            }
            Search::OutOfBudget => {
                inconclusive.get_or_insert_with(|| Violation::Inconclusive {
                    key: key.to_owned(),
                    ops: entries.into_iter().cloned().collect(),
                    steps: max_steps_per_key,
                });
            }
        }
    }
    inconclusive.map_or(Ok(()), Err)
}

fn validate(e: &Entry) -> Result<(), &'static str> {
    match (&e.op, &e.outcome) {
        (Op::Get { .. }, Outcome::Ok) => return Err("a get must end with Read, Unknown or Failed"),
        (Op::Put { .. } | Op::Delete { .. }, Outcome::Read(_)) => {
            return Err("a put or delete must end with Ok, Unknown or Failed")
        }
        _ => {}
    }
    if matches!(e.outcome, Outcome::Ok | Outcome::Read(_)) {
        match e.return_ns {
            None => return Err("an Ok or Read outcome needs a return time"),
            Some(r) if r < e.call_ns => return Err("it returned before it was invoked"),
            Some(_) => {}
        }
    }
    Ok(())
}

/// Response time for the search: +infinity (`u64::MAX`) for unknown outcomes.
fn end_time(e: &Entry) -> u64 {
    match e.outcome {
        Outcome::Unknown => u64::MAX,
        _ => e.return_ns.unwrap_or(u64::MAX),
    }
}

/// Model state: 0 is absent, `i + 1` is the `i`-th distinct value put.
type State = u32;
/// A read of a value no put wrote: matches no state.
const NEVER: State = State::MAX;

/// One operation of a key's sub-history, as the search sees it.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Put (a value id) or delete (0): always succeeds.
    Write(State),
    /// Read that returned this state: succeeds iff it is the current one.
    Read(State),
}

enum Search {
    Linearizable,
    Stuck {
        longest_prefix: Vec<usize>,
        state_after_prefix: Option<String>,
        next_candidates: Vec<usize>,
    },
    OutOfBudget,
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// Call/return events of a sub-history as a doubly linked list, sorted by
/// time. Node 0 is the head sentinel; every other node is the call or the
/// return of one operation, linked to the other through `partner`.
struct Events {
    prev: Vec<usize>,
    next: Vec<usize>,
    /// For each node: the operation, and whether it is the call event.
    op: Vec<(usize, bool)>,
    /// For each node: the other event of the same operation.
    partner: Vec<usize>,
}

impl Events {
    fn new(entries: &[&Entry]) -> Events {
        // (time, is_return, op): calls sort before returns at equal times,
        // so touching intervals overlap.
        let mut evs: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * entries.len());
        for (i, e) in entries.iter().enumerate() {
            evs.push((e.call_ns, false, i));
            evs.push((end_time(e), true, i));
        }
        evs.sort_unstable();
        let n = evs.len() + 1;
        let mut ev = Events {
            prev: (0..n).map(|i| i.wrapping_sub(1)).collect(),
            next: (1..=n).map(|i| if i == n { NIL } else { i }).collect(),
            op: vec![(NIL, false); n],
            partner: vec![NIL; n],
        };
        let mut call_node = vec![NIL; entries.len()];
        for (node, &(_, is_return, op)) in (1..).zip(&evs) {
            ev.op[node] = (op, !is_return);
            if is_return {
                let call = call_node[op];
                ev.partner[node] = call;
                ev.partner[call] = node;
            } else {
                call_node[op] = node;
            }
        }
        ev
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        if n != NIL {
            self.prev[n] = node;
        }
    }

    /// Removes the call event `node` and its return event.
    fn lift(&mut self, node: usize) {
        self.unlink(node);
        self.unlink(self.partner[node]);
    }

    /// Undoes `lift(node)`; lifts must be undone in reverse order.
    fn unlift(&mut self, node: usize) {
        self.relink(self.partner[node]);
        self.relink(node);
    }
}

/// Wing & Gong search with Lowe's memoization over one key's sub-history,
/// `entries` sorted by invocation time.
fn check_key(entries: &[&Entry], max_steps: u64) -> Search {
    // Intern put values; reads of values never put become NEVER.
    let mut ids: HashMap<&str, State> = HashMap::new();
    let mut values: Vec<&str> = Vec::new();
    for e in entries {
        if let Op::Put { value, .. } = &e.op {
            ids.entry(value).or_insert_with(|| {
                values.push(value);
                State::try_from(values.len()).unwrap_or(NEVER)
            });
        }
    }
    let steps: Vec<Step> = entries
        .iter()
        .map(|e| match (&e.op, &e.outcome) {
            (Op::Put { value, .. }, _) => Step::Write(ids[value.as_str()]),
            (Op::Delete { .. }, _) => Step::Write(0),
            (Op::Get { .. }, Outcome::Read(None)) => Step::Read(0),
            (Op::Get { .. }, Outcome::Read(Some(v))) => {
                Step::Read(ids.get(v.as_str()).copied().unwrap_or(NEVER))
            }
            // Validation and filtering leave only Read outcomes on gets.
            (Op::Get { .. }, _) => Step::Read(NEVER),
        })
        .collect();
    let known: Vec<bool> = entries
        .iter()
        .map(|e| e.outcome != Outcome::Unknown)
        .collect();
    let mut remaining_known = known.iter().filter(|k| **k).count();
    // Deletes with an unknown outcome are interchangeable (same effect, no
    // response to respect), so one that was called earlier can stand in for
    // any later one: only let the search take them in call order. Without
    // this, a crash that leaves n deletes in doubt costs 2^n subsets.
    let mut after_delete: Vec<Option<usize>> = vec![None; entries.len()];
    let mut last_unknown_delete = None;
    for (i, e) in entries.iter().enumerate() {
        if matches!((&e.op, &e.outcome), (Op::Delete { .. }, Outcome::Unknown)) {
            after_delete[i] = last_unknown_delete;
            last_unknown_delete = Some(i);
        }
    }

    let mut events = Events::new(entries);
    let mut linearized = vec![0u64; entries.len().div_ceil(64)];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    // Call nodes linearized so far, with the state before each.
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = 0;
    let mut best: (Vec<usize>, State) = (Vec::new(), 0);
    let mut node = events.next[HEAD];
    let mut taken = 0u64;

    loop {
        // Unknown writes left over take effect after everything (or never):
        // no known read remains to observe them.
        if remaining_known == 0 {
            return Search::Linearizable;
        }
        taken += 1;
        if taken > max_steps {
            return Search::OutOfBudget;
        }
        let is_call = node != NIL && events.op[node].1;
        if is_call {
            let op = events.op[node].0;
            let waits = after_delete[op].is_some_and(|p| linearized[p / 64] & (1 << (p % 64)) == 0);
            let next_state = if waits {
                None
            } else {
                match steps[op] {
                    Step::Write(s) => Some(s),
                    Step::Read(s) => (s == state).then_some(s),
                }
            };
            if let Some(next_state) = next_state {
                linearized[op / 64] |= 1 << (op % 64);
                if cache.insert((linearized.clone(), next_state)) {
                    stack.push((node, state));
                    state = next_state;
                    remaining_known -= usize::from(known[op]);
                    events.lift(node);
                    if stack.len() > best.0.len() {
                        best = (stack.iter().map(|&(n, _)| events.op[n].0).collect(), state);
                    }
                    node = events.next[HEAD];
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
            }
            node = events.next[node];
        } else {
            // An op reached its response without being linearized: undo the
            // last choice and try the next candidate after it.
            let Some((call, prev_state)) = stack.pop() else {
                return stuck(entries, &values, best);
            };
            let op = events.op[call].0;
            linearized[op / 64] &= !(1 << (op % 64));
            state = prev_state;
            remaining_known += usize::from(known[op]);
            events.unlift(call);
            node = events.next[call];
        }
    }
}

fn stuck(entries: &[&Entry], values: &[&str], best: (Vec<usize>, State)) -> Search {
    let (prefix, state) = best;
    let done: HashSet<usize> = prefix.iter().copied().collect();
    let first_return = (0..entries.len())
        .filter(|i| !done.contains(i))
        .map(|i| end_time(entries[i]))
        .min()
        .unwrap_or(u64::MAX);
    let next_candidates = (0..entries.len())
        .filter(|i| !done.contains(i) && entries[*i].call_ns <= first_return)
        .collect();
    let state_after_prefix = match state {
        0 => None,
        s => values.get(s as usize - 1).map(|v| (*v).to_owned()),
    };
    Search::Stuck {
        longest_prefix: prefix,
        state_after_prefix,
        next_candidates,
    }
}
