#!/usr/bin/env python3
"""Writes src/admin/openapi.json, the OpenAPI 3 document of the admin API.

Run after changing the admin API: `python3 tools/gen_openapi.py`.
tests/it/admin_api.rs checks that the document and the route table agree.
"""
import json, pathlib

def ref(name): return {"$ref": f"#/components/schemas/{name}"}

def envelope(data, meta=None):
    return {"type": "object", "required": ["success", "data"], "properties": {
        "success": {"type": "boolean", "const": True}, "data": data,
        "meta": meta or {"type": "object"}}}

def ok(desc, data, meta=None, status="200"):
    return {status: {"description": desc, "content": {"application/json": {"schema": envelope(data, meta)}}}}

def errors(*codes):
    names = {"400": "Invalid input; `field` names the offending field", "401": "Missing or wrong admin token",
             "404": "No such key or role", "403": "The admin token lacks the scope (`insufficient_scope`, with `required`)", "409": "Conflict (`conflict` or `role_in_use`)",
             "412": "`If-Match` names another version than the record is at (`version_conflict`, with `currentVersion`; the answer's ETag is the current one): nothing changed",
             "503": "The store is unavailable"}
    return {c: {"description": names[c], "content": {"application/json": {"schema": ref("Error")}}} for c in codes}

def body(schema): return {"required": True, "content": {"application/json": {"schema": schema}}}

id_param = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
if_match = [{"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string", "pattern": '^"[0-9]+"$'},
             "description": 'The version this change is made for, as the ETag gave it ("3"); another version is 412 and nothing changes'}]
etag = {"ETag": {"description": 'The record\'s version, for If-Match ("3")', "schema": {"type": "string"}}}

def tagged(responses):
    """Adds the ETag header to a 200 answer."""
    responses["200"]["headers"] = etag
    return responses
paging = [{"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 1}},
          {"name": "per_page", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 20}}]
list_meta = {"type": "object", "properties": {"total": {"type": "integer"}, "page": {"type": "integer"}, "perPage": {"type": "integer"}}}
secret_meta = {"type": "object", "properties": {"warning": {"type": "string"}}}
auth = [{"adminToken": []}]
nullable_str = {"type": ["string", "null"]}
event_types = ["key.created", "key.updated", "key.disabled", "key.enabled", "key.rotated", "key.deleted", "key.leaked",
               "key.expiring", "key.expired", "quota.threshold", "credits.low", "credits.exhausted"]

