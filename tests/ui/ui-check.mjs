// Opens mtlsd's admin /ui page in Debian's headless Chromium and waits, bounded, for what a
// test asks to see. Usage: node ui-check.mjs <admin base URL> <screenshot.png> <timeout ms>
// Prints one JSON line once the page is live ({"live":true}), then, once a DENY row shows,
// one with what the page shows; exits 1 with the reason on stderr otherwise.
import puppeteer from "puppeteer-core";

const [base, screenshot, timeout] = process.argv.slice(2);
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", e => errors.push(String(e)));
  page.on("console", m => { if (m.type() === "error") errors.push(m.text()); });
  await page.goto(`${base}/ui`, { waitUntil: "domcontentloaded", timeout: Number(timeout) });
  await page.waitForSelector('#state[data-live="1"]', { timeout: Number(timeout) });
  await page.waitForFunction(() => document.getElementById("identity").textContent.startsWith("identity "), { timeout: Number(timeout) });
  console.log(JSON.stringify({ live: true }));
  await page.waitForSelector('tr[data-outcome="deny"]', { timeout: Number(timeout) });
  // The chart redraws on each deny; give it the frame it is drawn in.
  await page.waitForFunction(() => document.querySelectorAll("#chart rect").length > 0, { timeout: Number(timeout) });
  const seen = await page.evaluate(() => ({
    identity: document.getElementById("identity").textContent,
    listeners: [...document.querySelectorAll("#listeners tbody tr")].map(r => r.cells[0].textContent),
    deny: [...document.querySelector('tr[data-outcome="deny"]').cells].map(c => c.textContent),
    chart: [...document.querySelectorAll("#chart text")].map(t => t.textContent),
  }));
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ ...seen, errors }));
} catch (e) {
  console.error(String(e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
