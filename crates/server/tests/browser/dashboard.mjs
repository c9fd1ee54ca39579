// Opens the admin dashboard in Debian's Chromium and waits for pool NAME to show STATUS.
//   node dashboard.mjs URL NAME SCREENSHOT
// Prints "watching" once the pool's panel shows "healthy", then waits (bounded) for
// "overloaded" and for a pool_limit_reached event in the log, and saves a screenshot.
import { chromium } from "playwright-core";

const [url, pool, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(url);
  const status = page.locator(`[data-pool="${pool}"] .status`);
  await status.filter({ hasText: "healthy" }).waitFor({ timeout: 10000 });
  console.log("watching");
  await status.filter({ hasText: "overloaded" }).waitFor({ timeout: 15000 });
  await page.locator('#log li[data-kind="pool_limit_reached"]').first().waitFor({ timeout: 15000 });
  const active = await page.locator(`[data-pool="${pool}"] [data-stat="active"]`).textContent();
  console.log(`overloaded active=${active}`);
  await page.screenshot({ path: screenshot, fullPage: true });
} finally {
  await browser.close();
}
