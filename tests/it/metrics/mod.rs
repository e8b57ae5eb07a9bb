//! The Prometheus endpoint: its answers, its twins on the stats line, a
//! hostile scraper, and a real Prometheus with the shipped rules.

mod endpoint;
mod hostile;
mod prometheus;
