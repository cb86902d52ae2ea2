// The SMART JavaScript client (npm fhirclient, pinned in package.json) against
// fhirgate in a real headless browser: Debian's chromium driven by
// puppeteer-core (no browser download). Run by tests/api/smart_auth/clients.rs:
//
//   node tests/smart_clients/browser_launch.mjs '<config JSON>'
//
// config: {
//   "fhir_base": "http://127.0.0.1:P/fhir", "app_port": N, "client_id": "...",
//   "other_patient": "ID",   // a patient the app must not see
//   "standalone": {"username": "...", "password": "...", "scope": "..."},
//   "ehr": {"username": "...", "password": "...", "scope": "...", "launch": "ID"}
// }
//
// It serves the app (app/launch.html, app/index.html and fhirclient's browser
// bundle) on http://127.0.0.1:app_port, runs a standalone launch and an EHR
// launch, each in a fresh browser context, filling fhirgate's login, patient
// picker and consent forms like a person would, and prints one JSON object:
// what each app read (window.__result of index.html), the pages it went
// through, and every URL the browser asked for that was not on 127.0.0.1
// (the browser cannot resolve other hosts, and the test expects none).
// It decides nothing: the Rust test asserts on the values. Exit status 2 means
// the environment is incomplete (the message says what to install).

import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.FHIRGATE_TEST_CHROMIUM || "/usr/bin/chromium";
const STEP_MS = 90_000;

function fail(message) {
  console.error(message);
  process.exit(2);
}

let puppeteer;
try {
  puppeteer = (await import("puppeteer-core")).default;
} catch (e) {
  fail(`puppeteer-core is not installed: run \`PUPPETEER_SKIP_DOWNLOAD=1 npm ci --prefix tests/smart_clients\` (${e.message})`);
}
const bundle = path.join(here, "node_modules/fhirclient/build/fhir-client.js");
if (!fs.existsSync(bundle)) {
  fail("fhirclient is not installed: run `PUPPETEER_SKIP_DOWNLOAD=1 npm ci --prefix tests/smart_clients`");
}
if (!fs.existsSync(CHROMIUM)) {
  fail(`no browser at ${CHROMIUM}: run \`apt-get install -y chromium chromium-driver\``);
}

const config = JSON.parse(process.argv[2] || fail("usage: browser_launch.mjs CONFIG_JSON"));
const appOrigin = `http://127.0.0.1:${config.app_port}`;

// The app's static files. /config.json tells the pages what the driver knows.
const files = {
  "/launch.html": ["text/html", () => fs.readFileSync(path.join(here, "app/launch.html"))],
  "/index.html": ["text/html", () => fs.readFileSync(path.join(here, "app/index.html"))],
  "/fhir-client.js": ["text/javascript", () => fs.readFileSync(bundle)],
  "/config.json": ["application/json", () => JSON.stringify({
    fhir_base: config.fhir_base,
    client_id: config.client_id,
    other_patient: config.other_patient,
    standalone: { scope: config.standalone.scope },
    ehr: { scope: config.ehr.scope },
  })],
};
const server = http.createServer((req, res) => {
  const f = files[new URL(req.url, appOrigin).pathname];
  if (!f) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { "Content-Type": f[0], "Cache-Control": "no-store" }).end(f[1]());
});
await new Promise((resolve, reject) => {
  server.once("error", (e) => reject(new Error(`cannot serve the app on ${appOrigin}: ${e.message}`)));
  server.listen(config.app_port, "127.0.0.1", resolve);
});

const browser = await puppeteer.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    // Nothing but loopback resolves, whatever a page asks for.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
  ],
}).catch((e) => fail(`chromium (${CHROMIUM}) did not start: ${e.message}; install it with \`apt-get install -y chromium chromium-driver\``));

const offLoopback = [];

async function pageText(page) {
  return page.evaluate(() => document.body ? document.body.innerText : "").catch(() => "");
}

async function submit(page, selector) {
  await Promise.all([
    page.waitForNavigation({ waitUntil: "load", timeout: STEP_MS }),
    page.click(selector),
  ]);
}

// One launch in its own browser context (no cookies or storage from another).
async function runLaunch(url, who) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  const out = { pages: [], offered_scopes: [], authorize_params: null };
  page.on("request", (r) => {
    const u = new URL(r.url());
    if (!["http:", "https:"].includes(u.protocol)) return;
    if (u.hostname !== "127.0.0.1") offLoopback.push(r.url());
    if (u.pathname.endsWith("/auth/authorize") && r.method() === "GET" && !out.authorize_params) {
      // Names and the PKCE method only: no values that matter to an attacker.
      const p = u.searchParams;
      out.authorize_params = {
        names: [...p.keys()].sort(),
        code_challenge_method: p.get("code_challenge_method"),
        aud: p.get("aud"),
        scope: p.get("scope"),
      };
    }
  });
  const console_ = [];
  page.on("console", (m) => console_.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => console_.push(`pageerror: ${e.message}`));
  try {
    await page.goto(url, { waitUntil: "load", timeout: STEP_MS });
    // fhirclient reads discovery, then sends the browser to the authorize endpoint.
    await page.waitForSelector('input[name="username"], #error:not(:empty)', { timeout: STEP_MS });
    for (let step = 0; step < 6; step++) {
      if (page.url().startsWith(appOrigin + "/index.html")) break;
      if (await page.$("#error:not(:empty)")) {
        out.pages.push("launch-error");
        break;
      }
      if (await page.$('input[name="username"]')) {
        out.pages.push("login");
        await page.type('input[name="username"]', who.username);
        await page.type('input[name="password"]', who.password);
        await submit(page, 'form button[type="submit"]');
      } else if (await page.$('select[name="patient"]')) {
        out.pages.push("patient-picker");
        await page.select('select[name="patient"]', who.patient || "");
        await submit(page, 'form button[type="submit"]');
      } else if (await page.$('input[type="checkbox"][name="scope"]')) {
        out.pages.push("consent");
        out.offered_scopes = await page.$$eval('input[type="checkbox"][name="scope"]',
          (els) => els.map((e) => ({ scope: e.value, checked: e.checked })));
        await submit(page, 'button[name="decision"][value="allow"]');
      } else {
        out.pages.push("unexpected");
        break;
      }
    }
    out.final_url_path = new URL(page.url()).pathname;
    if (out.final_url_path === "/index.html") {
      await page.waitForFunction(() => window.__result !== undefined, { timeout: STEP_MS });
      out.app = await page.evaluate(() => window.__result);
    } else {
      out.app = null;
      out.page_text = (await pageText(page)).slice(0, 2000);
    }
  } catch (e) {
    out.driver_error = String(e && e.message || e);
    out.final_url_path = (() => { try { return new URL(page.url()).pathname; } catch { return null; } })();
    out.page_text = (await pageText(page)).slice(0, 2000);
  }
  if (!out.app || out.app.error || out.driver_error) out.console = console_.slice(-30);
  await context.close();
  return out;
}

const result = {};
try {
  result.standalone = await runLaunch(`${appOrigin}/launch.html?standalone=1`, config.standalone);
  const ehr = new URLSearchParams({ iss: config.fhir_base, launch: config.ehr.launch });
  result.ehr = await runLaunch(`${appOrigin}/launch.html?${ehr}`, config.ehr);
  result.browser = await browser.version();
} finally {
  await browser.close();
  server.close();
}
result.off_loopback_requests = offLoopback;
console.log(JSON.stringify(result));
