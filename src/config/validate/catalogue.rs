//! Validation of the permission catalogue, the routes that name its
//! permissions, and the roles seeded from the config.

use super::super::raw::{RawModule, RawRole, RawRoute};
use super::super::{Catalogue, RoleSeed, Upstream};
use super::{redis_policy, Checker};
use crate::policy::permissions::{Module, Permission};
use crate::policy::routes::{Route, RouteTable};
use std::collections::{HashMap, HashSet};

pub(super) fn catalogue(c: &mut Checker, raw: &[RawModule]) -> Catalogue {
    let mut modules = Vec::new();
    let mut seen = HashSet::new();
    for (i, m) in raw.iter().enumerate() {
        let id = m.id.get_ref();
        if !valid_ident(id) {
            c.problem(Some(&m.id), format!("modules[{i}].id"), "use lowercase letters, digits, '_' or '-'");
        }
        if !seen.insert(id.clone()) {
            c.problem(Some(&m.id), format!("modules[{i}].id"), format!("module `{id}` is declared twice"));
        }
        let mut permissions = Vec::new();
        for (j, p) in m.permissions.iter().enumerate() {
            let pid = p.id.get_ref();
            let field = format!("modules[{i}].permissions[{j}].id");
            match pid.strip_prefix(&format!("{id}.")) {
                Some(action) if valid_ident(action) => {}
                _ => c.problem(
                    Some(&p.id),
                    &field,
                    format!("`{pid}` must look like `{id}.<action>` (lowercase letters, digits, '_' or '-')"),
                ),
            }
            if !seen.insert(pid.clone()) {
                c.problem(Some(&p.id), &field, format!("permission `{pid}` is declared twice"));
            }
            permissions.push(Permission { id: pid.clone(), label: p.label.clone() });
        }
        modules.push(Module { id: id.clone(), name: m.name.clone(), permissions });
    }
    Catalogue::new(modules)
}

fn valid_ident(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_' || ch == '-')
}

/// The routes. `upstreams`: those that passed their checks, and the
/// names of every one declared (a route naming one that failed is not
/// reported again).
pub(super) fn routes(
    c: &mut Checker,
    raw: &[RawRoute],
    (upstreams, declared): (&[Upstream], &HashSet<&str>),
    catalogue: &Catalogue,
    cors: bool,
) -> RouteTable {
    let mut out = Vec::new();
    // Each pattern, as written once whitespace is normalised, and where.
    let mut patterns: HashMap<String, usize> = HashMap::new();
    for (i, r) in raw.iter().enumerate() {
        let field = format!("routes[{i}]");
        let upstream = match &r.upstream {
            None if upstreams.is_empty() => {
                if declared.is_empty() {
                    c.problem(Some(&r.pattern), format!("{field}.upstream"), "no [[upstreams]] declared to forward to");
                }
                0
            }
            None => 0,
            Some(name) => upstreams.iter().position(|u| &u.name == name.get_ref()).unwrap_or_else(|| {
                if !declared.contains(name.get_ref().as_str()) {
                    c.problem(Some(name), format!("{field}.upstream"), format!("no upstream named `{}`", name.get_ref()));
                }
                0
            }),
        };
        if let Some(p) = &r.permission {
            if !catalogue.is_declared(p.get_ref()) {
                c.problem(
                    Some(p),
                    format!("{field}.permission"),
                    format!("permission `{}` is not declared in [[modules]]", p.get_ref()),
                );
            }
        }
        if r.public && r.permission.is_some() {
            c.problem(Some(&r.pattern), format!("{field}.public"), "a public route cannot also require a permission");
        }
        let on_redis_error = redis_policy(c, &r.on_redis_error, &format!("{field}.on_redis_error"));
        match Route::new(
            r.pattern.get_ref(),
            r.permission.as_ref().map(|p| p.get_ref().clone()),
            upstream,
            r.public,
            on_redis_error,
        ) {
            Ok(mut route) => {
                // `{id}` and `{name}` in one place match alike.
                let shape: Vec<&str> =
                    route.pattern.split('/').map(|seg| if seg.starts_with('{') { "{}" } else { seg }).collect();
                match patterns.get(&shape.join("/")) {
                    Some(first) => c.problem(
                        Some(&r.pattern),
                        format!("{field}.match"),
                        format!("`{}` matches what routes[{first}] does: this route would never apply", route.pattern),
                    ),
                    None => drop(patterns.insert(shape.join("/"), i)),
                }
                route.cors = match &r.cors {
                    Some(on) if *on.get_ref() && !cors => {
                        c.problem(Some(on), format!("{field}.cors"), "cors = true needs a [cors] table");
                        false
                    }
                    Some(on) => *on.get_ref(),
                    None => cors,
                };
                if let Some(cost) = &r.cost {
                    match u32::try_from(*cost.get_ref()).ok().filter(|n| (1..=1_000_000).contains(n)) {
                        Some(n) => route.cost = n,
                        None => c.problem(Some(cost), format!("{field}.cost"), "must be a whole number from 1 to 1000000"),
                    }
                }
                if let Some(limit) = &r.rate_limit {
                    let n = &limit.get_ref().per_minute;
                    match u32::try_from(*n.get_ref()).ok().filter(|n| *n > 0) {
                        Some(_) if r.public => {
                            c.problem(Some(limit), format!("{field}.rate_limit"), "a public route has no key to limit");
                        }
                        Some(n) => route.per_minute = Some(n),
                        None => c.problem(Some(n), format!("{field}.rate_limit.per_minute"), "must be a whole number, 1 or more"),
                    }
                }
                route.shadow = r.shadow;
                if r.shadow && r.public {
                    c.problem(Some(&r.pattern), format!("{field}.shadow"), "a public route has no key whose rules to try");
                }
                if !r.deny.is_empty() {
                    let nets = super::deny_entries(c, &format!("{field}.deny"), &r.deny);
                    route.deny = Some(Box::new(crate::policy::ip::DenyList::new(&nets)));
                }
                if let Some(ws) = r.websocket.as_ref().filter(|w| *w.get_ref()) {
                    route.websocket = true;
                    if !route.method_matches(&http::Method::GET) {
                        c.problem(
                            Some(ws),
                            format!("{field}.websocket"),
                            "a WebSocket handshake is a GET: the route must match GET or *",
                        );
                    }
                }
                if let Some(name) = &r.cost_header {
                    route.cost_header = cost_header(c, name, &format!("{field}.cost_header"), r.public);
                }
                if r.public && r.cost.is_some() {
                    c.problem(r.cost.as_ref(), format!("{field}.cost"), "a public route has no key to charge");
                }
                if let Some(limit) = route.per_minute.filter(|l| *l < route.cost) {
                    let cost = route.cost;
                    c.problem(
                        r.cost.as_ref(),
                        format!("{field}.cost"),
                        format!(
                            "a request costs {cost}, more than the route's own rate_limit.per_minute of {limit}: \
                             every request would be refused (the limit counts units of cost: {cost} per request)"
                        ),
                    );
                }
                out.push(route)
            }
            Err(e) => c.problem(Some(&r.pattern), format!("{field}.match"), e),
        }
    }
    RouteTable::new(out)
}

