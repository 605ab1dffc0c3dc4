//! Who may open a connection now: at most `limits.max_connections` at once, at most
//! `max_connections_per_client` from one client, and at most
//! `connections_per_minute_per_client` new ones a minute.
//!
//! A client is its IP address, except on loopback, where every site on the box shares
//! 127.0.0.1: there it is the Unix user owning the client socket, so one customer's
//! script cannot take every slot from the others.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Limits;
use crate::policy::Reason;

#[derive(Debug, Default)]
pub struct Admission {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    open: HashMap<String, usize>,
    recent: HashMap<String, VecDeque<Instant>>,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    ServerFull,
    TooManyFromClient,
    TooFast,
}

impl Refusal {
    pub fn reason(self) -> Reason {
        match self {
            Refusal::ServerFull => Reason::TooManyConnections,
            Refusal::TooManyFromClient => Reason::TooManyConnectionsFromClient,
            Refusal::TooFast => Reason::ConnectionRate,
        }
    }
}

/// Holds a connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    client: String,
}

impl Admission {
    pub fn admit(
        self: &Arc<Self>,
        client: &str,
        limits: &Limits,
        now: Instant,
    ) -> Result<Ticket, Refusal> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.total >= limits.max_connections {
            return Err(Refusal::ServerFull);
        }
        if s.open.get(client).copied().unwrap_or(0) >= limits.max_connections_per_client {
            return Err(Refusal::TooManyFromClient);
        }
        if limits.connections_per_minute_per_client > 0 {
            let recent = s.recent.entry(client.to_string()).or_default();
            while recent
                .front()
                .is_some_and(|&t| now.saturating_duration_since(t) >= Duration::from_secs(60))
            {
                recent.pop_front();
            }
            if recent.len() >= limits.connections_per_minute_per_client as usize {
                return Err(Refusal::TooFast);
            }
            recent.push_back(now);
        }
        s.total += 1;
        *s.open.entry(client.to_string()).or_default() += 1;
        Ok(Ticket {
            admission: Arc::clone(self),
            client: client.to_string(),
        })
    }

    fn release(&self, client: &str) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.open.get_mut(client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.open.remove(client);
            }
        }
        // Forget rate history that can no longer matter, so the map stays small.
        let now = Instant::now();
        s.recent.retain(|_, times| {
            times
                .back()
                .is_some_and(|&t| now.saturating_duration_since(t) < Duration::from_secs(60))
        });
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.release(&self.client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_client: usize, per_minute: u32) -> Limits {
        Limits {
            max_connections: total,
            max_connections_per_client: per_client,
            connections_per_minute_per_client: per_minute,
            ..Limits::default()
        }
    }

    #[test]
    fn per_client_and_total_limits_hold_and_free_up() {
        let a = Arc::new(Admission::default());
        let l = limits(3, 2, 0);
        let now = Instant::now();
        let t1 = a.admit("198.51.100.1", &l, now).unwrap();
        let _t2 = a.admit("198.51.100.1", &l, now).unwrap();
        assert_eq!(
            a.admit("198.51.100.1", &l, now).unwrap_err(),
            Refusal::TooManyFromClient
        );
        let _t3 = a.admit("uid:1001", &l, now).unwrap();
        assert_eq!(
            a.admit("uid:1002", &l, now).unwrap_err(),
            Refusal::ServerFull
        );
        drop(t1);
        assert!(a.admit("198.51.100.1", &l, now).is_ok());
    }

    #[test]
    fn the_rate_limit_counts_a_minute() {
        let a = Arc::new(Admission::default());
        let l = limits(100, 100, 2);
        let t0 = Instant::now();
        drop(a.admit("c", &l, t0).unwrap());
        drop(a.admit("c", &l, t0).unwrap());
        assert_eq!(a.admit("c", &l, t0).unwrap_err(), Refusal::TooFast);
        assert!(a.admit("c", &l, t0 + Duration::from_secs(61)).is_ok());
    }
}
