//! Bans as a chain member: an address banned in this scope is refused before anything else
//! of the route runs; the logging phase counts the refusals (401, 403, 429) that earn one.

use crate::metrics::METRICS;
use plugins::autoban::AutoBan;
use plugins::envelope::ceil_secs;
use plugins::policy::{Outcome, Request};
use plugins::{Facts, Flow, GatewayError, Policy};
use std::sync::Arc;
use std::time::Duration;

pub struct Ban {
    /// `server`, or the route's name.
    pub scope: String,
    /// Kept across reloads that leave the settings as they were.
    pub bans: Arc<AutoBan>,
}

impl Policy for Ban {
    async fn request(&self, req: &Request<'_>, facts: &mut Facts) -> Flow {
        let Some(ip) = req.client_ip else {
            return Flow::Continue;
        };
        match self.bans.banned(ip, crate::clock::uptime()) {
            Some(left) => {
                facts.banned = true;
                Flow::Respond(ban_answer(left))
            }
            None => Flow::Continue,
        }
    }

    fn logging(&self, facts: &Facts, outcome: &Outcome) {
        if !matches!(outcome.status, 401 | 403 | 429) || facts.banned {
            return;
        }
        let Some(ip) = outcome.client_ip else { return };
        if self.bans.refused(ip, crate::clock::uptime()) {
            METRICS.auto_bans.with_label_values(&[&self.scope]).inc();
            log::warn!(
                "auto_ban: {ip} banned ({}) after repeated refusals",
                self.scope
            );
        }
    }
}

fn ban_answer(left: Duration) -> GatewayError {
    let secs = ceil_secs(left);
    GatewayError::new(403, "forbidden")
        .with_data(serde_json::json!({ "reason": "address banned", "retry_after": secs }))
        .with_retry_after(secs)
}