pub(super) fn roles(c: &mut Checker, raw: &[RawRole], catalogue: &Catalogue) -> Vec<RoleSeed> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, r) in raw.iter().enumerate() {
        let id = r.id.get_ref();
        if let Err(e) = crate::keys::model::validate_role_id(id) {
            c.problem(Some(&r.id), format!("roles[{i}].id"), e);
        }
        if !seen.insert(id.clone()) {
            c.problem(Some(&r.id), format!("roles[{i}].id"), format!("role `{id}` is declared twice"));
        }
        for (j, p) in r.permissions.iter().enumerate() {
            if let Err(e) = catalogue.check_grant(p.get_ref()) {
                c.problem(Some(p), format!("roles[{i}].permissions[{j}]"), e);
            }
        }
        out.push(RoleSeed {
            id: id.clone(),
            name: r.name.clone().unwrap_or_else(|| id.clone()),
            description: r.description.clone().unwrap_or_default(),
            permissions: r.permissions.iter().map(|p| p.get_ref().clone()).collect(),
        });
    }
    out
}

/// A route's `cost_header`: a field name of the upstream's own, which
/// keygate reads and takes out of the answer.
fn cost_header(c: &mut Checker, name: &toml::Spanned<String>, field: &str, public: bool) -> Option<Box<str>> {
    let text = name.get_ref();
    let reserved = ["connection", "content-length", "content-type", "date", "keep-alive", "transfer-encoding", "upgrade"];
    let problem = if public {
        Some("a public route has no key to charge".to_string())
    } else if http::HeaderName::from_bytes(text.as_bytes()).is_err() {
        Some(format!("`{text}` is not a header field name"))
    } else if reserved.contains(&text.to_ascii_lowercase().as_str()) {
        Some(format!("`{text}` carries the answer itself; name a field of the upstream's own, e.g. X-Keygate-Cost"))
    } else {
        None
    };
    match problem {
        Some(why) => {
            c.problem(Some(name), field.to_string(), why);
            None
        }
        None => Some(text.to_ascii_lowercase().into()),
    }
}
