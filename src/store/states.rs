//! Delivery states in SQL: the transition table (`domain::Transition`) rendered as the
//! literals and conditions statements use, once per process, so that no statement
//! spells a state itself and each moves rows only along the table.
//!
//! The partial indexes over waiting and leased rows (migrations 0006 and 0009) spell
//! the same conditions, states in the same order: SQLite uses a partial index only when
//! a query's condition matches the index's expression for expression, which the tests
//! check on the claim and expiry conditions.

use std::sync::LazyLock;

use crate::domain::{DeliveryState, Transition};

/// `'queued'`: a state as an SQL literal.
pub(super) fn literal(state: DeliveryState) -> &'static str {
    static LITERALS: LazyLock<Vec<String>> = LazyLock::new(|| {
        DeliveryState::ALL
            .iter()
            .map(|state| format!("'{}'", state.as_str()))
            .collect()
    });
    let index = DeliveryState::ALL
        .iter()
        .position(|s| *s == state)
        .expect("every state is in ALL");
    &LITERALS[index]
}

/// `state IN ('queued', 'deferred')`: whether a row is in a state `transition` takes
/// rows from.
pub(super) fn from(transition: Transition) -> &'static str {
    static CONDITIONS: LazyLock<Vec<String>> = LazyLock::new(|| {
        Transition::ALL
            .iter()
            .map(|transition| is_one_of(transition.rule().from))
            .collect()
    });
    let index = Transition::ALL
        .iter()
        .position(|t| *t == transition)
        .expect("every transition is in ALL");
    &CONDITIONS[index]
}

/// The state `transition` leaves rows in, as a literal (for a transition with one).
pub(super) fn target(transition: Transition) -> &'static str {
    literal(transition.target())
}

/// `state IN ('queued', 'deferred')`, or `state = 'sending'` for one state: SQLite takes
/// `IN` with one value for another expression than `=`, so it would not match the
/// partial index over leased rows. For no state at all, a condition nothing meets.
pub(super) fn is_one_of(states: &[DeliveryState]) -> String {
    match states {
        [] => "false".into(),
        [state] => format!("state = {}", literal(*state)),
        several => format!(
            "state IN ({})",
            several
                .iter()
                .map(|state| literal(*state))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests;