paths = {
  "/api-keys": {
    "get": {"summary": "List keys (masked)", "security": auth, "parameters": [{"name": "search", "in": "query", "schema": {"type": "string"}, "description": "Substring of name, description, owner, keyPrefix, role or keyId"},
                {"name": "role", "in": "query", "schema": {"type": "string"}, "description": "Only keys of this role (empty: keys without a role)"},
                {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["active", "disabled", "expired"]}, "description": "Only keys in this state"}] + paging,
            "responses": {**ok("A page of keys", {"type": "array", "items": ref("ApiKey")}, list_meta), **errors("400", "401", "503")}},
    "post": {"summary": "Create a key; its secret (apiKey) is shown once", "security": auth, "requestBody": body(ref("KeyInput")),
             "responses": {**ok("The key and its secret", ref("ApiKeyWithSecret"), secret_meta, "201"), **errors("400", "401", "409", "503")}}},
  "/api-keys/export": {"get": {"summary": "Every key as one JSON line: every field, secrets by SHA-256 only", "security": auth,
      "responses": {"200": {"description": "JSON lines of KeyLine", "content": {"application/x-ndjson": {"schema": ref("KeyLine")}}}, **errors("401", "503")}}},
  "/api-keys/import": {"post": {"summary": "Restore keys from JSON lines (an export, or lines with a token): by keyId, replaced or created; checked whole first, then each line written only if its key is still as checked (else listed in conflicts); a deleted keyId is created again only with recreateDeleted", "security": auth,
      "parameters": [{"name": "recreateDeleted", "in": "query", "schema": {"type": "boolean", "default": False}, "description": "Create again keys that were deleted from the store"}],
      "requestBody": {"required": True, "content": {"application/x-ndjson": {"schema": ref("KeyLine")}}},
      "responses": {**ok("What was done", ref("ImportSummary")), **errors("400", "401", "503")}}},
  "/api-keys/{id}": {
    "parameters": id_param,
    "get": {"summary": "One key", "security": auth, "responses": tagged({**ok("The key", ref("ApiKey"), {"type": "object", "properties": {
        "previousSecrets": {"type": "array", "description": "Rotated-out secrets that still work: when each stops (never a hash)",
                            "items": {"type": "object", "properties": {"validUntil": {"type": "string", "format": "date-time"}}}}}}),
        **errors("401", "404", "503")})},
    "patch": {"summary": "Edit any field but the secret and env: only the fields sent are written", "security": auth, "parameters": if_match, "requestBody": body(ref("KeyInput")),
              "responses": tagged({**ok("The edited key", ref("ApiKey")), **errors("400", "401", "404", "412", "503")})},
    "delete": {"summary": "Delete (revoke) a key", "security": auth, "parameters": if_match,
               "responses": {**ok("Revoked", {"type": "object", "properties": {"keyId": {"type": "string"}, "revoked": {"type": "boolean"}}}), **errors("400", "401", "404", "412", "503")}}},
  "/api-keys/{id}/enable": {"parameters": id_param, "post": {"summary": "Enable a key", "security": auth, "parameters": if_match, "responses": tagged({**ok("The key", ref("ApiKey")), **errors("400", "401", "404", "412", "503")})}},
  "/api-keys/{id}/disable": {"parameters": id_param, "post": {"summary": "Disable a key (401 key_disabled on every node)", "security": auth, "parameters": if_match, "responses": tagged({**ok("The key", ref("ApiKey")), **errors("400", "401", "404", "412", "503")})}},
  "/api-keys/{id}/rotate": {"parameters": id_param, "post": {
      "summary": "New secret; the old one stays valid for graceSeconds", "security": auth, "parameters": if_match,
      "requestBody": {"required": False, "content": {"application/json": {"schema": {"type": "object", "additionalProperties": False, "properties": {"graceSeconds": {"type": "integer", "minimum": 0, "maximum": 2592000}}}}}},
      "responses": tagged({**ok("The key and its new secret", ref("ApiKeyWithSecret"), secret_meta), **errors("400", "401", "404", "412", "503")})}},
  "/api-keys/{id}/usage": {"parameters": id_param, "get": {"summary": "Requests over the last hour and day, each window's use (minute, hour, day, month) and the credits", "security": auth,
      "responses": {**ok("Usage", ref("Usage")), **errors("401", "404", "503")}}},
  "/api-keys/{id}/credits": {"parameters": id_param, "post": {"summary": "Add to or set a key's credit balance (a key given credits spends them from then on); the key's version stays", "security": auth, "parameters": if_match,
      "requestBody": body({"type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1, "properties": {
          "add": {"type": "integer", "description": "Credits to add (negative takes away)"}, "set": {"type": "integer", "minimum": 0, "description": "The new balance"}}}),
      "responses": {**ok("The key's credits after the change", {"type": "object", "properties": {"keyId": {"type": "string"}, "credits": ref("Credits")}}), **errors("400", "401", "404", "412", "503")}}},
  "/usage": {"get": {"summary": "Admitted and refused requests per key per day or hour, for billing (JSON, or CSV with Accept: text/csv); hourly counts are kept 420 days", "security": auth,
      "parameters": [{"name": "owner", "in": "query", "schema": {"type": "string"}, "description": "Only keys of this owner"},
                     {"name": "keyId", "in": "query", "schema": {"type": "string"}, "description": "Only this key"},
                     {"name": "from", "in": "query", "schema": {"type": "string", "format": "date"}, "description": "First UTC day (default: 29 days before `to`)"},
                     {"name": "to", "in": "query", "schema": {"type": "string", "format": "date"}, "description": "Last UTC day, included (default: today)"},
                     {"name": "granularity", "in": "query", "schema": {"type": "string", "enum": ["day", "hour"], "default": "day"}}],
      "responses": {"200": {"description": "Rows by period, then key", "content": {
          "application/json": {"schema": envelope({"type": "array", "items": ref("UsageRow")}, {"type": "object", "properties": {"granularity": {"type": "string"}, "retentionDays": {"type": "integer"}}})},
          "text/csv": {"schema": {"type": "string", "description": "period,key_id,owner,admitted,refused"}}}}, **errors("400", "401", "503")}}},
  "/v1/keys/verify": {"post": {"summary": "Check a token as the gateway would and, with a cost, charge it as a request would (every window and the credits, all or nothing; counted in usage as one request); without a cost, the verdict a request would get now, nothing taken; needs the verify scope", "security": auth,
      "requestBody": body({"type": "object", "required": ["key"], "additionalProperties": False, "properties": {"key": {"type": "string"}, "permission": {"type": "string"},
          "cost": {"type": "integer", "minimum": 0, "maximum": 1000000, "description": "Units to take; 0 or absent takes none and counts nothing"}}}),
      "responses": {**ok("The verdict", {"type": "object", "required": ["valid", "code", "keyId", "owner", "permissions", "remaining"], "properties": {
          "valid": {"type": "boolean"}, "code": {"type": ["string", "null"], "description": "The gateway's code when not valid"},
          "keyId": nullable_str, "owner": nullable_str, "permissions": {"type": "array", "items": {"type": "string"}},
          "remaining": {"type": ["integer", "null"], "description": "Credits left when the key spends credits, else the room in its tightest window"},
          "window": {"type": "string", "description": "With quota_exceeded: hour, day or month"},
          "retryAfter": {"type": ["integer", "null"], "description": "Seconds until it could pass (null: no refill will come)"}}}), **errors("400", "401", "403", "503")}}},
  "/v1/leaks": {"post": {"summary": "Report tokens found leaked (by a secret scanner or a person): each that is one of this gateway's disables its key on every node ([leaks] on_leak = \"flag\": audited only), audited as key.leaked with url and source; needs the leaks scope", "security": auth,
      "requestBody": body({"type": "object", "required": ["tokens"], "additionalProperties": False, "properties": {
          "tokens": {"type": "array", "minItems": 1, "maxItems": 10000, "items": {"type": "string"}},
          "url": {"type": "string", "description": "Where they were found"}, "source": {"type": "string", "description": "What was scanned, or who found them"},
          "type": {"type": "string", "description": "The scanner's name for the kind of token"}}}),
      "responses": {**ok("Each token, in the order sent", {"type": "array", "items": {"type": "object", "required": ["tokenHash", "label", "keyId", "action"], "properties": {
          "tokenHash": {"type": "string", "description": "SHA-256 of the token, hex"},
          "label": {"type": "string", "enum": ["true_positive", "false_positive"]},
          "keyId": nullable_str,
          "action": {"type": "string", "enum": ["none", "disabled", "already_disabled", "flagged", "secret_retired"]}}}},
          {"type": "object", "properties": {"reported": {"type": "integer"}, "matched": {"type": "integer"}}}), **errors("400", "401", "403", "503")}}},
  "/api-roles": {
    "get": {"summary": "List roles", "security": auth, "responses": {**ok("Every role", {"type": "array", "items": ref("Role")}), **errors("401", "503")}},
    "post": {"summary": "Create a role", "security": auth, "requestBody": body(ref("RoleInput")),
             "responses": {**ok("The role", ref("Role"), None, "201"), **errors("400", "401", "409", "503")}}},
  "/api-roles/export": {"get": {"summary": "Every role as one JSON line", "security": auth,
      "responses": {"200": {"description": "JSON lines of RoleLine", "content": {"application/x-ndjson": {"schema": ref("RoleLine")}}}, **errors("401", "503")}}},
  "/api-roles/import": {"post": {"summary": "Restore roles from JSON lines: by id, replaced or created; checked whole first", "security": auth,
      "requestBody": {"required": True, "content": {"application/x-ndjson": {"schema": ref("RoleLine")}}},
      "responses": {**ok("What was done", ref("ImportSummary")), **errors("400", "401", "503")}}},
  "/api-roles/{id}": {
    "parameters": id_param,
    "get": {"summary": "One role", "security": auth, "responses": tagged({**ok("The role", ref("Role")), **errors("401", "404", "503")})},
    "patch": {"summary": "Edit a role (takes effect on every node): only the fields sent are written", "security": auth, "parameters": if_match, "requestBody": body(ref("RoleInput")),
              "responses": tagged({**ok("The role", ref("Role")), **errors("400", "401", "404", "412", "503")})},
    "delete": {"summary": "Delete a role no key uses", "security": auth, "parameters": if_match,
               "responses": {**ok("Deleted", {"type": "object", "properties": {"id": {"type": "string"}, "deleted": {"type": "boolean"}}}), **errors("400", "401", "404", "409", "412", "503")}}},
  "/modules": {"get": {"summary": "The permission catalogue, and the plans in meta", "security": auth, "responses": {**ok("Modules", {"type": "array", "items": ref("Module")},
      {"type": "object", "properties": {"plans": {"type": "object", "description": "Plan name to requests per minute, from the config", "additionalProperties": {"type": "integer"}},
          "planLimits": {"type": "object", "description": "Plan name to its limits", "additionalProperties": ref("Limits")}}}),
      **errors("401")}}},
  "/session": {"get": {"summary": "The calling admin token's name and scopes", "security": auth,
      "responses": {**ok("Who is signed in", {"type": "object", "properties": {"name": {"type": "string"}, "scopes": {"type": "array", "items": {"type": "string", "enum": ["read", "write", "verify", "leaks", "admin"]}}}}), **errors("401")}}},
  "/verify": {"post": {"summary": "Check a token as the data plane would (no IP allowlist or rate limit); needs the verify scope", "security": auth,
      "requestBody": body({"type": "object", "required": ["key"], "additionalProperties": False, "properties": {"key": {"type": "string"}, "permission": {"type": "string"}}}),
      "responses": {**ok("The verdict", {"type": "object", "properties": {"valid": {"type": "boolean"}, "code": {"type": "string"}, "keyId": {"type": "string"},
          "name": {"type": "string"}, "owner": {"type": "string"}, "role": nullable_str, "env": {"type": "string"}, "permissions": {"type": "array", "items": {"type": "string"}},
          "rateLimit": {"type": "integer"}, "expiresAt": nullable_str, "metadata": {"type": "object", "additionalProperties": {"type": "string"}}}}), **errors("400", "401", "403", "503")}}},
  "/audit-log": {"get": {"summary": "Management changes, newest first", "security": auth,
      "parameters": [{"name": "target", "in": "query", "schema": {"type": "string"}, "description": "Only entries about this key or role id"}] + paging,
      "responses": {**ok("A page of entries", {"type": "array", "items": ref("AuditEntry")}, list_meta), **errors("400", "401", "503")}}},
  "/events": {"get": {"summary": "Lifecycle events from the outbox, newest first, each as every webhook endpoint receives it", "security": auth,
      "parameters": [{"name": "keyId", "in": "query", "schema": {"type": "string"}},
                     {"name": "type", "in": "query", "schema": {"type": "string", "enum": event_types}},
                     {"name": "since", "in": "query", "schema": {"type": "string"}, "description": "A time (2026-12-07T10:00:00Z) or a span back from now (24h)"},
                     {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}}],
      "responses": {**ok("Events", {"type": "array", "items": ref("Event")}, {"type": "object", "properties": {"count": {"type": "integer"}}}), **errors("400", "401", "503")}}},
  "/webhooks/deliveries": {"get": {"summary": "Deliveries of events to the [[webhooks]] endpoints, newest first, with their latest attempts", "security": auth,
      "parameters": [{"name": "status", "in": "query", "schema": {"type": "string", "enum": ["pending", "failed", "delivered", "dead"]}},
                     {"name": "webhook", "in": "query", "schema": {"type": "string"}},
                     {"name": "keyId", "in": "query", "schema": {"type": "string"}},
                     {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}}],
      "responses": {**ok("Deliveries", {"type": "array", "items": ref("Delivery")}, {"type": "object", "properties": {"count": {"type": "integer"}}}), **errors("400", "401", "404", "503")}}},
  "/blocks": {"get": {"summary": "Client addresses blocked for failed credentials ([abuse] failed_credentials), by address", "security": auth,
      "responses": {**ok("Blocks in force", {"type": "array", "items": {"type": "object", "properties": {
          "address": {"type": "string"}, "until": {"type": "string", "format": "date-time"}}}}), **errors("401", "503")}}},
  "/blocks/{id}": {"delete": {"summary": "Lift an address's block on every node (audited as block.remove)", "security": auth,
      "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}, "description": "The blocked IP address"}],
      "responses": {**ok("Lifted", {"type": "object", "properties": {"address": {"type": "string"}, "removed": {"type": "boolean"}}}), **errors("400", "401", "404", "503")}}},
  "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3 document", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
  "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
  "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": ok("Alive", {"type": "object"})}},
  "/readyz": {"get": {"summary": "Readiness: the store answers", "security": [], "responses": {**ok("Ready", {"type": "object"}), **errors("503")}}},
}

