//! Quotas and credits in management: their fields on create and edit, a
//! key's use of each window, credit top-ups and usage reports for billing.

use super::{invalid, KeyInput, ManageError, Manager};
use crate::clock::{self, Period};
use crate::decide;
use crate::keys::model::{ApiKey, CreditTerms, Quota, RefillInterval};
use crate::ratelimit::credits;
use crate::ratelimit::meter::{self, Policy};
use crate::ratelimit::Counter;
use crate::store::{CreditBalance, CreditChange, UsageQuery, UsageRow};
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub use crate::store::MAX_CREDITS;

/// A running gateway's limiter and credits, for live counts.
pub use crate::decide::Live;

/// What `POST /v1/keys/verify` answers.
#[derive(Debug, Clone)]
pub struct Verification {
    pub verdict: super::Verdict,
    /// The gateway's refusal code when a limit, quota or credits refused.
    pub limited: Option<crate::error::GatewayError>,
    /// Credits left when the key spends them, else the tightest window's room.
    pub remaining: Option<i64>,
}

/// Quota fields of a create or edit: `Some(None)` removes the key's own
/// value (the plan's applies again).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaInput {
    pub per_hour: Option<Option<u32>>,
    pub per_day: Option<Option<u32>>,
    pub per_month: Option<Option<u32>>,
}

/// Credit fields of a create or edit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreditsInput {
    /// Sets the balance.
    pub remaining: Option<u64>,
    pub refill_amount: Option<Option<u64>>,
    pub refill_interval: Option<Option<String>>,
}

/// The balance a create or edit sets, if it sets one.
pub(super) fn balance_to_set(input: &KeyInput) -> Option<i64> {
    input.credits.as_ref()?.as_ref()?.remaining.map(|n| n as i64)
}

/// `{"perMinute", "perHour", "perDay", "perMonth"}` (absent ones null).
pub fn limits_json(per_minute: u32, quota: &Quota) -> Value {
    let mut v = quota_json(quota);
    v["perMinute"] = per_minute.into();
    v
}

/// `{"perHour", "perDay", "perMonth"}` (absent ones null).
pub fn quota_json(quota: &Quota) -> Value {
    json!({ "perHour": quota.per_hour, "perDay": quota.per_day, "perMonth": quota.per_month })
}

/// `{"refillAmount", "refillInterval"}` of a key that spends credits.
pub fn terms_json(terms: &CreditTerms) -> Value {
    json!({ "refillAmount": terms.refill_amount, "refillInterval": terms.refill_interval.map(RefillInterval::as_str) })
}

/// Hourly or daily rows of a usage report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    pub granularity: &'static str,
    pub rows: Vec<ReportRow>,
}

/// One key's usage in one hour or day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRow {
    /// The period's start, Unix seconds.
    pub at: i64,
    pub key_id: String,
    pub owner: String,
    pub admitted: u64,
    pub refused: u64,
    /// What the admitted requests cost, in units.
    pub units: i64,
}

impl UsageReport {
    /// Hourly rows summed per (period, key), in that order; a key's owner
    /// as its first row has it.
    fn of(rows: Vec<UsageRow>, granularity: &'static str) -> UsageReport {
        let mut totals: BTreeMap<(i64, String), ReportRow> = BTreeMap::new();
        for r in rows {
            let at = if granularity == "day" { (r.hour * 3600).div_euclid(86_400) * 86_400 } else { r.hour * 3600 };
            let t = totals.entry((at, r.key_id.clone())).or_insert_with(|| ReportRow {
                at,
                key_id: r.key_id,
                owner: r.owner,
                admitted: 0,
                refused: 0,
                units: 0,
            });
            t.admitted += r.admitted;
            t.refused += r.refused;
            t.units += r.units;
        }
        UsageReport { granularity, rows: totals.into_values().collect() }
    }

    /// A row's period as the report names it: its date, or its hour's start.
    fn period(&self, at: i64) -> String {
        if self.granularity == "day" {
            clock::date(at)
        } else {
            clock::rfc3339(at)
        }
    }

    /// The rows as JSON objects.
    pub fn json(&self) -> Value {
        self.rows
            .iter()
            .map(|r| {
                json!({
                    "period": self.period(r.at),
                    "keyId": r.key_id,
                    "owner": r.owner,
                    "admitted": r.admitted,
                    "refused": r.refused,
                    "units": r.units,
                })
            })
            .collect()
    }

