// Takes the README's dashboard pictures (docs/images/trace-view.png, resources.png) from a running AppHost.
// Not part of the build or the tests. Needs Node, Chromium and puppeteer-core:
//   apt-get install -y chromium && (cd /tmp/pup && npm init -y && npm install puppeteer-core@23)
//   ./run.sh, then scripts/send-run.sh, and its trace id from GET /api/deliveries/{id} (traceId), then:
//   NODE_PATH=/tmp/pup/node_modules node scripts/dashboard-screenshots.js '<login URL run.sh printed>' <trace id> \
//     docs/images/trace-view.png docs/images/resources.png
const puppeteer = require('puppeteer-core');
// The local dev-certificate banner says nothing about the relay: closed before the picture.
async function dismiss(page) {
  await page.evaluate(() => {
    const all = [...document.querySelectorAll('*')];
    const bar = all.find(e => e.shadowRoot == null && e.children.length > 0 && e.textContent.includes('No trusted development certificate') && e.tagName.toLowerCase().includes('message-bar'));
    if (bar) { bar.remove(); return; }
    const title = all.filter(e => e.textContent.trim().startsWith('No trusted development certificate')).pop();
    let n = title; for (let i = 0; n && i < 4; i++) n = n.parentElement;
    if (n) n.remove();
  });
  await new Promise(r => setTimeout(r, 500));
}
(async () => {
  const [login, traceId, out, out2] = process.argv.slice(2);
  const browser = await puppeteer.launch({ executablePath: '/usr/bin/chromium', headless: true, args: ['--no-sandbox', '--window-size=1600,1000'] });
  const page = await browser.newPage();
  await page.setViewport({ width: 1600, height: 1000 });
  await page.goto(login, { waitUntil: 'networkidle2' });
  const base = new URL(login).origin;
  await page.goto(`${base}/traces/detail/${traceId}`, { waitUntil: 'networkidle2' });
  await new Promise(r => setTimeout(r, 5000));
  await dismiss(page);
  await page.screenshot({ path: out, clip: { x: 0, y: 0, width: 1600, height: 540 } });
  if (out2) {
    await page.goto(`${base}/`, { waitUntil: 'networkidle2' });
    await new Promise(r => setTimeout(r, 5000));
    await dismiss(page);
    await page.screenshot({ path: out2, clip: { x: 0, y: 0, width: 1600, height: 420 } });
  }
  await browser.close();
})().catch(e => { console.error(e); process.exit(1); });
