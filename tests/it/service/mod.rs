//! floodwall as an operated service: the Debian package, systemd
//! readiness and watchdog, and the fleet's rolling restart.

mod fleet_rolling_restart;
mod package;
mod systemd_notify;
