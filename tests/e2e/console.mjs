// End-to-end test of the keygate web console in headless Chromium, driven by
// playwright-core. Started by tests/console.rs, which runs the gateway and
// passes its addresses in the environment. Exits non-zero on any failure.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";

const ADMIN = process.env.ADMIN_URL;
const DATA = process.env.DATA_URL;
const TOKEN = process.env.ADMIN_TOKEN;
const READ_TOKEN = process.env.READ_TOKEN;
const SHOTS = process.env.SHOT_DIR;
mkdirSync(SHOTS, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});

async function dataStatus(token) {
  const r = await fetch(`${DATA}/api/lists`, { headers: { Authorization: `Bearer ${token}` } });
  return r.status;
}

async function eventually(what, fn, ms = 3000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await fn()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for: ${what}`);
}

const step = (name) => console.log(`- ${name}`);

try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));

  step("sign in: a wrong token is refused, the right one opens the console");
  await page.goto(`${ADMIN}/console/`);
  await page.getByLabel("Admin token", { exact: true }).fill("wrong-token-wrong-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("#token-error").filter({ hasText: /token/i }).waitFor();
  await page.getByLabel("Admin token", { exact: true }).fill(TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("tab", { name: "API Keys" }).waitFor();
  await page.getByText("Signed in as admin (admin)").waitFor();
  assert.equal(await page.evaluate(() => localStorage.length), 0, "nothing in localStorage");
  assert.ok(!page.url().includes(TOKEN), "the token is not in the URL");

  step("create a key in the dialog; the secret is shown once");
  await page.getByRole("button", { name: "Create an API Key" }).click();
  const dialog = page.getByRole("dialog", { name: "Create an API Key" });
  await dialog.getByLabel("Name (required)", { exact: true }).fill("E2E integration");
  await dialog.getByLabel("Description", { exact: true }).fill("created by the browser test");
  await dialog.getByLabel("Owner", { exact: true }).fill("e2e@example.com");
  await dialog.getByLabel("API Role", { exact: true }).selectOption("read-only");
  assert.equal(await dialog.locator("#k-ips-label").isVisible(), false, "no Allowed IPs label while the toggle is off");
  await dialog.getByLabel("Restrict to allowed IPs", { exact: true }).check();
  await dialog.getByLabel("Allowed IPs (one address or CIDR per line)", { exact: true }).fill("10.0.0.0/33");
  await dialog.getByRole("button", { name: "Create" }).click();
  step("an API error appears next to the field it names");
  await page.locator("#err-allowedIps").filter({ hasText: "allowedIps" }).waitFor();
  assert.equal(await dialog.getByLabel("Allowed IPs (one address or CIDR per line)", { exact: true }).getAttribute("aria-invalid"), "true");
  await dialog.getByLabel("Allowed IPs (one address or CIDR per line)", { exact: true }).fill("127.0.0.0/8\n::1/128");
  await dialog.getByRole("button", { name: "Create" }).click();
  const secretDialog = page.getByRole("dialog", { name: "Your new API key" });
  await secretDialog.waitFor();
  assert.match(await secretDialog.textContent(), /only be shown once/);
  const secret = await secretDialog.getByLabel("API key", { exact: true }).inputValue();
  assert.match(secret, /^kg_live_[0-9A-Za-z]{40}$/);
  await secretDialog.getByRole("button", { name: "Copy" }).click();
  await secretDialog.getByRole("button", { name: "I have stored it" }).click();
  const row = page.locator("tr", { hasText: "E2E integration" });
  await row.waitFor();
  assert.ok(!(await page.content()).includes(secret), "the secret is gone from the page");
  assert.match(await row.textContent(), /127\.0\.0\.0\/8/);

  step("the key works on the data port");
  assert.equal(await dataStatus(secret), 200);

  step("search and page size");
  await page.getByLabel("Search", { exact: true }).fill("e2e@example");
  await eventually("search narrows the table", async () => (await page.locator("#keys-table tbody tr").count()) === 1);
  await page.getByLabel("Search", { exact: true }).fill("");
  await page.getByLabel("Entries per page", { exact: true }).selectOption("10");

  step("usage at a glance");
  await eventually("usage column filled", async () => /1 h/.test(await row.locator(".usage").textContent()));

  step("disable in the console, refused on the data port");
  await row.getByRole("switch", { name: "Disable E2E integration" }).click();
  await row.getByRole("switch", { name: "Enable E2E integration" }).waitFor();
  await eventually("401 on the data port", async () => (await dataStatus(secret)) === 401);
  await page.reload();
  await page.locator("tr", { hasText: "E2E integration" }).getByRole("switch", { name: "Enable E2E integration" }).waitFor();

  step("edit: change the rate limit");
  await page.locator("tr", { hasText: "E2E integration" }).getByRole("button", { name: "Edit E2E integration" }).click();
  const edit = page.getByRole("dialog", { name: "Edit E2E integration" });
  await edit.getByLabel("Rate limit (requests per minute)", { exact: true }).fill("321");
  await edit.getByRole("button", { name: "Update" }).click();
  await page.locator("tr", { hasText: "E2E integration" }).filter({ hasText: "321/min" }).waitFor();
  await page.screenshot({ path: `${SHOTS}/console-keys.png`, fullPage: true });

  step("an edit changes only the field the operator touched");
  const admin = (method, path, body) => fetch(`${ADMIN}${path}`, {
    method, headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" }, body: body && JSON.stringify(body),
  }).then((r) => r.json());
  const made = await admin("POST", "/api-keys", {
    name: "E2E planned", description: "before", owner: "ops@example.com", role: "read-only", plan: "pro", rateLimit: 250,
    permissions: ["contacts.view"], allowedIps: ["127.0.0.1/32", "10.1.0.0/16"], expirationDays: 30, metadata: { default_optin_mailing: "7" },
  });
  assert.equal(made.success, true, JSON.stringify(made));
  const before = (await admin("GET", `/api-keys/${made.data.keyId}`)).data;
  await page.reload();
  await page.locator("tr", { hasText: "E2E planned" }).getByRole("button", { name: "Edit E2E planned" }).click();
  const planned = page.getByRole("dialog", { name: "Edit E2E planned" });
  await planned.getByLabel("Description", { exact: true }).fill("after");
  await planned.getByRole("button", { name: "Update" }).click();
  await planned.waitFor({ state: "hidden" });
  const after = (await admin("GET", `/api-keys/${made.data.keyId}`)).data;
  assert.equal(after.description, "after");
  assert.deepEqual({ ...after, description: "before", version: before.version }, before, "every other field is as it was");
  assert.equal(after.version, before.version + 1);
  assert.equal(after.plan, "pro");

  step("expiry to the minute: a local time becomes the key's expiresAt");
  const target = new Date(Date.now() + 3 * 3600 * 1000);
  target.setSeconds(0, 0);
  const pad = (n) => String(n).padStart(2, "0");
  const local = `${target.getFullYear()}-${pad(target.getMonth() + 1)}-${pad(target.getDate())}T${pad(target.getHours())}:${pad(target.getMinutes())}`;
  await page.locator("tr", { hasText: "E2E planned" }).getByRole("button", { name: "Edit E2E planned" }).click();
  await planned.getByLabel("Or expires at (your local time)", { exact: true }).fill(local);
  await planned.getByRole("button", { name: "Update" }).click();
  await planned.waitFor({ state: "hidden" });
  const timed = (await admin("GET", `/api-keys/${made.data.keyId}`)).data;
  assert.equal(Date.parse(timed.expiresAt), target.getTime(), `${timed.expiresAt} for ${local}`);
  assert.equal(timed.plan, "pro");

  step("rotation offers a grace period: both secrets work during it");
  await page.locator("tr", { hasText: "E2E planned" }).getByRole("button", { name: "Rotate E2E planned" }).click();
  const rotate = page.getByRole("dialog", { name: "Rotate this key?" });
  await rotate.getByLabel("The current secret keeps working for", { exact: true }).selectOption("3600");
  await rotate.getByRole("button", { name: "Rotate" }).click();
  const fresh = page.getByRole("dialog", { name: "Your new API key" });
  await fresh.waitFor();
  const rotated = await fresh.getByLabel("API key", { exact: true }).inputValue();
  await fresh.getByRole("button", { name: "I have stored it" }).click();
  assert.equal(await dataStatus(rotated), 200, "the new secret works");
  assert.equal(await dataStatus(made.data.apiKey), 200, "the old secret works during the grace period");
  await admin("DELETE", `/api-keys/${made.data.keyId}`);
  await page.reload();

  step("usage against each quota, and a credits top-up");
  const metered = await admin("POST", "/api-keys", { name: "E2E metered", role: "read-only", quota: { perDay: 50 }, credits: { remaining: 5 } });
  assert.equal(metered.success, true, JSON.stringify(metered));
  assert.equal(await dataStatus(metered.data.apiKey), 200);
  await page.reload();
  const meteredRow = page.locator("tr", { hasText: "E2E metered" });
  await eventually("a day quota bar", async () => /day: 1 of 50/.test(await meteredRow.locator(".usage").textContent()));
  assert.equal(await meteredRow.getByRole("meter", { name: "E2E metered day quota" }).getAttribute("aria-valuenow"), "1");
  assert.match(await meteredRow.locator(".usage").textContent(), /credits: 4/);
  await meteredRow.getByRole("button", { name: "Top up E2E metered" }).click();
  const topUp = page.getByRole("dialog", { name: "Top up credits" });
  await topUp.getByLabel("Credits", { exact: true }).fill("10");
  await topUp.getByRole("button", { name: "Add" }).click();
  await eventually("credits topped up", async () => /credits: 14/.test(await meteredRow.locator(".usage").textContent()));
  await admin("DELETE", `/api-keys/${metered.data.keyId}`);
  await page.reload();

  step("an expired key does not look active; a long name does not widen the table");
  await page.locator("tr", { hasText: "E2E expired" }).locator(".switch.expired").waitFor();
  assert.match(await page.locator("tr", { hasText: "E2E expired" }).locator(".switch").textContent(), /expired/);
  const [tableWidth, room] = await page.evaluate(() => [document.querySelector("#keys-table").scrollWidth, document.querySelector(".table-wrap").clientWidth]);
  assert.ok(tableWidth <= room, `the keys table is ${tableWidth}px wide in ${room}px`);

  step("filter by status and by role");
  const rowsText = () => page.locator("#keys-table tbody tr").allTextContents();
  await page.getByLabel("Filter by status", { exact: true }).selectOption("disabled");
  await eventually("only disabled keys", async () => { const t = await rowsText(); return t.length === 1 && /E2E integration/.test(t[0]); });
  await page.getByLabel("Filter by status", { exact: true }).selectOption("expired");
  await eventually("only expired keys", async () => { const t = await rowsText(); return t.length === 1 && /E2E expired/.test(t[0]); });
  await page.getByLabel("Filter by status", { exact: true }).selectOption("");
  await page.getByLabel("Filter by role", { exact: true }).selectOption("read-only");
  await eventually("only read-only keys", async () => { const t = await rowsText(); return t.length === 1 && /E2E integration/.test(t[0]); });
  await page.getByLabel("Filter by role", { exact: true }).selectOption("");
  await eventually("every key again", async () => (await rowsText()).length === 3);

  step("the create dialog is keyboard reachable and closes with Escape");
  await page.getByRole("button", { name: "Create an API Key" }).focus();
  await page.keyboard.press("Enter");
  await page.getByRole("dialog", { name: "Create an API Key" }).waitFor();
  assert.equal(await page.evaluate(() => document.activeElement.id), "k-name");
  await page.keyboard.press("Escape");
  await page.getByRole("dialog", { name: "Create an API Key" }).waitFor({ state: "hidden" });

  step("editing only a description keeps wildcards and explicit lists as written");
  const modules = (await admin("GET", "/modules")).data;
  const everyId = modules.flatMap((m) => m.permissions.map((p) => p.id));
  for (const [id, permissions] of [["e2e-wild", ["lists.*", "contacts.view"]], ["e2e-every", everyId]]) {
    assert.equal((await admin("POST", "/api-roles", { id, name: id, description: "before", permissions })).success, true);
  }
  const wildKey = await admin("POST", "/api-keys", { name: "E2E wildcard", description: "before", role: "e2e-wild", permissions: ["lists.*"] });
  assert.equal(wildKey.success, true, JSON.stringify(wildKey));
  const roleBefore = {};
  for (const id of ["e2e-wild", "e2e-every"]) roleBefore[id] = (await admin("GET", `/api-roles/${id}`)).data;
  const keyBefore = (await admin("GET", `/api-keys/${wildKey.data.keyId}`)).data;
  await page.reload();
  await page.getByRole("tab", { name: "API Roles" }).click();
  for (const id of ["e2e-wild", "e2e-every"]) {
    await page.locator(`li.role[data-role="${id}"]`).getByRole("button", { name: `Edit role ${id}` }).click();
    const dialog = page.getByRole("dialog", { name: `Edit ${id}` });
    await dialog.getByRole("option", { name: "List Management" }).click();
    assert.equal(await dialog.getByLabel("Add New List", { exact: true }).isChecked(), true, `${id}: a wildcard shows as its boxes`);
    await dialog.getByLabel("Description", { exact: true }).fill("after");
    await dialog.getByRole("button", { name: "Save" }).click();
    await dialog.waitFor({ state: "hidden" });
    const after = (await admin("GET", `/api-roles/${id}`)).data;
    assert.deepEqual({ ...after, description: "before", version: roleBefore[id].version }, roleBefore[id], `${id}: only the description changed`);
    assert.equal(after.version, roleBefore[id].version + 1);
  }
  await page.getByRole("tab", { name: "API Keys" }).click();
  await page.locator("tr", { hasText: "E2E wildcard" }).getByRole("button", { name: "Edit E2E wildcard" }).click();
  const wildEdit = page.getByRole("dialog", { name: "Edit E2E wildcard" });
  assert.equal(await wildEdit.getByLabel("View List", { exact: true }).isChecked(), true, "the key's lists.* shows as ticked boxes");
  await wildEdit.getByLabel("Description", { exact: true }).fill("after");
  await wildEdit.getByRole("button", { name: "Update" }).click();
  await wildEdit.waitFor({ state: "hidden" });
  const keyAfter = (await admin("GET", `/api-keys/${wildKey.data.keyId}`)).data;
  assert.deepEqual({ ...keyAfter, description: "before", version: keyBefore.version }, keyBefore, "only the key's description changed");
  step("unticking one box of a wildcard names the rest, and widens nothing");
  await page.getByRole("tab", { name: "API Roles" }).click();
  await page.locator('li.role[data-role="e2e-wild"]').getByRole("button", { name: "Edit role e2e-wild" }).click();
  const wild = page.getByRole("dialog", { name: "Edit e2e-wild" });
  await wild.getByRole("option", { name: "List Management" }).click();
  await wild.getByLabel("Add New List", { exact: true }).uncheck();
  await wild.getByRole("button", { name: "Save" }).click();
  await wild.waitFor({ state: "hidden" });
  assert.deepEqual((await admin("GET", "/api-roles/e2e-wild")).data.permissions, ["contacts.view", "lists.view"]);
  step("a save made from a stale form is refused, not written over a newer change");
  await page.locator('li.role[data-role="e2e-every"]').getByRole("button", { name: "Edit role e2e-every" }).click();
  const stale = page.getByRole("dialog", { name: "Edit e2e-every" });
  assert.equal((await admin("PATCH", "/api-roles/e2e-every", { description: "meanwhile" })).success, true);
  await stale.getByLabel("Description", { exact: true }).fill("stale");
  await stale.getByRole("button", { name: "Save" }).click();
  await stale.getByText(/changed by someone else/).waitFor();
  await stale.getByRole("button", { name: "Cancel" }).click();
  assert.equal((await admin("GET", "/api-roles/e2e-every")).data.description, "meanwhile");
  await admin("DELETE", `/api-keys/${wildKey.data.keyId}`);
  for (const id of ["e2e-wild", "e2e-every"]) await admin("DELETE", `/api-roles/${id}`);
  await page.reload();
  await page.getByRole("tab", { name: "API Roles" }).click();

  step("roles: create with the two-panel editor");
  await page.getByRole("tab", { name: "API Roles" }).click();
  await page.getByRole("button", { name: "Add API Role" }).click();
  const roleDialog = page.getByRole("dialog", { name: "Add API Role" });
  await roleDialog.getByLabel("Role id", { exact: true }).fill("e2e-role");
  await roleDialog.getByLabel("Role name", { exact: true }).fill("E2E Role");
  await roleDialog.getByLabel("Description", { exact: true }).fill("lists and contact viewing");
  await roleDialog.getByRole("option", { name: "List Management" }).click();
  await roleDialog.getByLabel("Check all", { exact: true }).check();
  await roleDialog.getByRole("option", { name: "Contact Management" }).click();
  await roleDialog.getByLabel("View Contacts", { exact: true }).check();
  await roleDialog.getByRole("button", { name: "Save" }).click();
  const roleItem = page.locator("li.role", { hasText: "E2E Role" });
  await roleItem.waitFor();
  await roleItem.getByText(/Click to expand/).click();
  assert.match(await roleItem.textContent(), /Add New List/);
  assert.match(await roleItem.textContent(), /View Contacts/);
  // "Check all" ticks the module's boxes; it grants no wildcard, so a
  // permission added to the module later is not granted unasked.
  const created = (await admin("GET", "/api-roles/e2e-role")).data;
  assert.deepEqual(created.permissions, ["lists.create", "lists.view", "contacts.view"]);
  await page.locator("li.role", { hasText: "Read Only" }).or(page.locator("li.role", { hasText: "read-only" })).first().getByText(/Click to expand/).click();
  await page.screenshot({ path: `${SHOTS}/console-roles.png`, fullPage: true });

  step("a role says which keys use it");
  await page.locator('li.role[data-role="read-only"] .role-keys').filter({ hasText: /Used by 1 key: E2E integration/ }).waitFor();

  step("deleting a role in use is refused with the API's message");
  await page.locator('li.role[data-role="read-only"]').getByRole("button", { name: /Delete role/ }).click();
  await page.getByRole("dialog", { name: "Delete this role?" }).getByRole("button", { name: "Delete" }).click();
  await page.locator("#roles-error").filter({ hasText: /used by 1 key/ }).waitFor();
  await page.locator('li.role[data-role="read-only"]').waitFor();

  step("delete the new role");
  await roleItem.getByRole("button", { name: "Delete role E2E Role" }).click();
  await page.getByRole("dialog", { name: "Delete this role?" }).getByRole("button", { name: "Delete" }).click();
  await roleItem.waitFor({ state: "detached" });
  const roles = await (await fetch(`${ADMIN}/api-roles`, { headers: { Authorization: `Bearer ${TOKEN}` } })).json();
  assert.ok(!roles.data.some((r) => r.id === "e2e-role"), "the server agrees the role is gone");

  step("the audit log shows who changed what");
  await page.getByRole("tab", { name: "Audit log" }).click();
  const audit = page.locator("#audit-table tbody tr");
  await audit.first().waitFor();
  const entries = await audit.allTextContents();
  assert.ok(entries.some((t) => /key\.rotate/.test(t) && /admin-api/.test(t)), entries.join("\n"));
  assert.ok(entries.some((t) => /key\.edit/.test(t) && /description: "before" → "after"/.test(t)), entries.join("\n"));
  await page.screenshot({ path: `${SHOTS}/console-audit.png`, fullPage: true });

  step("a key's events, and a failing delivery's attempts");
  await page.getByRole("tab", { name: "API Keys" }).click();
  await page.getByRole("button", { name: "Events of E2E integration" }).click();
  const events = page.locator("#events-table tbody tr");
  await events.filter({ hasText: "key.created" }).waitFor();
  const told = await events.allTextContents();
  assert.ok(told.some((t) => /key\.disabled/.test(t) && /E2E integration/.test(t)), told.join("\n"));
  assert.ok(told.every((t) => !/kg_live_[0-9A-Za-z]{40}/.test(t)), "an event shows a secret");
  // The endpoint refuses connections: deliveries fail, their attempts say why.
  const failing = page.locator("#deliveries-table tbody tr", { hasText: "key.created" });
  await failing.getByText(/1 attempt|[2-9] attempts/).waitFor({ timeout: 15000 });
  await failing.locator("summary").click();
  await failing.locator(".attempts li").first().getByText(/no answer/).waitFor();
  await page.screenshot({ path: `${SHOTS}/console-events.png`, fullPage: true });
  await page.locator("#deliveries-status").selectOption("delivered");
  await page.locator("#deliveries-table tbody tr", { hasText: "No delivery is delivered" }).waitFor();

  step("a narrow (390 px) screen");
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 } });
  const small = await phone.newPage();
  await small.goto(`${ADMIN}/console/`);
  await small.getByLabel("Admin token", { exact: true }).fill(TOKEN);
  await small.getByRole("button", { name: "Sign in" }).click();
  await small.locator("tr", { hasText: "E2E integration" }).waitFor();
  const overflow = await small.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the page scrolls sideways by ${overflow}px at 390px`);
  await small.screenshot({ path: `${SHOTS}/console-keys-narrow.png`, fullPage: false });

  step("a read-only token sees who it is and no control it may not use");
  const readerContext = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const readerPage = await readerContext.newPage();
  await readerPage.goto(`${ADMIN}/console/`);
  await readerPage.getByLabel("Admin token", { exact: true }).fill(READ_TOKEN);
  await readerPage.getByRole("button", { name: "Sign in" }).click();
  await readerPage.getByText("Signed in as e2e-reader (read)").waitFor();
  await readerPage.locator("tr", { hasText: "E2E integration" }).waitFor();
  assert.equal(await readerPage.getByRole("button", { name: "Create an API Key" }).isVisible(), false);
  assert.equal(await readerPage.getByRole("button", { name: "Edit E2E integration" }).isVisible(), false);
  assert.equal(await readerPage.getByRole("switch", { name: "Enable E2E integration" }).isDisabled(), true);
  await readerPage.getByRole("tab", { name: "API Roles" }).click();
  await readerPage.locator('li.role[data-role="read-only"]').waitFor();
  assert.equal(await readerPage.getByRole("button", { name: "Add API Role" }).isVisible(), false);
  assert.equal(await readerPage.getByRole("button", { name: /Delete role/ }).first().isVisible(), false);
  await readerContext.close();

  step("delete the key with confirmation");
  await page.getByRole("tab", { name: "API Keys" }).click();
  await page.locator("#keys-table tr", { hasText: "E2E integration" }).getByRole("button", { name: "Delete E2E integration" }).click();
  await page.getByRole("dialog", { name: "Delete this key?" }).getByRole("button", { name: "Delete" }).click();
  await page.locator("#keys-table tr", { hasText: "E2E integration" }).waitFor({ state: "detached" });

  assert.deepEqual(errors, [], "no script errors on the page");
  console.log("console e2e: all steps passed");
} finally {
  await browser.close();
}