    /// The rows as CSV with a header line.
    pub fn csv(&self) -> String {
        let mut out = String::from("period,key_id,owner,admitted,refused,units\n");
        for r in &self.rows {
            let (period, key_id, owner) = (csv_field(&self.period(r.at)), csv_field(&r.key_id), csv_field(&r.owner));
            out.push_str(&format!("{period},{key_id},{owner},{},{},{}\n", r.admitted, r.refused, r.units));
        }
        out
    }
}

/// A CSV field, quoted when it must be; a leading `=`, `+`, `-`, `@`, tab
/// or carriage return, even behind spaces or invisible format characters
/// (which a spreadsheet skips), is defused so it never runs an owner's
/// name as a formula.
fn csv_field(s: &str) -> String {
    let start = s.trim_start_matches(|c: char| c == ' ' || crate::keys::model::is_format_char(c));
    let s = if start.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{s}") } else { s.to_string() };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

impl Manager<'_> {
    /// Applies quota and credit fields to a key.
    pub(super) fn apply_metering(
        &self,
        key: &mut ApiKey,
        quota: QuotaInput,
        credits: Option<Option<CreditsInput>>,
    ) -> Result<(), ManageError> {
        for (value, slot) in [
            (quota.per_hour, &mut key.quota.per_hour),
            (quota.per_day, &mut key.quota.per_day),
            (quota.per_month, &mut key.quota.per_month),
        ] {
            if let Some(v) = value {
                *slot = v.filter(|n| *n > 0);
            }
        }
        match credits {
            None => {}
            Some(None) => key.credits = None,
            Some(Some(input)) => {
                let mut terms = key.credits.unwrap_or_default();
                if let Some(n) = input.remaining {
                    if n > MAX_CREDITS {
                        return Err(invalid("credits.remaining", format!("must be at most {MAX_CREDITS}")));
                    }
                }
                if let Some(amount) = input.refill_amount {
                    if amount.is_some_and(|n| n > MAX_CREDITS) {
                        return Err(invalid("credits.refillAmount", format!("must be at most {MAX_CREDITS}")));
                    }
                    terms.refill_amount = amount.filter(|n| *n > 0);
                }
                if let Some(interval) = input.refill_interval {
                    terms.refill_interval = match interval.as_deref() {
                        None | Some("") => None,
                        Some(i) => Some(
                            RefillInterval::parse(i)
                                .ok_or_else(|| invalid("credits.refillInterval", "must be \"day\" or \"month\""))?,
                        ),
                    };
                }
                if terms.refill_amount.is_some() != terms.refill_interval.is_some() {
                    return Err(invalid("credits.refillInterval", "a refill needs both refillAmount and refillInterval"));
                }
                key.credits = Some(terms);
            }
        }
        Ok(())
    }

    /// Adds to or sets a key's balance in the store; this node reads it
    /// again at once (others through the change feed).
    pub(super) async fn set_balance(
        &self,
        key: &ApiKey,
        change: CreditChange,
        expect: Option<u64>,
    ) -> Result<CreditBalance, ManageError> {
        let (refill, period) = credits::due(&key.credits.unwrap_or_default(), clock::now_ms());
        let balance = self
            .store
            .change_credits(&key.key_id, change, refill, period, expect)
            .await
            .map_err(|e| super::from_store(e, &format!("key `{}`", key.key_id)))?;
        if let Some(live) = self.meter {
            live.credits.forget(&key.key_id);
        }
        Ok(balance)
    }

    /// `POST /api-keys/{id}/credits`: `{"add": N}` or `{"set": N}`; with
    /// `expect`, only if the key is at that version. A key that spends no
    /// credits is given some only with `start`: from then on every request
    /// it makes spends them, which a top-up must not do unasked.
    pub async fn change_credits(
        &self,
        key_id: &str,
        change: CreditChange,
        start: bool,
        expect: Option<u64>,
    ) -> Result<Value, ManageError> {
        let mut key = self.get_key(key_id).await?;
        super::expected(&format!("key `{key_id}`"), key.version, expect)?;
        let n = match change {
            CreditChange::Add(n) | CreditChange::Set(n) => n,
        };
        if n.unsigned_abs() > MAX_CREDITS || (matches!(change, CreditChange::Set(_)) && n < 0) {
            let field = if matches!(change, CreditChange::Add(_)) { "add" } else { "set" };
            return Err(invalid(field, format!("must be a whole number up to {MAX_CREDITS}")));
        }
        let before = self.credits_json(&key).await?;
        let mut expect = expect;
        if key.credits.is_none() && !start {
            return Err(ManageError::Conflict(format!(
                "key `{key_id}` spends no credits: given some, every request it makes would spend them (a prepaid key); \
                 to start that, ask for it (`keys credits --start`, or `\"start\": true` in the admin API)"
            )));
        }
        if key.credits.is_none() {
            // Giving credits to a key makes it spend them.
            let input = KeyInput { credits: Some(Some(CreditsInput::default())), ..KeyInput::default() };
            key = self.change_key(key_id, input, "key.edit", expect).await?;
            expect = expect.map(|_| key.version);
        }
        self.set_balance(&key, change, expect).await?;
        let after = self.credits_json(&key).await?;
        self.audit("key.credits", key_id, Some(before.clone()), Some(after.clone())).await;
        Ok(after)
    }

    /// A key's credit balance now (after the refill due) and the seconds
    /// to its next refill: the store's, as this node sees it (its own view
    /// is newer by what it has not written yet).
    pub(super) async fn credit_remaining(
        &self,
        key_id: &str,
        terms: &CreditTerms,
        now_ms: i64,
    ) -> Result<(i64, Option<u64>), ManageError> {
        let stored = self.store.credit_balance(key_id).await.map_err(ManageError::Store)?.unwrap_or_default();
        let seen = self.meter.map_or(stored, |l| l.credits.seen(key_id, stored));
        Ok(credits::effective(seen, terms, now_ms))
    }

    /// A key's credits: balance now, refill terms and when the next comes.
    pub async fn credits_json(&self, key: &ApiKey) -> Result<Value, ManageError> {
        let Some(terms) = key.credits else { return Ok(Value::Null) };
        let now_ms = clock::now_ms();
        let (remaining, refill_in) = self.credit_remaining(&key.key_id, &terms, now_ms).await?;
        let mut v = terms_json(&terms);
        v["remaining"] = remaining.max(0).into();
        v["refillsAt"] = refill_in.map(|s| clock::rfc3339(now_ms / 1000 + s as i64)).into();
        Ok(v)
    }

    /// `GET /api-keys/{id}/usage`'s windows and credits: each window's
    /// `used`, `limit` and `resetsAt`.
    pub async fn key_meter(&self, key: &ApiKey) -> Result<(Value, Value), ManageError> {
        let now_ms = clock::now_ms();
        let limits = self.config.limits_for(key);
        let subject = meter::subject_of(self.config.rate_limit.scope, key);
        let stored = match self.meter {
            Some(_) => Vec::new(),
            None => self.store.meter_windows(now_ms).await.map_err(ManageError::Store)?,
        };
        let q = limits.quota;
        // (policy, counter id, limit, the route's pattern for a route's own limit)
        let mut all: Vec<(Policy, String, u32, Option<&str>)> = [
            (Policy::Minute, Some(limits.per_minute)),
            (Policy::Hour, q.per_hour),
            (Policy::Day, q.per_day),
            (Policy::Month, q.per_month),
        ]
        .into_iter()
        .filter_map(|(p, limit)| Some((p, subject.to_string(), limit?, None)))
        .collect();
        for route in self.config.routes.routes().iter().filter(|r| !r.public) {
            if let Some(limit) = route.per_minute {
                all.push((Policy::Route, meter::route_counter_id(&subject, &route.pattern), limit, Some(route.pattern.as_str())));
            }
        }
        let mut windows = Vec::new();
        for (policy, id, limit, route) in all {
            let period = policy.period();
            let counter = Counter { id: &id, period };
            let used = match self.meter {
                Some(live) => {
                    Some(live.limiter.used(counter, now_ms).await.map_err(|e| {
                        ManageError::Store(crate::store::StoreError::Unavailable(format!("rate-limit redis: {e}")))
                    })?)
                }
                // Without a gateway, the store's last flush (minute windows are not kept).
                None if period == Period::Minute => None,
                None => Some(
                    stored.iter().find(|w| w.period == period && w.id == id).map_or(0, |w| u32::try_from(w.delta).unwrap_or(0)),
                ),
            };
            let resets = period.end_ms(period.index(now_ms)) / 1000;
            let mut w = json!({
                "window": policy.name(),
                "used": used,
                "limit": limit,
                "remaining": used.map(|u| limit.saturating_sub(u)),
                "resetsAt": clock::rfc3339(resets),
            });
            if let Some(pattern) = route {
                w["route"] = pattern.into();
            }
            windows.push(w);
        }
        Ok((Value::Array(windows), self.credits_json(key).await?))
    }

    /// Checks a token as a request would and, with `cost` above 0, charges
    /// it as a request would: every window and the credits, all or none,
    /// counted in the key's usage as one admitted or refused request.
    /// Without a cost it is a peek: the verdict a request would get now,
    /// nothing taken or counted.
    pub async fn verify_and_charge(&self, token: &str, permission: Option<&str>, cost: u32) -> Result<Verification, ManageError> {
        let charged = Some(cost).filter(|c| *c > 0 && self.meter.is_some());
        let (verdict, decision) = self.decide(token, permission, charged).await?;
        let (Some(key), None, Some(live)) = (verdict.key.clone(), verdict.refusal, self.meter) else {
            return Ok(Verification { verdict, limited: None, remaining: None });
        };
        let now_ms = clock::now_ms();
        let (limited, credits, rate) = if decision.charged {
            (decision.refusal, decision.credits, decision.rate)
        } else {
            let balance = match key.credits {
                Some(terms) => Some(self.credit_remaining(&key.key_id, &terms, now_ms).await?),
                None => None,
            };
            let peek = decide::verdict_now(self.config, live, &key, 1, balance);
            (crate::error::GatewayError::of_metered(&peek), peek.credits, peek.view())
        };
        let remaining = match (key.credits, credits) {
            (Some(_), Some(c)) => Some(c.remaining),
            (Some(terms), None) => Some(self.credit_remaining(&key.key_id, &terms, now_ms).await?.0),
            (None, _) => rate.map(|v| i64::from(v.decision.remaining)),
        };
        Ok(Verification { verdict, limited, remaining })
    }

    /// Admitted and refused requests per key per day or hour, for billing.
    pub async fn usage_report(
        &self,
        owner: Option<String>,
        key_id: Option<String>,
        (from, to): (i64, i64),
        granularity: &'static str,
    ) -> Result<UsageReport, ManageError> {
        let query = UsageQuery { owner, key_id, from_hour: from / 3600, to_hour: to / 3600 };
        let rows = self.store.usage_report(&query).await.map_err(ManageError::Store)?;
        Ok(UsageReport::of(rows, granularity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hourly_rows_sum_per_day_and_key_in_order() {
        let row = |key_id: &str, hour: i64, admitted: u64, refused: u64| UsageRow {
            key_id: key_id.into(),
            owner: format!("owner-of-{key_id}"),
            hour,
            admitted,
            refused,
            units: admitted as i64 * 10,
        };
        let day = 20_416 * 24; // the hour of some day's 00:00 UTC
        let rows = vec![
            row("key_b", day + 3, 1, 0),
            row("key_a", day + 25, 4, 1),
            row("key_a", day, 2, 0),
            row("key_a", day + 23, 3, 2),
        ];
        let daily = UsageReport::of(rows.clone(), "day");
        let at = |h: i64| h * 3600;
        let summed = |r: &ReportRow| (r.at, r.key_id.clone(), r.owner.clone(), r.admitted, r.refused, r.units);
        assert_eq!(
            daily.rows.iter().map(summed).collect::<Vec<_>>(),
            vec![
                (at(day), "key_a".into(), "owner-of-key_a".into(), 5, 2, 50),
                (at(day), "key_b".into(), "owner-of-key_b".into(), 1, 0, 10),
                (at(day + 24), "key_a".into(), "owner-of-key_a".into(), 4, 1, 40),
            ]
        );
        let hourly = UsageReport::of(rows, "hour");
        assert_eq!(hourly.rows.iter().map(|r| r.at / 3600 - day).collect::<Vec<_>>(), vec![0, 3, 23, 25]);
    }

    #[test]
    fn csv_quotes_and_defuses_what_a_spreadsheet_would_run() {
        let report = UsageReport {
            granularity: "day",
            rows: [("key_a", "=HYPERLINK(\"x\")", 5, 1, 7), ("key_b", "a,b", 0, 2, 0)]
                .map(|(key_id, owner, admitted, refused, units)| ReportRow {
                    at: 1_764_547_200,
                    key_id: key_id.into(),
                    owner: owner.into(),
                    admitted,
                    refused,
                    units,
                })
                .to_vec(),
        };
        for hidden in [" =1+1", "\u{200b}=1+1", " \u{2066}@SUM(A1)", "\t=1"] {
            assert!(csv_field(hidden).trim_start_matches('"').starts_with('\''), "{hidden:?}: {}", csv_field(hidden));
        }
        assert_eq!(csv_field("plain owner"), "plain owner");
        assert_eq!(
            report.csv(),
            "period,key_id,owner,admitted,refused,units\n2025-12-01,key_a,\"'=HYPERLINK(\"\"x\"\")\",5,1,7\n2025-12-01,key_b,\"a,b\",0,2,0\n"
        );
    }
}