key_props = {
  "keyId": {"type": "string"}, "name": {"type": "string", "minLength": 1, "maxLength": 100}, "description": {"type": "string"},
  "owner": {"type": "string"}, "role": nullable_str, "permissions": {"type": "array", "items": {"type": "string"}},
  "plan": nullable_str, "rateLimit": {"type": "integer", "description": "Effective requests per minute (own, else plan, else default)"},
  "allowedIps": {"type": "array", "items": {"type": "string"}}, "env": {"type": "string", "enum": ["live", "test"]},
  "enabled": {"type": "boolean"}, "status": {"type": "string", "enum": ["active", "disabled", "expired"]},
  "expiresAt": nullable_str, "createdAt": {"type": "string"}, "lastUsed": nullable_str, "usageCount": {"type": "integer"},
  "metadata": {"type": "object", "additionalProperties": {"type": "string"}}, "keyPrefix": {"type": "string", "description": "Masked form, never the secret"},
  "quota": ref("Quota"), "credits": {"oneOf": [ref("CreditTerms"), {"type": "null"}], "description": "Set when the key spends credits"},
  "shadow": {"type": "boolean", "description": "The key's permissions, IP allowlist and limits are tried, not enforced: what they would refuse is forwarded with X-Keygate-Shadow"},
  "version": {"type": "integer", "minimum": 1, "description": "1 when created, +1 per change of the key's fields (not usage or the balance); the ETag and If-Match name it"},
}
nullable_int = {"type": ["integer", "null"], "minimum": 1}
quota = {"type": "object", "properties": {"perHour": nullable_int, "perDay": nullable_int, "perMonth": nullable_int}}
credit_terms = {"refillAmount": {"type": ["integer", "null"]}, "refillInterval": {"type": ["string", "null"], "enum": ["day", "month", None]}}
schemas = {
  "Event": {"type": "object", "required": ["id", "type", "timestamp", "data"], "properties": {
      "id": {"type": "string", "description": "The webhook-id of every delivery of this event"},
      "type": {"type": "string", "enum": event_types}, "timestamp": {"type": "string", "format": "date-time"},
      "data": {"type": "object", "description": "keyId, name, owner, env, role, plan, enabled, status, expiresAt, metadata, and for some types one more field (leak, previousSecretValidUntil); never a secret or its hash"}}},
  "Delivery": {"type": "object", "properties": {
      "webhook": {"type": "string"}, "eventId": {"type": "string"}, "type": {"type": "string"}, "keyId": {"type": "string"},
      "status": {"type": "string", "enum": ["pending", "failed", "delivered", "dead"]}, "attempts": {"type": "integer"},
      "nextAttemptAt": {"type": ["string", "null"], "format": "date-time"}, "lastStatus": {"type": ["integer", "null"]}, "lastError": nullable_str,
      "log": {"type": "array", "description": "The latest attempts", "items": {"type": "object", "properties": {
          "at": {"type": "string", "format": "date-time"}, "status": {"type": ["integer", "null"]}, "error": nullable_str, "tookMs": {"type": "integer"}}}}}},
  "ApiKey": {"type": "object", "additionalProperties": False, "properties": key_props, "required": list(key_props)},
  "ApiKeyWithSecret": {"type": "object", "properties": {**key_props, "apiKey": {"type": "string", "description": "The secret: shown only here"},
                        "previousSecretValidUntil": {"type": "string"}}, "required": list(key_props) + ["apiKey"]},
  "KeyInput": {"type": "object", "additionalProperties": False, "properties": {
      "name": {"type": "string", "minLength": 1, "maxLength": 100}, "description": {"type": "string"}, "owner": {"type": "string"},
      "role": nullable_str, "permissions": {"type": ["array", "null"], "items": {"type": "string"}},
      "rateLimit": {"type": ["integer", "null"], "minimum": 1}, "plan": nullable_str,
      "allowedIps": {"type": ["array", "null"], "items": {"type": "string"}}, "env": {"type": "string", "enum": ["live", "test"], "description": "Create only"},
      "expirationDays": {"type": ["integer", "null"], "minimum": 1, "maximum": 365},
      "expiresAt": {"type": ["string", "null"], "format": "date-time", "description": "RFC 3339; in the future; null removes the expiry; not with expirationDays"},
      "metadata": {"type": ["object", "null"], "additionalProperties": {"type": "string"}}, "enabled": {"type": "boolean"},
      "shadow": {"type": "boolean", "description": "Try the key's rules without enforcing them"},
      "quota": {"type": ["object", "null"], "additionalProperties": False, "description": "The key's own quotas (UTC calendar windows); null or a null window goes back to the plan's",
                "properties": {"perHour": nullable_int, "perDay": nullable_int, "perMonth": nullable_int}},
      "credits": {"type": ["object", "null"], "additionalProperties": False, "description": "null: the key stops spending credits",
                  "properties": {"remaining": {"type": "integer", "minimum": 0, "description": "Sets the balance"}, **credit_terms}}}},
  "Quota": {**quota, "description": "Effective quotas (own, else plan); null: none"},
  "Limits": {"type": "object", "properties": {"perMinute": {"type": "integer"}, **quota["properties"]}},
  "CreditTerms": {"type": "object", "properties": credit_terms},
  "Credits": {"type": ["object", "null"], "properties": {"remaining": {"type": "integer"}, **credit_terms, "refillsAt": nullable_str}},
  "Window": {"type": "object", "properties": {"window": {"type": "string", "enum": ["minute", "route", "hour", "day", "month"]},
             "route": {"type": "string", "description": "With window route: the route whose own limit this is"}, "used": {"type": ["integer", "null"], "description": "null: not known (minute windows, read by the CLI on the embedded store)"},
             "limit": {"type": "integer"}, "remaining": {"type": ["integer", "null"]}, "resetsAt": {"type": "string"}}},
  "UsageRow": {"type": "object", "properties": {"period": {"type": "string", "description": "YYYY-MM-DD, or the hour's RFC 3339 start"}, "keyId": {"type": "string"},
               "owner": {"type": "string"}, "admitted": {"type": "integer"}, "refused": {"type": "integer"}}},
  "Role": {"type": "object", "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "description": {"type": "string"},
           "permissions": {"type": "array", "items": {"type": "string"}}, "version": {"type": "integer", "minimum": 1}},
           "required": ["id", "name", "description", "permissions", "version"]},
  "RoleInput": {"type": "object", "additionalProperties": False, "properties": {"id": {"type": "string", "description": "Create only"},
           "name": {"type": "string"}, "description": {"type": "string"}, "permissions": {"type": "array", "items": {"type": "string"}}}},
  "Module": {"type": "object", "properties": {"id": {"type": "string"}, "name": {"type": "string"},
           "permissions": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "string"}, "label": {"type": "string"}}}}}},
  "Usage": {"type": "object", "properties": {"keyId": {"type": "string"}, "lastHour": {"type": "integer"}, "lastDay": {"type": "integer"},
           "total": {"type": "integer"}, "lastUsed": nullable_str, "windows": {"type": "array", "items": ref("Window")}, "credits": ref("Credits")}},
  "AuditEntry": {"type": "object", "properties": {"atMs": {"type": "integer"}, "actor": {"type": "string"}, "action": {"type": "string"},
           "target": {"type": "string"}, "before": {"type": ["object", "null"]}, "after": {"type": ["object", "null"]}}},
  "KeyLine": {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
      "keyId": {"type": "string"}, "name": {"type": "string"}, "description": {"type": "string"}, "owner": {"type": "string"},
      "role": nullable_str, "permissions": {"type": "array", "items": {"type": "string"}}, "plan": nullable_str,
      "rateLimit": {"type": ["integer", "null"], "description": "The key's own limit"}, "allowedIps": {"type": "array", "items": {"type": "string"}},
      "env": {"type": "string", "enum": ["live", "test"]}, "enabled": {"type": "boolean"}, "expiresAt": nullable_str, "createdAt": {"type": "string"},
      "lastUsed": nullable_str, "usageCount": {"type": "integer"}, "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
      "shadow": {"type": "boolean", "description": "Written only when true"},
      "keyPrefix": {"type": "string"}, "tokenSha256": {"type": "string", "description": "SHA-256 (hex) of the current secret"},
      "previousSecrets": {"type": "array", "items": {"type": "object", "properties": {"sha256": {"type": "string"}, "validUntil": {"type": "string"}}}},
      "token": {"type": "string", "description": "A secret in clear, to import an existing platform's token; never in an export"}}},
  "RoleLine": {"type": "object", "required": ["id", "permissions"], "additionalProperties": False, "properties": {
      "id": {"type": "string"}, "name": {"type": "string"}, "description": {"type": "string"}, "permissions": {"type": "array", "items": {"type": "string"}}}},
  "ImportSummary": {"type": "object", "properties": {"created": {"type": "integer"}, "updated": {"type": "integer"},
      "conflicts": {"type": "array", "description": "Lines not written: their key changed, was created or was deleted since the import checked it",
                    "items": {"type": "object", "properties": {"line": {"type": "integer"}, "keyId": {"type": "string"}, "reason": {"type": "string"}}}}}},
  "Error": {"type": "object", "required": ["success", "error", "code"], "properties": {"success": {"type": "boolean", "const": False},
           "error": {"type": "string"}, "code": {"type": "string"}, "field": {"type": "string"},
           "currentVersion": {"type": "integer", "description": "With version_conflict: the version the record is at"}}},
}
doc = {"openapi": "3.1.0",
       "info": {"title": "keygate admin API", "version": "1", "description": "Key and role management on the admin listener. Every route but /metrics, /healthz, /readyz and /openapi.json needs `Authorization: Bearer <admin token>`. Every route answers 421 `host_not_allowed` to a request whose Host is neither a loopback name or address nor one of admin.allowed_hosts."},
       "security": auth, "paths": paths,
       "components": {"securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}}, "schemas": schemas}}
out = pathlib.Path(__file__).resolve().parent.parent / "src" / "admin" / "openapi.json"
out.write_text(json.dumps(doc, indent=2) + "\n")
print(f"wrote {out}")
