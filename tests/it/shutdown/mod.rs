//! Shutting down: the drain, its deadline, clients that closed before the
//! signal.

mod closed_clients;
mod deadline;
mod drain;
mod drain_and_deadline;
